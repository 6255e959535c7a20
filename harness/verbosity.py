"""Quiet output by default: what the harness prints (its progress bars, results, warnings and errors) without the
libraries' notices: Lightning's tips and device banners, transformers' weight-loading bars and info lines, lm-eval's
task notes, deprecation warnings. `slim --verbose` shows them all.

The choice is kept in `SLIM_VERBOSE` so the processes a command spawns (grid and search workers, submitit jobs) apply
the same one: they call `configure_output()` first thing.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

VERBOSE_ENV = "SLIM_VERBOSE"
QUIET_SET_ENV = "SLIM_QUIET_SET"  # the QUIET_ENVIRONMENT names quiet mode set, which verbose mode takes back
# Read by the libraries when they are first imported, so set before any of them is.
QUIET_ENVIRONMENT = {
    "TRANSFORMERS_VERBOSITY": "error",  # "Loading weights" notes, generation-config notices
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" / "Writing model shards" bars, datasets'
    "DATASETS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "LMEVAL_LOG_LEVEL": "ERROR",
}
# logger -> the lowest level shown when quiet. Lightning sets INFO on `lightning` and its two packages when they
# are imported, so their info lines are also stopped at the module loggers that emit them (levels set there stay).
QUIET_LOGGERS = {
    "lightning": logging.WARNING,
    "lightning.pytorch": logging.WARNING,
    "lightning.fabric": logging.WARNING,
    # rank_zero_info: "GPU available", the litlogger tip, "`Trainer.fit` stopped", "Restoring states from ..."
    "lightning.pytorch.utilities.rank_zero": logging.WARNING,
    "lightning.fabric.utilities.rank_zero": logging.WARNING,
    "lightning.pytorch.trainer.connectors.checkpoint_connector": logging.WARNING,  # "`weights_only` was not set"
    "lightning.pytorch.trainer.connectors.signal_connector": logging.WARNING,
    "lightning.pytorch.accelerators.cuda": logging.WARNING,  # "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]"
    "lightning.pytorch.callbacks.model_summary": logging.WARNING,
    "lm_eval": logging.ERROR,  # per-task metadata notes, "Overwriting default num_fewshot", model-kwarg notes
    "lm-eval": logging.ERROR,
    "transformers": logging.ERROR,
    "datasets": logging.ERROR,
}
QUIET_WARNING_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
# Library warnings about choices the harness makes on purpose (message prefixes, regular expressions).
QUIET_WARNING_MESSAGES = (
    r"The number of training batches \(\d+\) is smaller than the logging interval",  # log_every is the harness's
    r".*does not have many workers which may be a bottleneck",  # data.num_workers=0 is the default on purpose
    r"The '(train|val)_dataloader' does not have many workers",
    r"Triton is not supported on current platform",  # fla on a CPU-only machine: CPU tensors take the torch path
)


def redirect_output(path: Path) -> None:
    """Send this process's stdout and stderr (file descriptors 1 and 2: C libraries and tqdm too) to `path`, appended:
    a worker process's progress bars then never interleave with another's on the terminal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)


def note(message: str) -> None:
    """A harness notice about what a run does (shown quiet or verbose, on stderr), once: by rank 0 of a launch."""
    from slim.harness.distributed import rank

    if rank() == 0:
        print(message, file=sys.stderr)


def verbose_requested() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def configure_output(verbose: bool | None = None) -> None:
    """Apply quiet (default) or verbose output to this process; `verbose=None` keeps the choice of the process that
    spawned this one (`SLIM_VERBOSE`)."""
    verbose = verbose_requested() if verbose is None else verbose
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    warnings.filterwarnings("ignore", message=QUIET_WARNING_MESSAGES[-1])  # noise even when verbose
    if verbose:
        for name in filter(None, os.environ.pop(QUIET_SET_ENV, "").split(",")):
            os.environ.pop(name, None)
        return
    quieted = [name for name in QUIET_ENVIRONMENT if name not in os.environ]
    os.environ.update({name: QUIET_ENVIRONMENT[name] for name in quieted})
    if quieted:
        os.environ[QUIET_SET_ENV] = ",".join(sorted({*os.environ.get(QUIET_SET_ENV, "").split(","), *quieted} - {""}))
    _quiet_loggers()
    for category in QUIET_WARNING_CATEGORIES:
        warnings.filterwarnings("ignore", category=category)
    for message in QUIET_WARNING_MESSAGES:
        warnings.filterwarnings("ignore", message=message)


def _quiet_loggers() -> None:
    """Library info lines dropped whether the library is imported yet or not (a spawned worker unpickles its job,
    importing them, before this runs): logger levels, and transformers' own switches once it is imported (before,
    the environment above does it)."""
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()

"""The W&B logger every training run gets: offline by default (no network, `wandb sync`-able later),
the resolved config attached, grouped and named from `tracking`, nothing at all when tracking is off.

Two perplexities, two names: `val/ppl` (history) is exp(val/loss) over the first `train.val_batches` validation
batches at each validation during training, a cheap running signal; `val_perplexity` (run summary, written by
`finish_runs` after the fit) is the whole validation split once training ends, the number in the command's summary
JSON and in every table. On the tiny demo they differ (34.7 vs 45.90 for one Table 1 cell): the first 4 batches
are not the whole split.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf

from slim.harness.config.schema import SlimConfig, TrackingConfig
from slim.harness.errors import UserError

MODES = ("offline", "online", "disabled")


def validate_tracking_config(cfg: TrackingConfig) -> None:
    if cfg.mode not in MODES:
        raise UserError(f"tracking.mode: unknown {cfg.mode!r}; valid: {', '.join(MODES)}")


def tracking_enabled(cfg: TrackingConfig) -> bool:
    return cfg.wandb and cfg.mode != "disabled"


class RunLogger(WandbLogger):
    """Lightning's WandbLogger whose W&B run ends with the command's final metrics: a failed fit finishes it at once,
    after a successful one `finish_runs` adds the final metrics to the run summary and finishes it. A run still open
    when the next one starts in the same process (its command failed after the fit) is finished first, so a later fit
    (a progressive stage, a search trial, the next grid cell) never logs into it."""

    open_runs: list[RunLogger] = []

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if status != "success":
            self.finish(exit_code=1)

    def finish(self, final: Mapping[str, float] | None = None, exit_code: int = 0) -> None:
        """Write `final` into the run summary and end the run (once; other ranks than 0 hold no run)."""
        if self not in RunLogger.open_runs:
            return
        RunLogger.open_runs.remove(self)
        if self._experiment is not None:
            if final:
                self._experiment.summary.update(dict(final))
            self._experiment.finish(exit_code=exit_code)


def finish_runs(loggers: Sequence[Logger], final: Mapping[str, float]) -> None:
    """After a successful fit and its final evaluation: `final` (e.g. val_perplexity over the whole validation split)
    into each W&B run's summary, under the summary JSON's names, and the runs ended."""
    for logger in loggers:
        if isinstance(logger, RunLogger):
            logger.finish(final)


def wandb_loggers(cfg: SlimConfig) -> list[Logger]:
    """[RunLogger] writing `<tracking.dir or run_dir>/wandb/<mode>-run-*`, or [] when tracking is off."""
    tracking = cfg.tracking
    validate_tracking_config(tracking)
    if not tracking_enabled(tracking):
        return []
    import wandb

    for stale in list(RunLogger.open_runs):
        stale.finish(exit_code=1)

    os.environ.setdefault("WANDB_SILENT", "true")
    save_dir = Path(tracking.dir or cfg.run_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    logger = RunLogger(
        save_dir=str(save_dir),
        project=tracking.project,
        group=tracking.group or None,
        name=tracking.name or Path(cfg.run_dir).name,
        mode=tracking.mode,
        config=OmegaConf.to_container(OmegaConf.structured(cfg)),
        # no console capture, system sampling, git or code snapshot: a fast start and clean output
        settings=wandb.Settings(console="off", x_disable_stats=True, disable_git=True, save_code=False, silent=True),
    )
    logger._wandb_init.pop("anonymous")  # Lightning always passes it; wandb >= 0.2x warns it has no effect
    RunLogger.open_runs.append(logger)
    return [logger]

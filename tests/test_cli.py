"""The `slim` command line: help on every subcommand, one-line errors, no tracebacks."""

import json
import os
import subprocess
import sys

import pytest

from slim.harness.cli.main import SUBCOMMANDS, TAKES_NO_CONFIG

pytestmark = pytest.mark.e2e


def run_slim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slim.harness.cli.main", *args], capture_output=True, text=True,
                          timeout=120)


def test_top_level_help_lists_every_subcommand():
    """`slim --help` lists exactly the registered subcommands."""
    result = run_slim("--help")
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_subcommand_has_help(name: str):
    """Each subcommand answers --help with its description."""
    result = run_slim(name, "--help")
    assert result.returncode == 0
    assert ("KEY=VALUE" in result.stdout) == (name not in TAKES_NO_CONFIG)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["config", "train.max_step=3"], "unknown config key 'train.max_step'"),
        (["config", "model=nope"], "unknown preset 'nope'"),
        (["pretrain", "data.path=/nonexistent.txt", "run_dir=/tmp/slim-cli-test"], "data.path"),
        (["config", "--config", "/nonexistent.yaml"], "file not found"),
        (["adapt", "zeds", "run_dir=/tmp/slim-cli-test"], "unknown MoE adaptation 'zeds' (did you mean 'zeda'?)"),
        (["pretrain", "model=tiny", "train.max_steps=20", "run_dir=/tmp/slim-cli-test"],
         "train.warmup_steps (30) must be < train.max_steps (20); a short run needs a shorter warmup too, e.g. "
         "train.warmup_steps=2"),
    ],
)
def test_bad_input_is_one_line_without_traceback(args: list[str], needle: str):
    """Bad input exits 2 with a single stderr line naming the problem."""
    result = run_slim(*args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_config_prints_resolved_yaml():
    """`slim config` shows overrides applied."""
    result = run_slim("config", "model=tiny", "train.max_steps=123")
    assert result.returncode == 0 and "max_steps: 123" in result.stdout


# In a fresh process (other tests register kinds of their own into this one's registries): every registry loaded,
# family -> [(key, one-line doc)].
LOADED_REGISTRIES = """
import json
from slim.harness.plugins import load_plugins
from slim.harness.registry import all_registries
load_plugins()
print(json.dumps({family: registry.describe() for family, registry in all_registries().items()}))
"""


def loaded_registries() -> dict[str, list[list[str]]]:
    done = subprocess.run([sys.executable, "-c", LOADED_REGISTRIES], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_methods_lists_every_entry_point_and_the_registries_hold_exactly_those():
    """`slim methods` lists each family's keys from the installed entry points (metadata, no import); loaded, each
    registry holds exactly those names (here every optional dependency, triton included, is installed)."""
    from slim.harness.plugins import GROUPS, entries

    result = run_slim("methods")
    assert result.returncode == 0, result.stderr
    registries = loaded_registries()
    for group, family in GROUPS.items():
        names = [entry.name for entry in entries(group)]
        assert names and f"{family} [{group}]: {', '.join(names)}" in result.stdout
        assert [name for name, _ in registries[family]] == sorted(names)


def test_methods_imports_no_torch():
    """`slim methods` lists names and docs without importing torch, transformers or Lightning (it took ~20 s in a
    fresh clone when it imported every entry's module)."""
    code = ("import sys; from slim.harness.cli.main import main; main(['methods']); "
            "print(sorted(name for name in ('torch', 'transformers', 'lightning') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "[]", result.stderr


def test_methods_docs_lists_every_entry_with_its_doc_line():
    """`slim methods --docs` prints every entry of every family with its one-line doc."""
    from slim.harness.plugins import GROUPS

    result = run_slim("methods", "--docs")
    assert result.returncode == 0
    registries = loaded_registries()
    for family in GROUPS.values():
        assert f"{family} [" in result.stdout and registries[family]
        for name, doc in registries[family]:
            assert f"  {name}" in result.stdout and doc in result.stdout


LIBRARY_NOTICES = """
import sys, warnings
from slim.harness.verbosity import configure_output
configure_output(sys.argv[1] == "verbose")
from lightning.pytorch.utilities import rank_zero_info
from transformers.utils import logging as transformers_logging
rank_zero_info("lightning-info-line")  # how Lightning prints its litlogger tip and device banner
warnings.warn("deprecated-thing", FutureWarning)
transformers_logging.get_logger("transformers.modeling_utils").warning("transformers-warning-line")
print("harness-line")
"""


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_library_notices_only_with_verbose(mode: str):
    """Quiet by default: Lightning's info lines, deprecation warnings and transformers' warnings are hidden, the
    harness's own output is not; `--verbose` (configure_output(True)) shows them."""
    result = subprocess.run([sys.executable, "-c", LIBRARY_NOTICES, mode], capture_output=True, text=True,
                            timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "harness-line" in output, output
    notices = ("lightning-info-line", "deprecated-thing", "transformers-warning-line")
    assert [notice in output for notice in notices] == [mode == "verbose"] * 3, output


def test_verbose_flag_before_or_after_the_subcommand():
    """`slim --verbose COMMAND` and `slim COMMAND --verbose` both turn verbose output on."""
    from slim.harness.cli.main import build_parser

    parser = build_parser()
    assert parser.parse_args(["--verbose", "config"]).verbose and parser.parse_args(["config", "--verbose"]).verbose
    assert not parser.parse_args(["config"]).verbose


def test_verbose_takes_back_the_quiet_environment_a_parent_set(monkeypatch: pytest.MonkeyPatch):
    """A verbose command started from a quiet one (e.g. a test process that ran `main`) gets the libraries' own
    settings back; a variable the user set stays."""
    from slim.harness.verbosity import configure_output

    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")
    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "SLIM_QUIET_SET", "SLIM_VERBOSE"):
        monkeypatch.delenv(name, raising=False)
    configure_output(False)
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and os.environ["TRANSFORMERS_VERBOSITY"] == "info"
    configure_output(True)
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ and os.environ["TRANSFORMERS_VERBOSITY"] == "info"

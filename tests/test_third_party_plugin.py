"""A method from a package of its own (tests/plugin_example: the criterion `sharp` with option
compress.experts.sharpness) works wherever a built-in one does: `slim methods` lists it, `slim compress` uses it,
a `--workers 2` grid and a 2-worker `slim search` use it in their spawned processes and record its option, and a
typo in its name or its option is one line at load.

The package is made visible as pip would leave it, without a network: its module and a `.dist-info` holding the
entry points of its pyproject.toml, in a folder every command gets on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from slim.harness.grid import ResultsStore
from tests.fixtures.compress_teacher import TRIAL

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parent / "plugin_example"
PACKAGE = "slim_sharp_example"


def install_metadata(site: Path) -> Path:
    """`site` holding the example's module and `<name>-<version>.dist-info` (METADATA, entry_points.txt) written
    from its pyproject.toml, as an install would."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    shutil.copytree(EXAMPLE / PACKAGE, site / PACKAGE)
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in items.items()) + "\n"
        for group, items in project["entry-points"].items()))
    return site


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a shell in which the example plug-in is installed."""
    site = install_metadata(tmp_path_factory.mktemp("site"))
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def slim(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slim.harness.cli.main", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=900)


def compress_args(teacher, out: Path, *overrides: str) -> list[str]:
    teacher_dir, stats, base = teacher
    return [*base, f"compress.teacher={teacher_dir}", f"compress.stats={stats}", f"compress.output={out}",
            "compress.experts.num_experts=4", *overrides]


def test_methods_lists_the_plugin_with_its_doc(plugin_env):
    listed = slim(plugin_env, "methods")
    assert listed.returncode == 0, listed.stderr
    assert "expert criterion [slim.expert_criteria]: ean, freq, reap, sharp, soft, weight_norm" in listed.stdout
    documented = slim(plugin_env, "methods", "--docs")
    assert "  sharp        REAP score to the power compress.experts.sharpness" in documented.stdout


def test_compress_uses_the_plugin_criterion_and_its_option(plugin_env, teacher, tmp_path):
    """The student's report carries the plug-in's scores: REAP's, squared at sharpness 2."""
    reap = slim(plugin_env, "compress", *compress_args(teacher, tmp_path / "reap", "compress.experts.criterion=reap"))
    sharp = slim(plugin_env, "compress", *compress_args(teacher, tmp_path / "sharp", "compress.experts.criterion=sharp",
                                                       "compress.experts.sharpness=2"))
    assert reap.returncode == sharp.returncode == 0, reap.stderr[-2000:] + sharp.stderr[-2000:]
    reports = [json.loads((tmp_path / name / "compression_report.json").read_text()) for name in ("reap", "sharp")]
    assert reports[1]["recipe"]["experts"]["sharpness"] == 2.0
    for layer, experts in reports[0]["experts"].items():
        assert reports[1]["experts"][layer]["scores"] == pytest.approx([s * s for s in experts["scores"]], rel=1e-6)


@pytest.mark.parametrize(("override", "message"), [
    ("compress.experts.criterion=sharpp", "compress.experts.criterion: unknown expert criterion 'sharpp' (did you "
                                          "mean 'sharp'?)"),
    ("compress.experts.sharpnes=2", "unknown config key 'compress.experts.sharpnes' (did you mean 'sharpness'?)"),
    ("compress.experts.sharpness=0", "compress.experts.sharpness: must be > 0, got 0.0"),
])
def test_a_typo_in_the_plugin_name_or_option_is_one_line(plugin_env, override, message, tmp_path):
    done = slim(plugin_env, "config", override)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.slow
def test_grid_workers_use_the_plugin_and_record_its_option(plugin_env, teacher, tmp_path):
    """Two spawned grid workers compress with `sharp` at two sharpness values; each row stores the option."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "sharp", "kind": "compress", "output_dir": str(tmp_path / "grid"),
                                    "base": {"compress.experts.criterion": "sharp"},
                                    "axes": {"compress.experts.sharpness": [1.0, 2.0]}, "metrics": ["params_total"]}))
    teacher_dir, stats, base = teacher
    done = slim(plugin_env, "grid", str(spec), *base, f"compress.teacher={teacher_dir}", f"compress.stats={stats}",
                "compress.experts.num_experts=4", "--workers", "2")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    with ResultsStore(tmp_path / "grid" / "results.sqlite") as store:
        rows = store.rows()
    assert [row["status"] for row in rows] == ["done", "done"]
    assert sorted(row["config"]["compress"]["experts"]["sharpness"] for row in rows) == [1.0, 2.0]
    assert {row["config"]["compress"]["experts"]["criterion"] for row in rows} == {"sharp"}


@pytest.mark.slow
def test_search_workers_use_the_plugin_and_record_its_option(plugin_env, teacher, tmp_path):
    """Two spawned search workers run a trial each with `sharp`, the sharpness sampled from the space."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "sharp", "output_dir": str(tmp_path / "search"), "n_trials": 2, "pruner": {"kind": "none"},
        "space": {"compress.experts.sharpness": {"type": "categorical", "choices": [1.0, 2.0]}},
        "enqueue": [{"compress.experts.sharpness": 1.0}, {"compress.experts.sharpness": 2.0}]}))
    teacher_dir, _, base = teacher
    done = slim(plugin_env, "search", str(spec), *base, *TRIAL, f"compress.teacher={teacher_dir}",
                "compress.experts.criterion=sharp", "--workers", "2")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    study = optuna.load_study(study_name="sharp", storage=JournalStorage(JournalFileBackend(
        str(tmp_path / "search" / "study.journal"))))
    assert sorted(trial.params["compress.experts.sharpness"] for trial in study.trials) == [1.0, 2.0]
    assert all(trial.state == optuna.trial.TrialState.COMPLETE for trial in study.trials)
    reports = sorted((tmp_path / "search" / "trials").glob("*/student/compression_report.json"))
    assert sorted(json.loads(path.read_text())["recipe"]["experts"]["sharpness"] for path in reports) == [1.0, 2.0]

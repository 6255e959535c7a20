"""Grid cells on one teacher share one calibration pass (slim.harness.grid.calibration)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import slim.harness.calibration.run
import slim.harness.compression.compress
from slim.harness.grid import prepare_grid, run_grid
from slim.harness.grid.calibration import CALIBRATION_DIR

pytestmark = pytest.mark.e2e

COMPRESS = ["compress.depth.num_drop=0", "compress.width.hidden_size=0", "compress.experts.num_experts=4",
            "train.batch_size=4", "train.val_batches=1"]


@pytest.fixture
def passes(monkeypatch) -> list[str]:
    """The calibration passes run in this process, by teacher directory: the shared one (calibrate_teacher) and
    any a cell would run itself inside compress."""
    seen: list[str] = []
    original = slim.harness.calibration.run.run_calibration

    def counting(model, data_cfg, calib_cfg, model_dir=None):
        seen.append(str(model_dir))
        return original(model, data_cfg, calib_cfg, model_dir)

    monkeypatch.setattr(slim.harness.calibration.run, "run_calibration", counting)
    monkeypatch.setattr(slim.harness.compression.statistics, "run_calibration", counting)
    return seen


def _grid(tmp_path: Path, teacher_dir: Path, base: list[str], axis: str):
    spec = tmp_path / "share.yaml"
    spec.write_text(f"name: share\nkind: compress\noutput_dir: {tmp_path / 'grid'}\nmetrics: [val_perplexity]\n"
                    f"axes:\n  {axis}\n")
    return prepare_grid(spec, overrides=[*base, *COMPRESS, f"compress.teacher={teacher_dir}"])


def test_cells_on_one_teacher_calibrate_once(teacher, tmp_path, passes):
    """3 cells of one teacher and calibration config: 1 pass, whose stats every cell's compression used; a cell with
    another calibration config gets its own pass and stats file."""
    teacher_dir, _, base = teacher
    rows = run_grid(_grid(tmp_path, teacher_dir, base, "compress.experts.criterion: [freq, soft, reap]"))
    assert [row["status"] for row in rows] == ["done"] * 3, [row["error"] for row in rows]
    assert passes == [str(teacher_dir)]
    stats = sorted((tmp_path / "grid" / CALIBRATION_DIR).glob("*.safetensors"))
    assert len(stats) == 1
    reports = [json.loads(Path(row["artifacts"]["student"], "compression_report.json").read_text()) for row in rows]
    assert {report["recipe"]["stats"] for report in reports} == {str(stats[0])}

    rows = run_grid(_grid(tmp_path, teacher_dir, base, "calibration.num_samples: [8]"))
    assert rows[0]["status"] == "done", rows[0]["error"]
    assert passes == [str(teacher_dir)] * 2
    assert len(list((tmp_path / "grid" / CALIBRATION_DIR).glob("*.safetensors"))) == 2

"""W&B tracking: every training run leaves an offline run holding its config and metrics; one flag turns it off."""

from __future__ import annotations

import csv
import json
import math
import struct
from pathlib import Path

import pytest
from wandb.proto import wandb_internal_pb2

from slim.harness.errors import UserError
from slim.harness.pipeline import run_recipe
from slim.harness.training.pretrain import pretrain
from tests.fixtures.compress_teacher import run_config

pytestmark = pytest.mark.e2e

# Log every step, tracking on (the shared test overrides may turn it off for other tests), and only a few
# validation chapters, so each run's final perplexities take seconds.
LOGGED = ["train.log_every=1", "tracking.wandb=true", "data.heldout_every=400"]
SHORT = ["train.max_steps=4", "train.batch_size=4", "train.warmup_steps=1", "train.val_every=2",
         "train.val_batches=1", *LOGGED]
BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of records with 7-byte headers


def wandb_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """Every record of an offline `.wandb` file (wandb >= 0.2x ships no Python reader for it)."""
    raw, pos, chunk, records = path.read_bytes(), 7, b"", []  # 7 = file header ":W&B" + magic + version
    while pos + 7 <= len(raw):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a record header is zero padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        chunk, pos = chunk + raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST fragment: the record is complete
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def offline_run(run_dir: Path) -> tuple[dict, dict, list[dict]]:
    """The single offline run under `<run_dir>/wandb`: its run record (name, group), config and history rows."""
    [run_file] = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    return {"name": run.display_name, "group": run.run_group, "project": run.project}, config, history


def offline_summary(run_dir: Path) -> dict:
    """The run summary of the single offline run under `<run_dir>/wandb` (its last value per key)."""
    [run_file] = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    return {item.key: json.loads(item.value_json) for record in wandb_records(run_file)
            if record.WhichOneof("record_type") == "summary" for item in record.summary.update}


def test_pretrain_run_logs_config_and_the_csv_metrics_to_an_offline_run(tiny_config):
    """The offline run carries the resolved config and, step for step, the values the CSV logger wrote."""
    cfg = tiny_config(*SHORT, "tracking.group=table1", "tracking.name=cell-abc")
    pretrain(cfg)
    run, config, history = offline_run(Path(cfg.run_dir))
    assert run == {"name": "cell-abc", "group": "table1", "project": "slimqwen"}
    assert config["train"]["max_steps"] == 4 and config["tracking"]["mode"] == "offline"
    [metrics_csv] = (Path(cfg.run_dir) / "metrics").glob("version_*/metrics.csv")
    rows = list(csv.DictReader(metrics_csv.open()))
    for key in ("val/loss", "train/loss", "train/lr"):
        csv_values = [float(row[key]) for row in rows if row[key]]
        logged = [row[key] for row in history if key in row]
        assert len(csv_values) >= 2 and logged == pytest.approx(csv_values), key


def test_distill_run_logs_schedules_throughput_and_validation(teacher, tmp_path):
    """`slim run`'s distillation logs λ, β, LR, tokens/s and the validation KD next to the losses."""
    # The fixture's stats were calibrated on data.heldout_every=20: calibrate on this config's split instead.
    cfg = run_config(teacher, tmp_path, *LOGGED, 'compress.stats=""')
    summary = run_recipe(cfg)["distill"]
    _, _, history = offline_run(Path(cfg.run_dir))
    # the whole-split perplexity of the summary JSON (and the tables) under its own name, beside val/ppl's subset
    final = offline_summary(Path(cfg.run_dir))
    assert final["val_perplexity"] == pytest.approx(summary["val_perplexity"])
    assert final["teacher_val_perplexity"] == pytest.approx(summary["teacher_val_perplexity"])
    for key in ("train/loss", "train/kd", "train/lambda", "train/beta", "train/lr", "train/tokens_per_sec",
                "val/loss", "val/kd"):
        values = [row[key] for row in history if key in row]
        assert values and all(math.isfinite(value) for value in values), key
    lambdas = [row["train/lambda"] for row in history if "train/lambda" in row]
    assert lambdas[0] == pytest.approx(1.0) and lambdas[-1] < lambdas[0]  # the linear λ schedule, step by step


def test_one_flag_turns_tracking_off(tiny_config):
    """tracking.wandb=false trains as usual and writes no wandb directory."""
    cfg = tiny_config(*SHORT, "train.max_steps=2", "tracking.wandb=false")
    pretrain(cfg)
    assert (Path(cfg.run_dir) / "pretrain_summary.json").is_file()
    assert not (Path(cfg.run_dir) / "wandb").exists()


def test_unknown_mode_is_refused_before_work(tiny_config):
    """A bad tracking.mode fails in one line naming the field and the valid modes, before the run dir exists."""
    cfg = tiny_config("tracking.mode=cloud")
    with pytest.raises(UserError, match=r"tracking.mode: unknown 'cloud'; valid: offline, online, disabled"):
        pretrain(cfg)
    assert not Path(cfg.run_dir).exists()

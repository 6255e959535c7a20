"""Issue 11: nothing lost, nothing silently wrong. Outputs never replace what the harness did not write, bad
output locations and stale runs/stats are refused in one line before any work, summaries count honestly."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from slim.harness.atomic import write_text_atomic
from slim.harness.calibration.fingerprint import model_fingerprint
from slim.harness.calibration.io import load_stats, save_stats
from slim.harness.calibration.run import calibrate_teacher
from slim.harness.compression.compress import compress
from slim.harness.config.load import load_config, to_yaml
from slim.harness.errors import UserError
from slim.harness.evaluation.evaluate import evaluate
from slim.harness.grid.report import write_grid_report
from slim.harness.models.build import build_model
from slim.harness.models.io import load_pretrained, save_pretrained
from slim.harness.outputs import MARKER
from slim.harness.pipeline import run_recipe
from slim.harness.training.distill import distill
from slim.harness.training.pretrain import pretrain
from slim.harness.training.run import check_run_dir
from slim.methods.zeda.stages import run_zeda
from tests.conftest import TINY_OVERRIDES

TEACHER = "assets/tiny-teacher"  # the shipped 4096-token teacher
TINY_MODEL = ["model.hidden_size=64", "model.num_hidden_layers=2", "model.full_attention_interval=2",
              "model.num_experts=8", "model.num_experts_per_tok=2", "model.moe_intermediate_size=32",
              "model.shared_expert_intermediate_size=64"]
SHORT = ["train.batch_size=4", "train.warmup_steps=1", "train.val_every=2", "train.val_batches=1"]


def _no_work(*args: object, **kwargs: object) -> None:
    raise AssertionError("work started before the bad input was refused")


def _foreign_dir(path: Path) -> Path:
    """A directory of someone else's files."""
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("mine")
    return path


def _tiny_model(tiny_config):
    return build_model(tiny_config(*TINY_MODEL).model, seed=0)


def _distill_config(tmp_path: Path, *overrides: str):
    """slim distill of the shipped teacher into itself: valid up to the first piece of work."""
    return load_config(["tracking.wandb=false", f"distill.teacher={TEACHER}", f"distill.student={TEACHER}",
                        f"distill.output={tmp_path / 'distilled'}", f"run_dir={tmp_path / 'run'}", *overrides])


def _run_config(tmp_path: Path, *overrides: str):
    """slim run on the shipped teacher: valid up to the first piece of work."""
    return load_config(["tracking.wandb=false", "compress.experts.num_experts=8", f"compress.teacher={TEACHER}",
                        f"compress.output={tmp_path / 'student'}", f"distill.output={tmp_path / 'distilled'}",
                        f"run_dir={tmp_path / 'run'}", *overrides])


# 1. Data loss

def test_compress_refuses_a_directory_it_did_not_write_before_any_work(tmp_path, monkeypatch):
    """compress.output holding other files is refused in one line before the teacher is loaded; they stay."""
    monkeypatch.setattr("slim.harness.compression.compress.compress_statistics", _no_work)
    output = _foreign_dir(tmp_path / "student")
    cfg = load_config([f"compress.teacher={TEACHER}", f"compress.output={output}"])
    with pytest.raises(UserError, match=rf"^compress.output: {output} holds files the harness did not write"):
        compress(cfg)
    assert (output / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("entry", ["distill", "run", "zeda"])
def test_every_model_output_refuses_foreign_files_before_any_work(entry, tmp_path, monkeypatch):
    """distill.output, slim run's outputs and zeda.output go through the same refusal, before any model is
    trained, compressed or injected."""
    for target in ("slim.harness.training.distill.CorpusDataModule", "slim.harness.pipeline.compress",
                   "slim.methods.zeda.stages.write_injected"):
        monkeypatch.setattr(target, _no_work)
    output = _foreign_dir(tmp_path / "out")
    if entry == "distill":
        call, field = lambda: distill(_distill_config(tmp_path, f"distill.output={output}")), "distill.output"
    elif entry == "run":
        call, field = lambda: run_recipe(_run_config(tmp_path, f"distill.output={output}")), "distill.output"
    else:
        cfg = load_config(["tracking.wandb=false", f"zeda.teacher={TEACHER}", f"zeda.output={output}",
                           f"run_dir={tmp_path / 'run'}"])
        call, field = lambda: run_zeda(cfg), "zeda.output"
    with pytest.raises(UserError, match=rf"^{field}: {output} holds files the harness did not write"):
        call()
    assert [path.name for path in output.iterdir()] == ["notes.txt"]


def test_harness_written_and_empty_outputs_are_replaced(tiny_config, tmp_path):
    """A directory the harness wrote (marked) is replaced by the next save, an empty one is filled."""
    model = _tiny_model(tiny_config)
    first = save_pretrained(model, tmp_path / "model")
    assert (first / MARKER).is_file()
    (first / "stale.txt").write_text("from the previous save")
    save_pretrained(model, first)
    assert not (first / "stale.txt").exists() and (first / "config.json").is_file()
    (tmp_path / "empty").mkdir()
    save_pretrained(model, tmp_path / "empty")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty", "model"]


def test_a_full_disk_mid_save_leaves_no_temporary_and_keeps_the_old_output(tiny_config, tmp_path, monkeypatch):
    """ENOSPC while writing: one-line error, no `<name>.tmp-<pid>` left behind, the previous output intact."""
    model = _tiny_model(tiny_config)
    out = save_pretrained(model, tmp_path / "student")
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    def full_disk(directory: Path, **kwargs: object) -> None:
        Path(directory).mkdir()
        (Path(directory) / "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(model, "save_pretrained", full_disk)
    with pytest.raises(UserError, match=rf"^output directory {out}: cannot write the model \(No space left"):
        save_pretrained(model, out)
    assert [path.name for path in tmp_path.iterdir()] == ["student"]
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_no_room_for_the_student_is_refused_before_compressing(tmp_path, monkeypatch):
    """A filesystem with less free space than the teacher's weights is refused before the teacher is loaded."""
    monkeypatch.setattr("slim.harness.compression.compress.compress_statistics", _no_work)
    monkeypatch.setattr("slim.harness.outputs.shutil.disk_usage", lambda path: SimpleNamespace(free=1024))
    cfg = load_config([f"compress.teacher={TEACHER}", f"compress.output={tmp_path / 'student'}"])
    with pytest.raises(UserError, match=r"^compress.output: .* has 0 MiB free, the output needs about 15 MiB"):
        compress(cfg)


# 2. Silent wrong statistics

def test_calibrate_refuses_a_tokenizer_of_another_vocabulary(tmp_path, monkeypatch):
    """A tokenizer still to be trained at data.vocab_size=1024, for the 4096-token teacher, is refused before loading
    it (and before training it)."""
    monkeypatch.setattr("slim.harness.calibration.run.load_pretrained", _no_work)
    cfg = load_config([*TINY_OVERRIDES, f"compress.teacher={TEACHER}", f"data.tokenizer={tmp_path / 'tok'}",
                       f"calibration.output={tmp_path / 'stats.safetensors'}"])
    with pytest.raises(UserError, match=rf"^data.vocab_size: 1024, but the model at {TEACHER} has vocab_size 4096"):
        calibrate_teacher(cfg)


def test_calibrate_refuses_a_same_size_tokenizer_that_is_not_the_teachers(teacher, tmp_path):
    """Same vocab_size, other vocabulary: refused before the calibration pass, no stats written."""
    teacher_dir, _, base = teacher
    other = Path(shutil.copytree(teacher_dir, tmp_path / "teacher"))
    tokenizer_file = other / "tokenizer.json"
    tokenizer = json.loads(tokenizer_file.read_text())
    vocab = tokenizer["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[300:302]
    vocab[first], vocab[second] = vocab[second], vocab[first]  # same tokens, two ids swapped
    tokenizer_file.write_text(json.dumps(tokenizer))
    cfg = load_config([*base, f"compress.teacher={other}", f"calibration.output={tmp_path / 'stats.safetensors'}"])
    with pytest.raises(UserError, match=r"^data.tokenizer: the tokenizer at .* differs from the model's"):
        calibrate_teacher(cfg)
    assert not (tmp_path / "stats.safetensors").exists()


@pytest.mark.parametrize("change", ["calibration.num_samples=8", "data.seq_len=32", "tokenizer"])
def test_compress_refuses_stats_calibrated_on_other_data_or_tokenizer(change, teacher, tmp_path,
                                                                      monkeypatch):
    """Stats record their tokenizer and data; a recipe whose own calibration would read something else refuses
    them in one line before the teacher is loaded."""
    teacher_dir, stats_path, base = teacher
    overrides = [change] if change != "tokenizer" else []
    if change == "tokenizer":
        stats = dataclasses.replace(load_stats(stats_path), tokenizer_fingerprint="0" * 64)
        stats_path = save_stats(stats, tmp_path / "other-tokenizer.safetensors")
    monkeypatch.setattr("slim.harness.compression.compress.compress_statistics", _no_work)
    cfg = load_config([*base, f"compress.teacher={teacher_dir}", f"compress.stats={stats_path}",
                       f"compress.output={tmp_path / 'student'}", *overrides])
    reason = "another tokenizer" if change == "tokenizer" else "other data than this config"
    with pytest.raises(UserError, match=rf"^compress.stats: {stats_path} was calibrated (on|with) {reason}"):
        compress(cfg)


def test_fingerprint_changes_with_any_single_weight(tiny_config, tmp_path):
    """Every byte counts (the old 64-value sample missed this one), and a saved-and-reloaded model matches."""
    model = _tiny_model(tiny_config)
    reloaded, _ = load_pretrained(save_pretrained(model, tmp_path / "model"))
    assert model_fingerprint(reloaded) == model_fingerprint(model)
    with torch.no_grad():
        reloaded.get_input_embeddings().weight.view(-1)[1] += 1e-3  # between the old strided samples
    assert model_fingerprint(reloaded) != model_fingerprint(model)


# 3. Silent reuse of an old run

def _other_run_in(run_dir: Path, *overrides: str) -> str:
    """A config.yaml of another run in `run_dir`; returns its text."""
    run_dir.mkdir(parents=True)
    text = to_yaml(load_config(["train.lr=0.5", *overrides]))
    (run_dir / "config.yaml").write_text(text)
    return text


def test_distill_refuses_a_run_dir_of_another_config_before_training(tmp_path, monkeypatch):
    """slim distill in a run_dir of another config is refused before any data or model work, and its
    config.yaml stays the old run's."""
    monkeypatch.setattr("slim.harness.training.distill.CorpusDataModule", _no_work)
    cfg = _distill_config(tmp_path)
    saved = _other_run_in(Path(cfg.run_dir))
    with pytest.raises(UserError, match=rf"^run_dir: {cfg.run_dir} holds a run with another config"):
        distill(cfg)
    assert (Path(cfg.run_dir) / "config.yaml").read_text() == saved


def test_same_run_may_change_its_step_budget_or_start_over(tmp_path):
    """max_steps may grow on a rerun, and train.resume=false starts over in a run_dir of another config."""
    cfg = _distill_config(tmp_path)
    Path(cfg.run_dir).mkdir()
    (Path(cfg.run_dir) / "config.yaml").write_text(to_yaml(cfg))
    check_run_dir(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=999)))
    check_run_dir(_distill_config(tmp_path, "distill.loss=lm", "train.resume=false"))


def test_a_requeue_may_change_the_launch_but_not_the_run(tmp_path):
    """A requeued job may come back on another node or process count, strategy, micro-batch split, recomputation
    or checkpoint cadence (LAUNCH_FIELDS); another global batch is another run."""
    cfg = _distill_config(tmp_path)
    Path(cfg.run_dir).mkdir()
    (Path(cfg.run_dir) / "config.yaml").write_text(to_yaml(cfg))
    check_run_dir(_distill_config(tmp_path, "train.devices=2", "train.num_nodes=4", "train.strategy=fsdp",
                                  "train.micro_batch_size=1", "train.activation_checkpointing=true",
                                  "train.checkpoint_every_minutes=30", "train.stop_signals=[SIGUSR1]"))
    with pytest.raises(UserError, match=r"holds a run with another config \(.*config.yaml: train.batch_size differ\)"):
        check_run_dir(_distill_config(tmp_path, f"train.batch_size={cfg.train.batch_size * 2}"))
    many = ["train.lr=0.7", "train.seed=5", "train.warmup_steps=0", "train.weight_decay=0", "train.grad_clip=0",
            "train.val_batches=3", "distill.loss=kd"]
    with pytest.raises(UserError, match=r"\(.*: distill.loss, train.grad_clip, train.lr, train.seed, "
                                        r"train.val_batches and 2 more differ\)"):
        check_run_dir(_distill_config(tmp_path, *many))


def test_a_sharded_checkpoint_without_fsdp_is_one_line_before_any_work(tmp_path):
    """last.ckpt as a directory of shards (an FSDP run) is refused under another strategy, naming the one that
    resumes it (it used to be an IsADirectoryError traceback after the models were loaded)."""
    cfg = _distill_config(tmp_path)
    (Path(cfg.run_dir) / "checkpoints" / "last.ckpt").mkdir(parents=True)
    (Path(cfg.run_dir) / "config.yaml").write_text(to_yaml(cfg))
    with pytest.raises(UserError, match=r"^train.strategy: .*last.ckpt is a sharded FSDP checkpoint, which only "
                                        r"train.strategy=fsdp resumes"):
        check_run_dir(cfg)
    check_run_dir(_distill_config(tmp_path, "train.strategy=fsdp"))
    check_run_dir(_distill_config(tmp_path, "train.resume=false"))


@pytest.mark.parametrize("entry", ["run", "pretrain", "zeda"])
def test_run_pretrain_and_zeda_refuse_another_run_before_any_work(entry, tmp_path, monkeypatch):
    """slim run refuses before compressing (it used to overwrite its student first), pretrain before reading data,
    zeda before injecting."""
    for target in ("slim.harness.pipeline.compress", "slim.harness.training.pretrain.CorpusDataModule",
                   "slim.methods.zeda.stages.write_injected"):
        monkeypatch.setattr(target, _no_work)
    run_dir = tmp_path / "run"
    if entry == "run":
        cfg, call = _run_config(tmp_path), run_recipe
    elif entry == "pretrain":
        cfg, call = load_config([*TINY_OVERRIDES, f"data.tokenizer={tmp_path / 'tok'}", f"run_dir={run_dir}"]), pretrain
    else:
        cfg, call = load_config(["tracking.wandb=false", f"zeda.teacher={TEACHER}", f"run_dir={run_dir}"]), run_zeda
        run_dir = run_dir / "stage-router"
    _other_run_in(run_dir)
    with pytest.raises(UserError, match=rf"^run_dir: {run_dir} holds a run with another config"):
        call(cfg)
    assert not (tmp_path / "student").exists()


# 9. Failures after all the compute, 10. tracebacks instead of one line

@pytest.mark.parametrize("entry", ["distill", "pretrain", "eval"])
def test_run_dir_naming_a_file_is_one_line_before_work(entry, tmp_path, monkeypatch):
    """run_dir pointing at a regular file: one line naming run_dir, not a FileExistsError after the work."""
    for target in ("slim.harness.training.distill.CorpusDataModule", "slim.harness.training.pretrain.CorpusDataModule",
                   "slim.harness.evaluation.evaluate.load_pretrained"):
        monkeypatch.setattr(target, _no_work)
    run_file = tmp_path / "run"
    run_file.write_text("not a directory")
    calls = {
        "distill": lambda: distill(_distill_config(tmp_path)),
        "pretrain": lambda: pretrain(load_config([*TINY_OVERRIDES, f"data.tokenizer={tmp_path / 'tok'}",
                                                  f"run_dir={run_file}"])),
        "eval": lambda: evaluate(load_config(["eval.tasks=[]", "eval.perplexity_batches=1", f"run_dir={run_file}"])),
    }
    with pytest.raises(UserError, match=rf"^run_dir: {run_file} is a file"):
        calls[entry]()


@pytest.mark.parametrize("field", ["compress.output", "calibration.output"])
def test_an_output_under_a_regular_file_is_refused_before_work(field, tmp_path, monkeypatch):
    """An output whose parent is a file can never be written: refused before the teacher is loaded."""
    monkeypatch.setattr("slim.harness.compression.compress.compress_statistics", _no_work)
    monkeypatch.setattr("slim.harness.calibration.run.load_pretrained", _no_work)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    cfg = load_config([f"compress.teacher={TEACHER}", f"{field}={blocker / 'out'}"])
    with pytest.raises(UserError, match=rf"^{field}: {blocker} is a file, so {blocker / 'out'} cannot be created"):
        (compress if field == "compress.output" else calibrate_teacher)(cfg)


def test_a_read_only_output_location_is_refused_before_work(tmp_path, monkeypatch):
    """compress.output in a read-only directory: one line naming the field, before the teacher is loaded."""
    if os.geteuid() == 0:
        pytest.skip("root writes through read-only permission bits")
    monkeypatch.setattr("slim.harness.compression.compress.compress_statistics", _no_work)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        cfg = load_config([f"compress.teacher={TEACHER}", f"compress.output={locked / 'student'}"])
        with pytest.raises(UserError, match=rf"^compress.output: cannot write in {locked}"):
            compress(cfg)
    finally:
        locked.chmod(stat.S_IRWXU)


def test_a_truncated_eval_teacher_fails_before_the_student_is_evaluated(tmp_path, monkeypatch):
    """eval.teacher with its weights cut short is refused while validating, not after the whole evaluation."""
    monkeypatch.setattr("slim.harness.evaluation.evaluate.load_pretrained", _no_work)
    truncated = Path(shutil.copytree(TEACHER, tmp_path / "teacher"))
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    cfg = load_config(["eval.tasks=[]", "eval.perplexity_batches=1", f"eval.model={TEACHER}",
                       f"eval.teacher={truncated}", f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(UserError, match=rf"^eval.teacher: checkpoint {weights}: unreadable weights"):
        evaluate(cfg)


def test_report_into_a_regular_file_is_refused_before_rendering(tmp_path):
    """slim report whose output location is a file: one line before any row is read or plot drawn."""
    store = tmp_path / "results.sqlite"
    store.write_text("")
    blocker = tmp_path / "report"
    blocker.write_text("a file")
    grid = SimpleNamespace(spec=SimpleNamespace(report={"columns": ["x"]}, path="spec.yaml"), store_path=store,
                           output_dir=tmp_path)
    with pytest.raises(UserError, match=rf"^--output-dir: {blocker} is a file"):
        write_grid_report(grid)


# 11. Minor

def test_a_resumed_run_reports_tokens_per_second_of_its_own_steps(tiny_config, monkeypatch):
    """Resumed from step 2 to 4 in 10 (fake) seconds: 2 steps of tokens / 10 s, not all 4 steps'."""
    overrides = [*TINY_MODEL, *SHORT, "train.num_threads=1"]
    pretrain(tiny_config(*overrides, "train.max_steps=2"))
    clock = iter([0.0, 10.0])
    monkeypatch.setattr("slim.harness.training.run.perf_counter", lambda: next(clock))
    resumed = pretrain(tiny_config(*overrides, "train.max_steps=4"))
    tokens_per_step = 4 * 64
    assert (resumed.steps, resumed.tokens_seen, resumed.wall_seconds) == (4, 4 * tokens_per_step, 10.0)
    assert resumed.tokens_per_second == 2 * tokens_per_step / 10


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_atomic_writes_honour_the_umask(umask, mode, tmp_path):
    """Report and summary files get the mode a plain write would (0644 under umask 022), not mkstemp's 0600."""
    previous = os.umask(umask)
    try:
        path = write_text_atomic(tmp_path / "table.tex", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_distill_without_room_for_its_checkpoints_is_refused_before_any_work(tmp_path, monkeypatch):
    """run_dir must hold two checkpoints of the student (fp32 weights and AdamW moments, old and new during the
    swap): a filesystem with less is one line before any data is read or model trained."""
    from types import SimpleNamespace

    from slim.harness.models.io import empty_model
    from slim.harness.models.params import count_parameters
    from slim.harness.training.trainer import CHECKPOINT_BYTES_PER_PARAM

    need = CHECKPOINT_BYTES_PER_PARAM * count_parameters(empty_model(TEACHER)).total
    real = shutil.disk_usage

    def room_for_the_output_only(path):
        return SimpleNamespace(free=need - 1) if Path(path) == tmp_path / "run" else real(path)

    monkeypatch.setattr("slim.harness.training.distill.CorpusDataModule", _no_work)
    monkeypatch.setattr("slim.harness.outputs.shutil.disk_usage", room_for_the_output_only)
    (tmp_path / "run").mkdir()
    with pytest.raises(UserError, match=rf"^run_dir: {tmp_path / 'run'} has \d+ MiB free, the output needs about"):
        distill(_distill_config(tmp_path))

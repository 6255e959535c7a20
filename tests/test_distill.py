"""Distillation: eq 12 terms from a frozen teacher, kernels agree, KD falls, checkpoints resume and stay clean."""

import math
import re
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from slim.harness.config.load import load_config
from slim.harness.data.datamodule import CorpusDataModule
from slim.harness.errors import Interrupted, UserError
from slim.harness.models.build import build_model
from slim.harness.models.io import save_pretrained
from slim.harness.models.mtp import run_mtp
from slim.harness.models.mtp_io import MTP_SHARD
from slim.harness.training.distill import distill
from slim.harness.training.distill_module import DistillModule
from slim.harness.training.loss_terms import kd_loss_from_logits, lm_loss, main_head_targets, mtp_kd_loss, mtp_lm_loss
from slim.harness.training.nonfinite_guard import GoodCheckpoint, NonFiniteGuard, NonFiniteLossError
from slim.harness.training.optim import configure_adamw
from slim.harness.training.run import validate_train_config
from slim.harness.training.trainer import build_trainer
from tests.fixtures.distill_pair import TWO_LAYER_MODEL, config_in, distill_config


@pytest.fixture(scope="session")
def val_batches(tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Two validation batches of 4 sequences."""
    data = CorpusDataModule(config_in(tmp_path_factory.mktemp("data"), tokenizer_dir).data, batch_size=4)
    data.setup()
    loader = iter(data.val_dataloader())
    return [next(loader), next(loader)]


def _module(teacher: Path, student: Path, **distill: object) -> DistillModule:
    cfg = load_config([f"distill.teacher={teacher}", f"distill.student={student}",
                       *(f"distill.{key}={value}" for key, value in distill.items())])
    module = DistillModule(cfg.distill, cfg.train)
    module.configure_model()
    return module


def _mean_kd(teacher: Path, student: Path, batches: list[dict[str, torch.Tensor]]) -> float:
    module = _module(teacher, student, loss="kd")
    with torch.no_grad():
        return sum(module.step_loss(batch).terms["kd"].item() for batch in batches) / len(batches)


def test_identical_student_has_zero_kd(teacher_dir, val_batches):
    """A student equal to the teacher (MTP included) gives KD and MTP-KD of 0 at step 0."""
    module = _module(teacher_dir, teacher_dir, loss="kd+mtp_kd")
    terms = module.step_loss(val_batches[0]).terms
    assert terms["kd"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["mtp_kd"].item() == pytest.approx(0.0, abs=1e-6)


def test_chunked_and_reference_kernels_give_the_same_loss(teacher_dir, student_dir, val_batches):
    """The eq 12 loss of the first step is the same with the chunked and the reference KD kernel."""
    losses = [_module(teacher_dir, student_dir, loss="full", kd_kernel=kernel).step_loss(val_batches[0]).total.item()
              for kernel in ("chunked", "reference")]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_hidden_state_terms_match_logit_references(teacher_dir, student_dir, val_batches, tmp_path):
    """All four terms, computed from hidden states through the KD kernel, equal slim.harness.training.loss_terms on full
    logits; without a teacher MTP module the MTP-KD targets are the teacher's main head shifted by k."""
    bare_teacher = Path(shutil.copytree(teacher_dir, tmp_path / "teacher"))
    (bare_teacher / MTP_SHARD).unlink()
    module = _module(bare_teacher, student_dir, loss="full")
    batch = val_batches[0]
    with torch.no_grad():
        terms = module.step_loss(batch).terms
        hidden = module.student.model(input_ids=batch["input_ids"], use_cache=False).last_hidden_state
        student_logits = module.student.lm_head(hidden)
        student_mtp = run_mtp(module.student, module.student_mtp, hidden, batch["input_ids"])
        teacher_logits = module.teacher.model(input_ids=batch["input_ids"], use_cache=False).logits
    expected = {
        "lm": lm_loss(student_logits, batch["labels"]),
        "kd": kd_loss_from_logits(student_logits, teacher_logits),
        "mtp_lm": mtp_lm_loss(student_mtp, batch["labels"]),
        "mtp_kd": mtp_kd_loss(student_mtp, main_head_targets(teacher_logits, len(student_mtp))),
    }
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-6), name


def test_full_mix_logs_every_term_finite(teacher_dir, student_dir, tiny_config):
    """Two steps of the full objective log all four terms, balance, λ, β, LR and throughput, all finite."""
    cfg = distill_config(tiny_config, teacher_dir, student_dir, "train.max_steps=2")
    trainer = build_trainer(cfg.train, cfg.run_dir)
    trainer.fit(DistillModule(cfg.distill, cfg.train), datamodule=CorpusDataModule(cfg.data, cfg.train.batch_size))
    names = [f"train/{name}" for name in ("loss", "lm", "kd", "mtp_lm", "mtp_kd", "balance", "lambda", "beta", "lr",
                                           "grad_norm", "tokens_per_sec")] + ["val/loss", "val/ppl", "val/kd"]
    logged = {name: trainer.callback_metrics[name].item() for name in names}
    assert all(math.isfinite(value) for value in logged.values()), logged


def test_distillation_lowers_validation_kd(teacher_dir, student_dir, val_batches, tiny_config):
    """Twelve KD steps bring the pruned student's validation KD below its starting value."""
    cfg = distill_config(tiny_config, teacher_dir, student_dir, "distill.loss=kd", "train.max_steps=12",
                          "train.val_every=12")
    before = _mean_kd(teacher_dir, student_dir, val_batches)
    distill(cfg)
    after = _mean_kd(teacher_dir, Path(cfg.distill.output), val_batches)
    assert after < 0.9 * before, (before, after)


def test_checkpoint_has_no_teacher_and_resume_continues(teacher_dir, student_dir, tiny_config):
    """last.ckpt holds only student weights; a larger budget resumes at its step instead of restarting."""
    first = distill(distill_config(tiny_config, teacher_dir, student_dir, "distill.loss=kd", "train.max_steps=2"))
    last = Path(tiny_config().run_dir) / "checkpoints/last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["global_step"] == 2
    assert {key.split(".")[0] for key in checkpoint["state_dict"]} == {"student", "student_mtp"}
    resumed = distill(distill_config(tiny_config, teacher_dir, student_dir, "distill.loss=kd", "train.max_steps=4"))
    assert (first.steps, resumed.steps) == (2, 4)
    second_run = (Path(tiny_config().run_dir) / "metrics/version_1/metrics.csv").read_text().splitlines()
    steps = [int(row.split(",")[second_run[0].split(",").index("step")]) for row in second_run[1:]]
    assert steps and min(steps) >= 2, steps


class Stopped(RuntimeError):
    """The simulated kill."""


class StopBeforeStep(pl.Callback):
    """Raises as step `step` starts, as a killed job stops (what was written by then is what a rerun finds)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Stopped(f"stopped before step {self.step}")


@pytest.mark.parametrize("every", ["train.checkpoint_every_steps=3", "train.checkpoint_every_minutes=1e-9"])
def test_checkpoints_between_validations_by_steps_or_minutes(teacher_dir, student_dir, tiny_config, every):
    """With validation only at step 8, a run stopped as step 4 starts has last.ckpt at step 3 (every 3 steps) or
    step 4 (a clock that is always due: every step); without either, it has none. The checkpoint records the
    training loss it was written at."""
    written = {}
    for name, overrides in (("off", []), ("on", [every])):
        cfg = distill_config(tiny_config, teacher_dir, student_dir, "distill.loss=kd", "train.max_steps=8",
                             "train.val_every=8", f"run_dir={Path(tiny_config().run_dir).parent / name}",
                             *overrides)
        with pytest.raises(Stopped):
            distill(cfg, callbacks=[StopBeforeStep(4)])
        last = Path(cfg.run_dir) / "checkpoints/last.ckpt"
        written[name] = torch.load(last, weights_only=False) if last.exists() else None
    assert written["off"] is None
    assert written["on"]["global_step"] == (3 if "steps" in every else 4)
    guard = next(state for key, state in written["on"]["callbacks"].items() if key.startswith("GoodCheckpoint"))
    assert guard["last_good_step"] == written["on"]["global_step"] and math.isfinite(guard["train_loss"])


@pytest.mark.parametrize(("override", "message"), [
    ("train.checkpoint_every_steps=-1", "train.checkpoint_every_steps: must be >= 0"),
    ("train.checkpoint_every_minutes=-0.5", "train.checkpoint_every_minutes: must be >= 0"),
    ("train.stop_signals=[SIGKILL]", "train.stop_signals: unknown 'SIGKILL'; valid: SIGTERM, SIGUSR1"),
])
def test_bad_checkpoint_settings_are_refused_before_work(tiny_config, override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        validate_train_config(tiny_config(override).train)


def test_teacher_stays_frozen_in_eval_mode(teacher_dir, student_dir):
    """Lightning's train() reaches the student only: the teacher stays in eval mode without gradients."""
    module = _module(teacher_dir, student_dir)
    module.train()
    assert module.student.training and not module.teacher.model.training and not module.teacher.mtp.training
    assert not any(param.requires_grad for param in module.teacher.model.parameters())


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(teacher_dir, student_dir, tiny_config, monkeypatch):
    """An inf student weight at step 3 raises NonFiniteLossError naming the step-2 checkpoint; last.ckpt stays the
    finite step-2 state."""

    def poison(module: DistillModule, batch: dict, batch_idx: int) -> None:
        if module.global_step == 3:
            module.student.get_output_embeddings().weight.data[0] = float("inf")

    monkeypatch.setattr(DistillModule, "on_train_batch_start", poison)
    cfg = distill_config(tiny_config, teacher_dir, student_dir, "distill.loss=kd", "train.max_steps=6")
    last = Path(cfg.run_dir) / "checkpoints/last.ckpt"
    with pytest.raises(NonFiniteLossError, match=rf"^step 3: non-finite train/kd; training stopped before the "
                                                 rf"optimizer step; the last good checkpoint is {last} \(step 2\)"):
        distill(cfg)
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["global_step"] == 2
    assert all(torch.isfinite(tensor).all() for tensor in checkpoint["state_dict"].values())
    module = _module(teacher_dir, student_dir)
    module.load_state_dict(checkpoint["state_dict"])
    assert not Path(cfg.distill.output).exists()


def test_non_finite_gradient_stops_before_the_optimizer_step(teacher_dir, student_dir, tmp_path):
    """A finite loss with an inf gradient (overflow) is refused too, before the optimizer could apply it."""
    module = _module(teacher_dir, student_dir)
    head = module.student.get_output_embeddings().weight
    head.grad = torch.full_like(head, float("inf"))
    guard = NonFiniteGuard(GoodCheckpoint(tmp_path))
    with pytest.raises(NonFiniteLossError, match=r"^step 0: non-finite gradient norm; .* no checkpoint was written"):
        guard.on_before_optimizer_step(SimpleNamespace(global_step=0), module, torch.optim.SGD([head], lr=0.1))


class DivergeAfterFirstUpdate(pl.Callback):
    """Writes NaN into the student's LM head after the first optimizer step, as a diverged update leaves it (a huge lr
    no longer does so reliably: transformers 5.25's norms turn lr=1e6 weights into a finite, uniform prediction)."""

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: object) -> None:
        if trainer.global_step == 1:
            with torch.no_grad():
                module.student.get_output_embeddings().weight.fill_(float("nan"))


def test_diverged_validation_writes_no_checkpoint(teacher_dir, student_dir, tiny_config):
    """Validation after every step: the weights after the step-1 update are non-finite (val/loss NaN), so no
    checkpoint is written, and the stop at step 1 says that none exists (issue 11 item 5)."""
    cfg = distill_config(tiny_config, teacher_dir, student_dir, "distill.loss=kd", "train.max_steps=4",
                          "train.val_every=1", "train.warmup_steps=0")
    with pytest.warns(UserWarning, match=r"step 1: non-finite loss or weights, checkpoint not written"):
        with pytest.raises(NonFiniteLossError, match=r"^step 1: non-finite .*no checkpoint was written, a rerun "
                                                     r"starts from the beginning"):
            distill(cfg, callbacks=[DivergeAfterFirstUpdate()])
    assert not (Path(cfg.run_dir) / "checkpoints").exists() or not any((Path(cfg.run_dir) / "checkpoints").iterdir())


def test_diverging_between_validations_names_the_checkpoint_that_exists(teacher_dir, student_dir, tiny_config):
    """With val_every=2 a run that diverges before its first validation says no checkpoint exists (it used to
    claim a last checkpoint)."""
    cfg = distill_config(tiny_config, teacher_dir, student_dir, "distill.loss=kd", "train.max_steps=4",
                          "train.lr=1e6", "train.val_every=2", "train.warmup_steps=0")
    with pytest.raises(NonFiniteLossError, match=r"no checkpoint was written"):
        distill(cfg)
    assert not (Path(cfg.run_dir) / "checkpoints/last.ckpt").exists()


def test_resuming_a_diverged_checkpoint_says_so(teacher_dir, student_dir, tiny_config):
    """A last.ckpt whose weights already give a non-finite loss (written by an older harness, or edited) is named
    as diverged on the first resumed step, with the way out (train.resume=false)."""
    cfg = distill_config(tiny_config, teacher_dir, student_dir, "distill.loss=kd", "train.max_steps=2")
    distill(cfg)
    last = Path(cfg.run_dir) / "checkpoints/last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    head = next(key for key in checkpoint["state_dict"] if key.endswith("lm_head.weight"))
    checkpoint["state_dict"][head][0] = float("nan")
    torch.save(checkpoint, last)
    longer = distill_config(tiny_config, teacher_dir, student_dir, "distill.loss=kd", "train.max_steps=4")
    with pytest.raises(NonFiniteLossError, match=r"^step 2: non-finite train/kd; training stopped at the first step "
                                                 r"after resuming from .*last.ckpt \(step 2\): that state already "
                                                 r"diverges; set train.resume=false"):
        distill(longer)


def test_missing_student_mtp_starts_fresh(teacher_dir, student_dir, tmp_path):
    """A student whose config has MTP depths but no MTP weights gets a freshly initialized MTP module."""
    bare = Path(shutil.copytree(student_dir, tmp_path / "bare"))
    (bare / MTP_SHARD).unlink()
    assert _module(teacher_dir, bare).student_mtp is not None


def test_vocab_size_mismatch_is_refused_before_work(teacher_dir, tiny_config, tmp_path):
    """A student with another vocab_size fails naming distill.student and both sizes; no run dir is made."""
    cfg = load_config(["model=tiny", *TWO_LAYER_MODEL, "model.vocab_size=512"])
    student = save_pretrained(build_model(cfg.model), tmp_path / "student")
    run = distill_config(tiny_config, teacher_dir, student)
    with pytest.raises(UserError, match=r"^distill.student: vocab_size 512 differs from the teacher's 1024"):
        distill(run)
    assert not Path(run.run_dir).exists()


def test_tokenizer_mismatch_is_refused_before_work(teacher_dir, student_dir, tiny_config, tmp_path):
    """Same vocab_size but another tokenizer is refused too: KD compares token ids."""
    other = Tokenizer(models.BPE(unk_token="<unk>"))
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    other.train_from_iterator(["and the earth was without form"] * 3, trainers.BpeTrainer(special_tokens=["<unk>"]))
    student = Path(shutil.copytree(student_dir, tmp_path / "student"))
    PreTrainedTokenizerFast(tokenizer_object=other, unk_token="<unk>").save_pretrained(student)
    with pytest.raises(UserError, match=r"^distill.student: the tokenizer in .* differs from the teacher's"):
        distill(distill_config(tiny_config, teacher_dir, student))


def test_unknown_loss_key_lists_valid_keys(tiny_config):
    """A typo in distill.loss fails before any model is read, naming the field and every valid mix."""
    with pytest.raises(UserError, match=r"distill.loss: unknown loss mix 'kd\+lmm'.*valid: full, kd, kd\+lm"):
        distill(tiny_config("distill.loss=kd+lmm"))


def test_step_offset_continues_schedules():
    """A stage starting at step 50 of 100 gets the midpoint λ, β and the LR of global step 50."""
    cfg = load_config(["train.warmup_steps=10", "train.max_steps=50"])
    module = DistillModule(cfg.distill, cfg.train, step_offset=50, total_steps=100)
    lam, beta = module.loss_weights()
    assert lam == pytest.approx(0.875) and beta == pytest.approx(0.2)
    optim = configure_adamw(torch.nn.Linear(2, 2), cfg.train, total_steps=100, step_offset=50)
    expected = cfg.train.min_lr_ratio + (1 - cfg.train.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * 40 / 90))
    assert optim["optimizer"].param_groups[0]["lr"] == pytest.approx(cfg.train.lr * expected)


def test_an_mtp_module_no_loss_term_reaches_is_frozen(teacher_dir, student_dir):
    """Under a mix without MTP terms the student's MTP module is carried unchanged: no gradient, no optimizer state
    (an FSDP resume otherwise looked for AdamW state its checkpoint never had); with MTP terms it trains."""
    frozen, trained = _module(teacher_dir, student_dir, loss="kd"), _module(teacher_dir, student_dir, loss="full")
    assert not any(param.requires_grad for param in frozen.student_mtp.parameters())
    assert all(param.requires_grad for param in trained.student_mtp.parameters())
    assert all(param.requires_grad for param in frozen.student.parameters())


def test_a_rerun_of_a_finished_run_keeps_its_summary(teacher_dir, student_dir, tiny_config):
    """Rerunning a finished distillation trains no step: it returns the summary the run that did the work wrote and
    leaves the file byte for byte (it used to rewrite it with the rerun's 1.6 s and 30,086 tokens/s)."""
    cfg = distill_config(tiny_config, teacher_dir, student_dir, "distill.loss=kd", "train.max_steps=2")
    first = distill(cfg)
    path = Path(cfg.run_dir) / "distill_summary.json"
    written = path.read_bytes()
    assert distill(cfg) == first
    assert path.read_bytes() == written


def test_ctrl_c_is_one_line_naming_the_checkpoint(teacher_dir, student_dir, tiny_config):
    """Ctrl-C during training (Lightning shuts down and exits 1) becomes Interrupted, which names the checkpoint a
    rerun resumes from; the CLI prints it as one line even in the quiet default."""
    cfg = distill_config(tiny_config, teacher_dir, student_dir, "distill.loss=kd", "train.max_steps=4",
                         "train.val_every=2")

    class CtrlC(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == 3:
                raise KeyboardInterrupt

    with pytest.raises(Interrupted, match=r"^interrupted at step 3: the last good checkpoint is .*last.ckpt "
                                          r"\(step 2\), a rerun resumes from it$"):
        distill(cfg, callbacks=[CtrlC()])
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores Ctrl-C after its shutdown


def test_a_finished_fit_hands_the_signals_back(teacher_dir, student_dir, tiny_config):
    """After distill returns, SIGTERM and SIGUSR1 have the handlers they had before it (not the stop-signal recorder,
    nor Lightning's handlers of the finished trainer)."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGUSR1)}
    distill(distill_config(tiny_config, teacher_dir, student_dir, "distill.loss=kd", "train.max_steps=2"))
    assert {signum: signal.getsignal(signum) for signum in before} == before

"""Teacher pretraining: a short run learns, resumes from its checkpoint, and writes a loadable HF dir."""

import json
import signal
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from slim.harness.errors import Interrupted, UserError
from slim.harness.training.lm_module import PretrainModule
from slim.harness.training.pretrain import pretrain

pytestmark = pytest.mark.e2e

SHORT = ["train.max_steps=40", "train.batch_size=8", "train.warmup_steps=4", "train.val_every=20",
         "train.val_batches=4", "train.lr=3e-3"]


def test_short_run_lowers_validation_loss_and_saves_hf_dir(tiny_config):
    """40 steps bring validation perplexity below the unigram baseline and far below uniform (1024)."""
    cfg = tiny_config(*SHORT)
    summary = pretrain(cfg)
    assert summary.steps == 40
    # uniform guess = vocab size 1024; unigram on this corpus is ~300; the model must beat both
    assert summary.val_perplexity < 0.8 * summary.unigram_perplexity, summary
    assert list((Path(cfg.run_dir) / "metrics").glob("version_*/metrics.csv"))
    model = AutoModelForCausalLM.from_pretrained(summary.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(summary.model_dir)
    ids = torch.tensor([tokenizer.encode("In the beginning God created")])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], 1024)
    saved = json.loads((Path(cfg.run_dir) / "pretrain_summary.json").read_text())
    assert saved["val_perplexity"] == pytest.approx(summary.val_perplexity)


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint(tiny_config):
    """A second call with a larger step budget resumes at the saved step instead of restarting."""
    first = pretrain(tiny_config(*SHORT[1:], "train.max_steps=20"))
    assert first.steps == 20
    resumed = pretrain(tiny_config(*SHORT[1:], "train.max_steps=30"))
    assert resumed.steps == 30
    assert resumed.tokens_seen == 30 * 8 * 64
    # each (re)start keeps its own metrics file: resuming never deletes what the first run logged
    assert len(list((Path(tiny_config().run_dir) / "metrics").glob("version_*/metrics.csv"))) == 2


def test_inconsistent_vocab_is_refused_before_work(tiny_config):
    """Model and tokenizer vocab sizes must agree; the error names both fields."""
    cfg = tiny_config("model.vocab_size=2048")
    with pytest.raises(UserError, match=r"model.vocab_size \(2048\) must equal .*\b1024\b"):
        pretrain(cfg)
    assert not Path(cfg.run_dir).exists()


@pytest.mark.slow
def test_killed_and_resumed_run_matches_uninterrupted_run(tiny_config, tmp_path, monkeypatch):
    """A run that crashes after its step-6 checkpoint and is resumed ends with the uninterrupted run's weights.

    CPU MoE kernels are not bit-deterministic: two identical uninterrupted runs differ by up to ~3e-4 after
    12 steps, so the tolerance is a few times that drift and far below one step's update (lr 3e-3)."""
    common = ["train.batch_size=4", "train.warmup_steps=2", "train.val_every=6", "train.val_batches=1",
              "train.max_steps=12"]
    straight = pretrain(tiny_config(*common, f"run_dir={tmp_path / 'straight'}"))

    original_step = PretrainModule.training_step

    def crash_at_step_6(self, batch, batch_idx):
        if self.trainer.global_step == 6:
            raise KeyboardInterrupt("simulated kill")
        return original_step(self, batch, batch_idx)

    monkeypatch.setattr(PretrainModule, "training_step", crash_at_step_6)
    with pytest.raises(Interrupted, match=r"^interrupted at step 6: the last good checkpoint is .* \(step 6\)"):
        pretrain(tiny_config(*common, f"run_dir={tmp_path / 'resumed'}"))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores Ctrl-C after its shutdown
    monkeypatch.setattr(PretrainModule, "training_step", original_step)
    resumed = pretrain(tiny_config(*common, f"run_dir={tmp_path / 'resumed'}"))
    assert resumed.steps == 12
    a = AutoModelForCausalLM.from_pretrained(straight.model_dir).state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed.model_dir).state_dict()
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=2e-3, msg=name)

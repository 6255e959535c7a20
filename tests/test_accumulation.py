"""train.micro_batch_size: micro-batches partition each step's batch of the same (seed, step) stream, and one
accumulated step (micro 4 x 2) has the loss and gradients of the whole batch of 8."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from slim.harness.config.load import load_config
from slim.harness.config.schema import SlimConfig, TrainConfig
from slim.harness.data.datamodule import CorpusDataModule
from slim.harness.data.sampler import ResumableBatchSampler
from slim.harness.errors import UserError
from slim.harness.models.build import build_model
from slim.harness.models.io import save_pretrained
from slim.harness.training.distill_module import DistillModule
from slim.harness.training.run import validate_train_config
from slim.harness.training.trainer import build_trainer
from tests.conftest import TINY_OVERRIDES

# hidden 64, 2 layers (Gated DeltaNet + full attention), 8 experts top-2, one MTP depth.
TINY_MODEL = ["model.hidden_size=64", "model.num_hidden_layers=2", "model.full_attention_interval=2",
              "model.num_experts=8", "model.num_experts_per_tok=2", "model.moe_intermediate_size=32",
              "model.shared_expert_intermediate_size=64"]
TERMS = ("loss", "lm", "kd", "mtp_lm", "mtp_kd")


@pytest.mark.parametrize("micro_batches", [2, 4])
@pytest.mark.parametrize("world_size", [1, 2])
def test_micro_batches_partition_each_step_of_the_stream(world_size: int, micro_batches: int):
    """Per rank and step, the micro-batches in order make up the unaccumulated slice, epoch boundary and a
    resumed start step included; the length counts micro-batches."""
    for rank in range(world_size):
        for start in (0, 5):
            whole = list(ResumableBatchSampler(50, 8, 3, lambda: start, 9, rank, world_size))
            sampler = ResumableBatchSampler(50, 8, 3, lambda: start, 9, rank, world_size, micro_batches)
            micro = list(sampler)
            assert len(sampler) == len(micro) == len(whole) * micro_batches
            assert {len(batch) for batch in micro} == {8 // world_size // micro_batches}
            steps = [sum(micro[index:index + micro_batches], []) for index in range(0, len(micro), micro_batches)]
            assert steps == whole


@pytest.mark.parametrize(("micro_batch_size", "message"), [
    (3, r"train.micro_batch_size \(3\) must be 0 or divide each process's slice of the batch .* = 4\)"),
    (-1, r"train.micro_batch_size \(-1\) must be 0"),
])
def test_micro_batch_size_that_does_not_divide_the_slice_is_refused(micro_batch_size: int, message: str):
    """A micro-batch that does not divide batch_size / processes fails in one line naming the field."""
    with pytest.raises(UserError, match=message):
        validate_train_config(TrainConfig(warmup_steps=1, batch_size=8, devices=2, micro_batch_size=micro_batch_size))


class _NoBalance(DistillModule):
    """The balance loss weighted 0: under accumulation its expert load is counted per micro-batch (by design,
    training/accumulation.py), so only the other terms are the whole batch's."""

    def balance_loss(self, router_logits: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
        return super().balance_loss(router_logits)[0], 0.0


class _Gradients(Callback):
    """Keeps the gradients of the first optimizer step (before clipping) and counts training_step calls."""

    def __init__(self) -> None:
        self.gradients: dict[str, torch.Tensor] = {}
        self.batches = 0

    def on_train_batch_start(self, *_: object) -> None:
        self.batches += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.gradients = {name: param.grad.clone() for name, param in pl_module.named_parameters()
                          if param.grad is not None}


@pytest.fixture(scope="module")
def distill_config(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> SlimConfig:
    """A full-mix distillation of a random tiny student from a random tiny teacher, batch 8 of 32 tokens."""
    root = tmp_path_factory.mktemp("accumulation")
    overrides = [*TINY_OVERRIDES, *TINY_MODEL, "data.seq_len=32", f"data.tokenizer={tokenizer_dir}"]
    data = CorpusDataModule(load_config(overrides).data, batch_size=8)
    data.setup()
    dirs = [save_pretrained(build_model(load_config(overrides).model, seed=seed), root / name, data.tokenizer)
            for seed, name in ((0, "teacher"), (1, "student"))]
    return load_config([*overrides, "distill.loss=full", "distill.lambda_start=0.5", "distill.beta_start=0.5",
                        f"distill.teacher={dirs[0]}", f"distill.student={dirs[1]}", "train.batch_size=8",
                        "train.max_steps=1", "train.val_every=100", "train.log_every=1", "train.accelerator=cpu"])


def _one_step(cfg: SlimConfig, run_dir: Path, micro_batch_size: int) -> tuple[dict[str, float], _Gradients]:
    """(logged training losses, gradients) of one optimizer step with `micro_batch_size`."""
    train_cfg = replace(cfg.train, micro_batch_size=micro_batch_size)
    module = _NoBalance(cfg.distill, train_cfg)
    torch.manual_seed(0)  # the student's fresh MTP module
    module.configure_model()
    gradients = _Gradients()
    trainer = build_trainer(train_cfg, run_dir, callbacks=[gradients])
    trainer.fit(module, datamodule=CorpusDataModule(cfg.data, train_cfg.batch_size, seed=train_cfg.seed))
    names = [f"train/{term}" for term in TERMS] + ["train/global_loss"]
    return {name: trainer.callback_metrics[name].item() for name in names}, gradients


def test_micro_4_by_2_equals_batch_8(distill_config: SlimConfig, tmp_path: Path):
    """Two micro-batches of 4 give the logged losses and the gradients of one batch of 8."""
    whole_losses, whole = _one_step(distill_config, tmp_path / "whole", 0)
    micro_losses, micro = _one_step(distill_config, tmp_path / "micro", 4)
    assert (whole.batches, micro.batches) == (1, 2)
    assert whole.gradients.keys() == micro.gradients.keys() and len(whole.gradients) > 50
    difference = max((whole.gradients[name] - micro.gradients[name]).abs().max().item() for name in whole.gradients)
    scale = max(grad.abs().max().item() for grad in whole.gradients.values())
    print(f"losses batch 8: {whole_losses}\nlosses micro 4 x 2: {micro_losses}\n"
          f"max |grad difference| = {difference:.2e} (largest gradient {scale:.2e})")
    assert micro_losses == pytest.approx(whole_losses, rel=1e-5)
    assert difference < 1e-5 * scale

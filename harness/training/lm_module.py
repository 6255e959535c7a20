"""Teacher pretraining as a Lightning module: next-token loss + global-batch MoE balance loss."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from slim.harness.config.schema import ModelConfig, TrainConfig
from slim.harness.models.build import build_model
from slim.harness.training.accumulation import StepMean
from slim.harness.training.distill_terms import collect_router_logits
from slim.harness.training.fsdp import shard_causal_lm
from slim.harness.training.layer_switches import prepare_layers
from slim.harness.training.load_balance import global_batch_balance_loss
from slim.harness.training.optim import configure_adamw
from slim.harness.training.precision import mixed_precision_policy
from slim.harness.training.sharded_load import fill_from_rank0


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy; `labels` are already shifted (labels[t] is the token after inputs[t])."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())


class PretrainModule(pl.LightningModule):
    """Trains a MoE causal LM from scratch; the model is built in `configure_model` (FSDP-ready)."""

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
        super().__init__()
        self.model_cfg = model_cfg
        self.train_cfg = train_cfg
        self.model: torch.nn.Module | None = None
        self.val_loss = MeanMetric(nan_strategy="disable")  # a NaN batch makes val/loss NaN, never dropped
        self.step_mean = StepMean()  # logged losses: means over each step's micro-batches

    def configure_model(self) -> None:
        """Build the model; under FSDP on the meta device, sharded, then filled with the weights rank 0 draws (the
        same as one process draws), so no other rank holds the whole model."""
        if self.model is not None:
            return
        mesh = self.device_mesh  # ModelParallelStrategy: FSDP2 over its data-parallel mesh
        self.model = build_model(self.model_cfg, seed=self.train_cfg.seed, device="cpu" if mesh is None else "meta")
        prepare_layers(self.model, None, self.train_cfg)
        if mesh is not None:
            shard_causal_lm(self.model, mesh, mixed_precision_policy(self.train_cfg.precision))
            fill_from_rank0(self.model, lambda: build_model(self.model_cfg, seed=self.train_cfg.seed).state_dict(),
                            mesh, self.model._init_weights)

    def forward(self, input_ids: torch.Tensor):
        """The causal LM's output, its `router_logits` collected by hooks on the gates: transformers' own output
        recording looks the model up by class, which FSDP2's `fully_shard` replaces, and would return None."""
        with collect_router_logits(self.model) as router_logits:
            out = self.model(input_ids=input_ids, use_cache=False)
        out.router_logits = tuple(router_logits)
        return out

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self(batch["input_ids"])
        lm = next_token_loss(out.logits, batch["labels"])
        balance = global_batch_balance_loss(out.router_logits, self.model_cfg.num_experts_per_tok)
        loss = lm + self.model_cfg.router_aux_loss_coef * balance
        losses = {"train/loss": loss, "train/lm": lm, "train/balance": balance}
        self.log_dict(self.step_mean(self.global_step, losses), prog_bar=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.model(input_ids=batch["input_ids"], use_cache=False).logits
        self.val_loss.update(next_token_loss(logits, batch["labels"]), weight=batch["labels"].numel())

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log_dict({"val/loss": loss, "val/ppl": loss.exp()}, prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> dict:
        return configure_adamw(self.model, self.train_cfg, self.train_cfg.max_steps)

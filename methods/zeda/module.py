"""One ZEDA stage as a distillation module: the student with zero experts against the frozen original model.

Stage "router" trains only the routers (every MoE layer's `mlp.gate`: real rows and zero-expert columns), the
backbone and MTP module frozen; stage "all" trains everything. Both use the loss mix of `zeda.loss` and, instead
of the global-batch balance loss, the group balancing loss at `zeda.balance_weight`. Every training step logs the
share of routed expert FLOPs skipped, overall (`train/expert_flops_saved`) and per decoder layer
(`train/expert_flops_saved/layer_<i>`).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from slim.harness.config.schema import DistillConfig, TrainConfig
from slim.harness.models.expert_flops import ExpertFlopsCounts, count_expert_flops
from slim.harness.models.mtp import MTPModule
from slim.harness.models.view import view
from slim.harness.training.distill_module import DistillModule
from slim.methods.zeda.group_balance import group_balance_loss
from slim.methods.zeda.options import ZedaConfig

STAGES = ("router", "all")


def freeze_all_but_routers(student: PreTrainedModel, mtp: MTPModule | None) -> None:
    """Stage 1: only the MoE routers keep requires_grad (the optimizer then holds nothing else)."""
    for module in (student, mtp):
        if module is not None:
            module.requires_grad_(False)
    for layer in view(student).moe_layers():
        layer.moe.router_module.requires_grad_(True)


def flops_metrics(prefix: str, counts: ExpertFlopsCounts) -> dict[str, float]:
    """`<prefix>/expert_flops_saved` overall and `<prefix>/expert_flops_saved/layer_<i>` per MoE layer."""
    metrics = {f"{prefix}/expert_flops_saved": counts.overall()}
    metrics.update({f"{prefix}/expert_flops_saved/layer_{layer}": share for layer, share in counts.per_layer().items()})
    return metrics


class ZedaDistillModule(DistillModule):
    """DistillModule for one ZEDA stage ("router" or "all"), group balancing loss, expert-FLOPs logging."""

    def __init__(self, distill_cfg: DistillConfig, train_cfg: TrainConfig, zeda_cfg: ZedaConfig, stage: str,
                 step_offset: int = 0, total_steps: int | None = None) -> None:
        assert stage in STAGES, f"unknown ZEDA stage {stage!r}"
        super().__init__(distill_cfg, train_cfg, step_offset, total_steps)
        self.zeda_cfg = zeda_cfg
        self.stage = stage

    def configure_model(self) -> None:
        first_call = self.student is None
        super().configure_model()
        if first_call and self.stage == "router":
            freeze_all_but_routers(self.student, self.student_mtp)

    def balance_loss(self, router_logits: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
        loss = group_balance_loss(router_logits, self.zeda_cfg.num_zero_experts, self.zeda_cfg.group_size,
                                  self.student.config.num_experts_per_tok)
        return loss, self.zeda_cfg.balance_weight

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        with count_expert_flops(self.student) as counts:
            loss = super().training_step(batch, batch_idx)
        self.log_dict(flops_metrics("train", counts))
        return loss

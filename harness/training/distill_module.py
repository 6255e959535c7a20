"""Distillation as a Lightning module: a trainable student (+ its MTP module) against a frozen teacher.

The training loss is a loss mix (methods/losses, SlimQwen eq 12) at the current λ, β (methods/schedules)
plus the global-batch MoE balance loss. `step_offset` / `total_steps` place this run inside a longer
budget, so the stages of a progressive plan continue one LR decay and one λ/β schedule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import torch
from torchmetrics import MeanMetric
from transformers import PreTrainedModel

from slim.harness.config.schema import DistillConfig, TrainConfig
from slim.harness.models.io import load_pretrained
from slim.harness.models.mtp import MTPModule, build_mtp, mtp_depth
from slim.harness.models.mtp_io import find_mtp, has_mtp_weights, load_mtp
from slim.harness.training.accumulation import StepMean
from slim.harness.training.distill_terms import (
    KD_TERMS,
    backbone_hidden,
    collect_router_logits,
    head_terms,
    hidden_states,
)
from slim.harness.training.fsdp import shard_with_mtp
from slim.harness.training.layer_switches import prepare_layers
from slim.harness.training.load_balance import global_batch_balance_loss
from slim.harness.training.loss_mixes import loss_mixes
from slim.harness.training.optim import configure_adamw
from slim.harness.training.precision import cast_parameters, frozen_dtype, master_dtype, mixed_precision_policy
from slim.harness.training.router_kd import RouterMap, build_router_map, router_kd_loss, student_lineage
from slim.harness.training.sharded_load import empty_with_mtp, fill_pretrained
from slim.harness.training.teacher_cache import TeacherCache, cached_kd_term
from slim.harness.training.weight_schedules import weight_schedules
from slim.harness.verbosity import note
from slim.kernels.kd_loss.cached_reference import cached_kd_implementations
from slim.kernels.kd_loss.fused_head import head_implementations


@dataclass
class FrozenTeacher:
    """The teacher and its MTP module (None without one), kept outside the module tree: no checkpoint
    entries, no optimizer state, and Lightning's train()/eval() switches never reach it."""

    model: PreTrainedModel
    mtp: MTPModule | None

    def to(self, device: torch.device) -> None:
        """Move to `device` (once: a no-op when already there)."""
        if self.model.device != device:
            self.model.to(device)
            if self.mtp is not None:
                self.mtp.to(device)


def frozen_teacher(model: PreTrainedModel, mtp: MTPModule | None) -> FrozenTeacher:
    """`model` and `mtp` as a FrozenTeacher: eval mode, no gradients."""
    for module in (model, mtp):
        if module is not None:
            module.eval().requires_grad_(False)
    return FrozenTeacher(model, mtp)


def load_teacher(path: str | Path) -> FrozenTeacher:
    """The teacher in eval mode without gradients, with its MTP module when the directory holds MTP weights."""
    model, _ = load_pretrained(path)
    return frozen_teacher(model, find_mtp(model, path))


def teacher_skeleton(path: str | Path) -> FrozenTeacher:
    """`load_teacher`'s modules built on the meta device, weights unread: FSDP shards them, then fills them."""
    return frozen_teacher(*empty_with_mtp(path, with_mtp=has_mtp_weights(path)))


_ANNOUNCED_FRESH_MTP: set[str] = set()


def _fresh_mtp(path: str | Path, model: PreTrainedModel) -> bool:
    """Whether the student's MTP module starts from a fresh init (MTP depths in config.json, no weights saved);
    says so when it does."""
    fresh = bool(mtp_depth(model)) and not has_mtp_weights(path)
    if fresh and str(path) not in _ANNOUNCED_FRESH_MTP:  # once per student and process (a plan reloads it)
        _ANNOUNCED_FRESH_MTP.add(str(path))
        note(f"{path}: no MTP weights (its config has {mtp_depth(model)} MTP depth(s), but the checkpoint it was cut "
             "from carried none, as the shipped tiny teacher, pretrained without MTP, does); the MTP module starts "
             "from a fresh init and trains with the MTP terms of distill.loss. Start from a teacher with released "
             "MTP weights to keep them, or pick a loss mix without MTP terms to freeze it.")
    return fresh


def load_student(path: str | Path, seed: int) -> tuple[PreTrainedModel, MTPModule | None]:
    """The student (in train mode) and its MTP module; a fresh MTP module drawn from `seed` when config.json has MTP
    depths but no weights were saved (the same module FSDP's sharded load draws)."""
    model, _ = load_pretrained(path)
    model.train()
    return model, build_mtp(model, seed) if _fresh_mtp(path, model) else load_mtp(model, path)


def student_skeleton(path: str | Path) -> tuple[PreTrainedModel, MTPModule | None]:
    """`load_student`'s modules built on the meta device, weights unread: FSDP shards them, then fills them."""
    model, mtp = empty_with_mtp(path, with_mtp=True)
    _fresh_mtp(path, model)
    return model.train(), mtp


@dataclass
class StepLoss:
    """One batch's training loss, the terms it was made of (mix terms + "balance") and the weights used."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    lam: float
    beta: float


class DistillModule(pl.LightningModule):
    """Student + MTP trained on a loss mix against a frozen teacher; models are loaded in `configure_model`."""

    def __init__(self, distill_cfg: DistillConfig, train_cfg: TrainConfig, step_offset: int = 0,
                 total_steps: int | None = None) -> None:
        super().__init__()
        self.distill_cfg = distill_cfg
        self.train_cfg = train_cfg
        self.step_offset = step_offset
        self.total_steps = step_offset + train_cfg.max_steps if total_steps is None else total_steps
        self.mix = loss_mixes.get(distill_cfg.loss, "distill.loss")
        self.head = head_implementations.get(distill_cfg.kd_kernel, "distill.kd_kernel")
        self.cached_kd = (cached_kd_implementations.get(distill_cfg.kd_kernel, "distill.kd_kernel")
                          if distill_cfg.teacher_cache else None)
        self.lambda_schedule = weight_schedules.get(distill_cfg.lambda_schedule, "distill.lambda_schedule")
        self.beta_schedule = weight_schedules.get(distill_cfg.beta_schedule, "distill.beta_schedule")
        self.student: PreTrainedModel | None = None
        self.student_mtp: MTPModule | None = None
        self.teacher: FrozenTeacher | None = None
        self.teacher_cache: TeacherCache | None = None
        self.router_map: RouterMap | None = None
        self.val_lm = MeanMetric(nan_strategy="disable")  # a NaN batch makes val/loss NaN, never dropped
        self.val_kd = MeanMetric(nan_strategy="disable")
        self._batch_started = 0.0
        self.loss_terms: dict[str, torch.Tensor] = {}
        self.step_mean = StepMean()  # logged losses: means over each step's micro-batches

    def configure_model(self) -> None:
        """Load the models (under FSDP: build them on the meta device, shard, then fill them from rank 0), in the
        dtypes of `train.precision` (slim.harness.training.precision)."""
        if self.student is not None:
            return
        sharded = self.device_mesh is not None  # ModelParallelStrategy: FSDP2 over its data-parallel mesh
        self.student, self.student_mtp = (student_skeleton(self.distill_cfg.student) if sharded
                                          else load_student(self.distill_cfg.student, self.train_cfg.seed))
        if self.student_mtp is not None and not self.mix.needs_mtp:
            # No loss term reaches it: carried to the output unchanged, with no gradient and no optimizer state (a
            # sharded checkpoint's optimizer then holds exactly the parameters a resumed run trains).
            self.student_mtp.requires_grad_(False)
        self.teacher = (teacher_skeleton if sharded else load_teacher)(self.distill_cfg.teacher)
        if self.distill_cfg.teacher_cache:  # kd targets from `slim cache-teacher`; the teacher still serves validation
            self.teacher_cache = TeacherCache(self.distill_cfg.teacher_cache)
            if not sharded:  # sharded: rank 0 checks the weights it reads (_shard_and_fill)
                self.teacher_cache.check_teacher(self.teacher.model, self.distill_cfg.teacher)
        if self.teacher.mtp is not None and mtp_depth(self.teacher.model) < mtp_depth(self.student):
            note("teacher MTP is shallower than the student's: MTP-KD targets come from its main head")
            self.teacher.mtp = None
        if self.distill_cfg.router_kd_weight > 0:
            lineage = student_lineage(self.distill_cfg.student, self.distill_cfg.teacher)
            self.router_map = build_router_map(lineage, self.student, self.teacher.model)
        cast_parameters((self.student, self.student_mtp), master_dtype(self.train_cfg.precision))
        cast_parameters((self.teacher.model, self.teacher.mtp), frozen_dtype(self.train_cfg.precision))
        prepare_layers(self.student, self.student_mtp, self.train_cfg)
        prepare_layers(self.teacher.model, self.teacher.mtp, self.train_cfg, frozen=True)
        if sharded:
            self._shard_and_fill()

    def _shard_and_fill(self) -> None:
        """FSDP2 on the meta-device models (the student under the precision's policy), then each filled from
        the weights rank 0 reads (slim.harness.training.sharded_load), the teacher's checked against its cache."""
        cfg, mesh = self.distill_cfg, self.device_mesh
        shard_with_mtp(self.student, self.student_mtp, mesh, mixed_precision_policy(self.train_cfg.precision))
        shard_with_mtp(self.teacher.model, self.teacher.mtp, mesh)
        fill_pretrained(self.student, self.student_mtp, cfg.student, mesh, self.train_cfg.seed)
        check = (None if self.teacher_cache is None
                 else partial(self.teacher_cache.check_teacher, self.teacher.model, cfg.teacher))
        fill_pretrained(self.teacher.model, self.teacher.mtp, cfg.teacher, mesh, self.train_cfg.seed, check)

    def loss_weights(self) -> tuple[float, float]:
        """(λ, β) at the current step, as a fraction of the whole budget `total_steps`."""
        progress = (self.global_step + self.step_offset) / self.total_steps
        cfg = self.distill_cfg
        return (self.lambda_schedule(cfg.lambda_start, cfg.lambda_end, progress),
                self.beta_schedule(cfg.beta_start, cfg.beta_end, progress))

    def _teacher(self) -> FrozenTeacher:
        self.teacher.to(self.device)
        return self.teacher

    def balance_loss(self, router_logits: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
        """(balance term, its weight in the total loss): the global-batch loss at config.router_aux_loss_coef.
        A subclass may swap in another balance loss (an adaptation may balance groups of experts)."""
        config = self.student.config
        return global_batch_balance_loss(router_logits, config.num_experts_per_tok), config.router_aux_loss_coef

    def step_loss(self, batch: dict[str, torch.Tensor]) -> StepLoss:
        """Mix of the terms the loss needs at the current λ, β, plus router_aux_loss_coef × balance and, when
        enabled, router_kd_weight × router-logit KD."""
        input_ids, labels = batch["input_ids"], batch["labels"]
        depth = mtp_depth(self.student) if self.mix.needs_mtp else 0
        with collect_router_logits(self.student) as router_logits:
            student = hidden_states(self.student, self.student_mtp, input_ids, depth)
        lam, beta = self.loss_weights()
        weights = self.mix.coefficients(lam, beta)
        head_weights = {name: weight for name, weight in weights.items()
                        if not (name == "kd" and self.teacher_cache is not None)}
        teacher = None
        if head_weights.keys() & KD_TERMS or self.router_map is not None:
            frozen = self._teacher()
            with torch.no_grad(), collect_router_logits(frozen.model) as teacher_router_logits:
                teacher = hidden_states(frozen.model, frozen.mtp, input_ids, depth if "mtp_kd" in self.mix.needs else 0)
        total, terms = head_terms(self.head, head_weights, student, teacher, labels, self.distill_cfg.temperature)
        if head_weights.keys() != weights.keys():  # kd from the teacher cache
            terms["kd"] = cached_kd_term(self.cached_kd, student.backbone, student.head_weight,
                                         self.teacher_cache.lookup(batch["index"]), self.distill_cfg.temperature)
            total = total + weights["kd"] * terms["kd"]
        terms["balance"], balance_weight = self.balance_loss(router_logits)
        total = total + balance_weight * terms["balance"]
        if self.router_map is not None:
            terms["router_kd"] = router_kd_loss(router_logits, teacher_router_logits, self.router_map)
            total = total + self.distill_cfg.router_kd_weight * terms["router_kd"]
        return StepLoss(total, terms, lam, beta)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        step = self.step_loss(batch)
        self.loss_terms = step.terms  # named by NonFiniteGuard when the total is not finite
        losses = {"train/loss": step.total, **{f"train/{name}": value for name, value in step.terms.items()}}
        self.log_dict(self.step_mean(self.global_step, losses), prog_bar=True)
        self.log_dict({"train/lambda": step.lam, "train/beta": step.beta,
                       "train/lr": self.trainer.optimizers[0].param_groups[0]["lr"]})
        return step.total

    def on_train_batch_start(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._batch_started = time.perf_counter()

    def on_train_batch_end(self, outputs: object, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        seconds = max(time.perf_counter() - self._batch_started, 1e-9)
        self.log("train/tokens_per_sec", batch["input_ids"].numel() * self.trainer.world_size / seconds)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        input_ids, labels = batch["input_ids"], batch["labels"]
        teacher = self._teacher().model
        _, values = self.head(backbone_hidden(self.student, input_ids).flatten(0, 1),
                              backbone_hidden(teacher, input_ids).flatten(0, 1),
                              self.student.get_output_embeddings().weight, teacher.get_output_embeddings().weight,
                              labels=labels.flatten(), lm_weight=1.0, kd_weight=1.0,
                              temperature=self.distill_cfg.temperature)
        self.val_lm.update(values[0], weight=labels.numel())
        self.val_kd.update(values[1], weight=labels.numel())

    def on_validation_epoch_end(self) -> None:
        loss, kd = self.val_lm.compute(), self.val_kd.compute()
        self.val_lm.reset()
        self.val_kd.reset()
        self.log_dict({"val/loss": loss, "val/ppl": loss.exp(), "val/kd": kd}, prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> dict:
        return configure_adamw(self, self.train_cfg, self.total_steps, self.step_offset)

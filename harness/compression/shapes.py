"""Plan a student without weights: the teacher is built on the meta device and cut by the same surgery
that compresses real models, then counted (slim.harness.models.params convention)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from slim.harness.compression.surgery import drop_layers, resize_experts, shrink_hidden
from slim.harness.config.schema import ModelConfig
from slim.harness.errors import UserError
from slim.harness.models.build import build_model
from slim.harness.models.params import ParamCount, count_parameters
from slim.harness.models.view import view


@dataclass(frozen=True)
class StudentShape:
    """The student as a ModelConfig (exact: dropping the last layers keeps the layer-type pattern) and its size."""

    model: ModelConfig
    params: ParamCount


def _target(value: int, teacher: int, field: str) -> int:
    """`value`, or the teacher's when 0; a one-line UserError naming `field` when out of range."""
    if value == 0:
        return teacher
    if not 1 <= value <= teacher:
        raise UserError(f"{field}: {value} is not allowed; allowed: 0 (keep {teacher}) or 1..{teacher}")
    return value


def student_shape(model_cfg: ModelConfig, num_drop: int = 0, hidden_size: int = 0, num_experts: int = 0,
                  top_k: int = 0) -> StudentShape:
    """The student that drops the last `num_drop` layers (eq 4), keeps `hidden_size` dims, `num_experts`
    experts per MoE layer and routes to `top_k`; 0 keeps the teacher's value (as in CompressConfig).
    Which layers, dims and experts are kept does not change the shape, except that dropping layers
    elsewhere than at the end may change the mix of attention kinds."""
    num_layers = model_cfg.num_hidden_layers
    if not 0 <= num_drop < num_layers:
        raise UserError(f"compress.depth.num_drop: {num_drop} is not allowed; allowed: 0..{num_layers - 1}")
    hidden = _target(hidden_size, model_cfg.hidden_size, "compress.width.hidden_size")
    experts = _target(num_experts, model_cfg.num_experts, "compress.experts.num_experts")
    model = build_model(model_cfg, device="meta", dtype=torch.bfloat16)
    drop_layers(model, range(num_layers - num_drop))
    shrink_hidden(model, range(hidden))
    resize_experts(model, {layer.index: experts for layer in view(model).moe_layers()}, top_k or None)
    student = dataclasses.replace(model_cfg, num_hidden_layers=num_layers - num_drop, hidden_size=hidden,
                                  num_experts=experts, num_experts_per_tok=model.config.num_experts_per_tok)
    return StudentShape(model=student, params=count_parameters(model))

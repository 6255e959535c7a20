"""FLOPs of one distillation step per token, and the time a recipe's token budget takes at a measured rate.

The count (per training token, one multiply-add = 2 FLOPs), from meta-device models (nothing is allocated):

    teacher forward          2 M_t + C_t                     the frozen teacher, backbone and MTP depths
    student forward/backward 3 (2 M_s + C_s)                 backward costs twice the forward (input and weight
                                                             gradients), for the backbone and its MTP depths
where M is the matmul parameters a token passes through: the active parameters (slim.harness.models.params' convention)
minus the input embedding, which is a lookup, plus per MTP depth the block's active parameters, its 2d -> d
projection and the shared LM head once more. C is the token-mixing core that holds no parameters, per layer:

    full attention     4 h d_h (s + 1) / 2    scores and weighted values over the causal context, on average (s + 1) / 2
    Gated DeltaNet     4 H_v d_k d_v          the recurrent state's update and readout (the chunked kernel's constant
                                              factors are left out)

with s the sequence length. MTP depths count only when the loss has an MTP term. Left out as small: norms,
activations, the router's softmax and top-k, the loss's softmaxes. This is the count a tokens/s is turned into model
FLOPs utilisation with (bench/distill_scale.py), and the one `slim plan` turns a measured FLOP rate back into time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slim.harness.config.schema import ModelConfig
from slim.harness.models.build import build_model
from slim.harness.models.mtp import construct_mtp
from slim.harness.models.params import count_parameters
from slim.harness.models.view import ModelView, moe_view, view


@dataclass(frozen=True)
class StepFlops:
    """FLOPs per training token of one distillation step."""

    teacher_forward: float
    student_forward_backward: float

    @property
    def total(self) -> float:
        return self.teacher_forward + self.student_forward_backward


def _core_flops(model_view: ModelView, seq_len: int) -> float:
    """C of the module docstring: the parameter-free token mixing of every layer, per token, forward."""
    config, total = model_view.config, 0.0
    for layer in model_view.layers:
        if layer.kind == "linear_attention":
            total += 4 * config.linear_num_value_heads * config.linear_key_head_dim * config.linear_value_head_dim
        else:
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
            total += 4 * config.num_attention_heads * head_dim * (seq_len + 1) / 2
    return total


def _mtp_matmul_params(model: torch.nn.Module) -> int:
    """Per MTP depth summed: the block's active parameters, the 2d -> d projection and the LM head."""
    head = view(model).lm_head.weight.numel()
    total = 0
    for layer in construct_mtp(model, "meta").layers:
        moe = moe_view(layer.block.mlp)
        routed = moe.gate_up_proj.numel() + moe.down_proj.numel()
        block = sum(p.numel() for p in layer.block.parameters())
        total += block - routed + routed // moe.num_experts * moe.top_k + layer.eh_proj.weight.numel() + head
    return total


def forward_flops(model_cfg: ModelConfig, seq_len: int, with_mtp: bool) -> float:
    """2 M + C of the module docstring for one model, per token, forward."""
    model = build_model(model_cfg, device="meta", dtype=torch.bfloat16)
    count = count_parameters(model)
    matmul = count.active - count.embedding
    if with_mtp and model_cfg.mtp_num_layers:
        matmul += _mtp_matmul_params(model)
    return 2 * matmul + _core_flops(view(model), seq_len)


def step_flops(teacher: ModelConfig, student: ModelConfig, seq_len: int, with_mtp: bool) -> StepFlops:
    """The per-token FLOPs of distilling `student` from `teacher` on sequences of `seq_len` tokens."""
    return StepFlops(teacher_forward=forward_flops(teacher, seq_len, with_mtp),
                     student_forward_backward=3 * forward_flops(student, seq_len, with_mtp))


def format_duration(seconds: float) -> str:
    """'3.2 days', '5.1 hours', '1.4 years': the largest unit that keeps the number above 1."""
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} seconds"

"""Total and active parameter counts of a MoE causal LM; works on meta-device models.

Convention (the one that reproduces SlimQwen's 79.7B total / 3.9B active for Qwen3-Next-80B-A3B):
every parameter of the transformers model counts, the input embedding and the untied LM head
included (each once; a tied head counts once); a token activates everything except the routed
experts, plus top_k / E of each MoE layer's routed experts; the shared expert is always active.
The MTP module is not counted: it lives outside the transformers model (Qwen3-Next's own MTP
layer would add about 1.6B to the total).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from slim.harness.models.view import view


@dataclass(frozen=True)
class ParamCount:
    """Parameter counts; `active` is what one token's forward pass touches."""

    total: int
    active: int
    embedding: int
    lm_head: int  # 0 when tied to the embedding
    experts: int  # routed experts, all layers
    shared_experts: int  # shared experts and their gates, all layers
    routers: int


def _numel(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def count_parameters(model: nn.Module) -> ParamCount:
    """Count `model` by the convention in this module's docstring."""
    model_view = view(model)
    moes = [layer.moe for layer in model_view.moe_layers()]
    experts = sum(moe.gate_up_proj.numel() + moe.down_proj.numel() for moe in moes)
    active_experts = sum(
        (moe.gate_up_proj.numel() + moe.down_proj.numel()) // moe.num_experts * moe.top_k for moe in moes
    )
    total = sum(p.numel() for p in model.parameters())
    embedding = model_view.embed_tokens.weight
    head = model_view.lm_head.weight
    return ParamCount(
        total=total,
        active=total - experts + active_experts,
        embedding=embedding.numel(),
        lm_head=0 if head is embedding else head.numel(),
        experts=experts,
        shared_experts=sum(_numel(moe.shared_expert) + _numel(moe.shared_expert_gate) for moe in moes),
        routers=sum(moe.router.numel() for moe in moes),
    )


def format_count(n: int) -> str:
    """Human-readable count with one decimal: 79674391296 -> '79.7B', 9600000 -> '9.6M'."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return str(n)

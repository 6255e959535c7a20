"""Expert surgery (SlimQwen eqs 6-8): give each MoE layer new experts from an ExpertPlan, or just new counts.

Layers may keep different numbers of experts (global budget). transformers' config has one
`num_experts`, so the per-layer counts ride along as `config.num_experts_per_layer` (one entry per
decoder layer, 0 for dense layers; absent when all MoE layers agree) with `config.num_experts` their
maximum; `slim.harness.models.io.load_pretrained` rebuilds those shapes, and such a student is saved as a portable
architecture of its own (harness/compression/modeling_slim.py, slim.harness.models.portable). Tensors are swapped
through `.data`, so Parameter objects (and views, ties) survive; only sizes change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from transformers import PreTrainedModel

from slim.harness.compression.modeling_slim import set_expert_count
from slim.harness.compression.plan import ExpertPlan, apply_plan, combine_experts
from slim.harness.errors import UserError
from slim.harness.models.families import model_families
from slim.harness.models.view import MoEView, view


def _moe_layers(model: PreTrainedModel, layers: Mapping[int, object]) -> dict[int, MoEView]:
    """layer index -> MoEView of every MoE layer; `layers` (from code, not users) must name MoE layers only."""
    moes = {layer.index: layer.moe for layer in view(model).moe_layers()}
    unknown = sorted(set(layers) - set(moes))
    if unknown:
        raise ValueError(f"layers {unknown} are not MoE layers; MoE layers: {sorted(moes)}")
    return moes


def _check_top_k(model: PreTrainedModel, moes: Mapping[int, MoEView], counts: Mapping[int, int],
                 top_k: int | None) -> None:
    """The student's top-k must fit the MoE layer that keeps the fewest experts, and the family's routing must
    take the counts."""
    kept = [counts.get(index, moe.num_experts) for index, moe in moes.items()]
    k = model.config.num_experts_per_tok if top_k is None else top_k
    if not 1 <= k <= min(kept):
        raise UserError(f"compress.experts.top_k: {k} is not allowed; allowed: 1..{min(kept)} "
                        "(the fewest experts any MoE layer keeps)")
    family = model_families.get(model.config.model_type, "model.config.model_type")
    if family.check_experts is not None:
        family.check_experts(model.config, kept, k)


def set_experts(moe: MoEView, router: torch.Tensor, gate_up_proj: torch.Tensor, down_proj: torch.Tensor,
                router_vectors: Sequence[torch.Tensor] = (), expert_biases: Sequence[torch.Tensor] = ()) -> None:
    """Install router [E', d], gate_up_proj [E', 2I, d], down_proj [E', d, I], the block's router biases [E'] and
    expert biases [E', ...] (in `router_vectors` / `expert_biases` order), and the modules' expert counts."""
    moe.router.data, moe.gate_up_proj.data, moe.down_proj.data = router, gate_up_proj, down_proj
    for tensor, new in zip(moe.router_vectors, router_vectors, strict=True):
        tensor.data = new
    for tensor, new in zip(moe.expert_biases, expert_biases, strict=True):
        tensor.data = new
    moe.router_module.num_experts = moe.module.experts.num_experts = router.shape[0]


def apply_to_moe(moe: MoEView, plan: ExpertPlan) -> None:
    """Give `moe` the experts of `plan`: router rows and router biases of the kept ids, expert weights and biases
    combined by the plan's groups."""
    kept = plan.kept_ids()
    set_experts(moe, *apply_plan(plan, moe.router, moe.gate_up_proj, moe.down_proj),
                [bias[kept] for bias in moe.router_vectors],
                [combine_experts(bias, plan) for bias in moe.expert_biases])


def _set_top_k(model: PreTrainedModel, moes: Mapping[int, MoEView], top_k: int | None) -> None:
    if top_k is None:
        return
    for moe in moes.values():
        moe.router_module.top_k = top_k
    model.config.num_experts_per_tok = top_k
    if hasattr(model, "num_experts_per_tok"):  # the CausalLM copies it for transformers' aux loss
        model.num_experts_per_tok = top_k


def record_expert_counts(model: PreTrainedModel) -> None:
    """Write the model's actual expert counts into its config (see the module docstring)."""
    counts = [layer.moe.num_experts if layer.moe is not None else 0 for layer in view(model).layers]
    moe_counts = {count for count in counts if count > 0}
    if not moe_counts:
        return
    config = model.config
    set_expert_count(config, max(moe_counts))
    if len(moe_counts) > 1:
        config.num_experts_per_layer = counts
    elif hasattr(config, "num_experts_per_layer"):
        del config.num_experts_per_layer
    if hasattr(model, "num_experts"):
        model.num_experts = config.num_experts


def reduce_experts(model: PreTrainedModel, plans: Mapping[int, ExpertPlan], top_k: int | None = None) -> None:
    """Apply `plans` (decoder layer index -> plan; unlisted MoE layers stay) in place and set top-k
    (None keeps the current one). Router rows follow their experts (plan.apply_plan)."""
    moes = _moe_layers(model, plans)
    _check_top_k(model, moes, {index: plan.num_kept for index, plan in plans.items()}, top_k)
    for index, plan in plans.items():
        apply_to_moe(moes[index], plan)
    _set_top_k(model, moes, top_k)
    record_expert_counts(model)


def resize_experts(model: PreTrainedModel, counts: Mapping[int, int], top_k: int | None = None) -> None:
    """Give the MoE layers in `counts` that many *uninitialized* experts (same dtype and device) and set
    top-k: the shapes of a reduced model without its weights, for loading a checkpoint or planning on meta."""
    moes = _moe_layers(model, counts)
    _check_top_k(model, moes, counts, top_k)
    for index, count in counts.items():
        moe = moes[index]

        def empty(tensor: torch.Tensor, count: int = count) -> torch.Tensor:
            return tensor.new_empty(count, *tensor.shape[1:])

        set_experts(moe, *map(empty, (moe.router, moe.gate_up_proj, moe.down_proj)),
                    list(map(empty, moe.router_vectors)), list(map(empty, moe.expert_biases)))
    _set_top_k(model, moes, top_k)
    record_expert_counts(model)

"""The uniform, family-independent view of a MoE causal LM, so methods never touch family names.

A view holds references, not copies: its tensors are the model's own Parameter objects, so reading
them costs nothing and in-place edits reach the model. It is a snapshot of the module tree: surgery
that replaces modules or Parameters must build a new view afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from slim.harness.models.families import model_families
from slim.kernels.grouped_experts import ExpertOutputs

Routing = Callable[["MoEView", torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
ExpertFn = Callable[["MoEView", int, torch.Tensor], torch.Tensor]


def own_router(moe: "MoEView", x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Routing through the block's own router module, for families whose router is not softmax top-k: the
    statistics then see exactly the choice the model makes."""
    return moe.router_module(x)


@dataclass
class MoEView:
    """One sparse MoE block: its router module and weight [E, d], packed experts gate_up_proj [E, 2I, d] (gate rows,
    then up rows) and down_proj [E, d, I], and an optional (sigmoid-gated) shared expert that every token uses.

    A family whose block differs says how: `routing` (x [T, d] -> logits, weights, ids as the model routes),
    `expert_fn` (one expert's unweighted output, for experts that are not bias-free SwiGLU in the layout above),
    `expert_biases` (per-expert tensors [E, ...] a merge combines with the weights), `router_bias` [E] (added to the
    logits, gpt-oss's) and `selection_bias` [E] (added for the choice only, DeepSeek-V3's e_score_correction_bias);
    both router biases follow the router rows through every cut."""

    module: nn.Module
    router_module: nn.Module
    router: nn.Parameter
    gate_up_proj: nn.Parameter
    down_proj: nn.Parameter
    act_fn: Callable[[torch.Tensor], torch.Tensor]
    top_k: int
    norm_topk_prob: bool
    shared_expert: nn.Module | None = None
    shared_expert_gate: nn.Linear | None = None
    selection_bias: torch.Tensor | None = None
    router_bias: torch.Tensor | None = None
    expert_biases: tuple[nn.Parameter, ...] = ()
    routing: Routing | None = None
    expert_fn: ExpertFn | None = None
    returns_weights: bool = False  # the block returns (output, top-k weights), as gpt-oss's does

    @property
    def num_experts(self) -> int:
        return self.router.shape[0]

    @property
    def router_vectors(self) -> list[torch.Tensor]:
        """The per-expert router biases [E] that follow the router rows (logit bias, then selection bias)."""
        return [bias for bias in (self.router_bias, self.selection_bias) if bias is not None]

    @property
    def intermediate_size(self) -> int:
        return self.gate_up_proj[0].numel() // (2 * self.router.shape[1])

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [T, d] -> (router_logits [T, E], topk_weights [T, k], topk_ids [T, k]) as the family routes: its
        `routing`, else softmax over all E in fp32, top-k, renormalized over the k when `norm_topk_prob`."""
        if self.routing is not None:
            return self.routing(self, x)
        logits = F.linear(x, self.router)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        weights, ids = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, weights.to(logits.dtype), ids

    def expert_forward(self, expert: int, x: torch.Tensor) -> torch.Tensor:
        """Unweighted output [T, d] of routed expert `expert` on x [T, d]: the family's `expert_fn`, else SwiGLU."""
        if self.expert_fn is not None:
            return self.expert_fn(self, expert, x)
        gate, up = F.linear(x, self.gate_up_proj[expert]).chunk(2, dim=-1)
        return F.linear(self.act_fn(gate) * up, self.down_proj[expert])

    def sorted_expert_outputs(self, x_sorted: torch.Tensor, counts: torch.Tensor,
                              kernel: ExpertOutputs) -> torch.Tensor:
        """Unweighted outputs [n, d] of tokens x_sorted [n, d] sorted by expert, counts [E] of each: `kernel`
        (slim.kernels.grouped_experts) on SwiGLU experts, else the family's `expert_fn` expert by expert."""
        if self.expert_fn is None:
            return kernel(self.gate_up_proj, self.down_proj, self.act_fn, x_sorted, counts)
        chunks = x_sorted.split(counts.tolist())
        return torch.cat([self.expert_forward(expert, chunk) for expert, chunk in enumerate(chunks)])

    def shared_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gated shared-expert output [T, d]; zeros for families without one."""
        if self.shared_expert is None:
            return torch.zeros_like(x)
        out = self.shared_expert(x)
        if self.shared_expert_gate is not None:
            out = torch.sigmoid(self.shared_expert_gate(x)) * out
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reference block output, same shape as x [..., d]: route, loop over hit experts, add shared."""
        flat = x.reshape(-1, x.shape[-1])  # [T, d]
        _, weights, ids = self.route(flat)
        out = self.shared_forward(flat)
        for expert in ids.unique().tolist():
            tokens, slots = torch.where(ids == expert)
            contribution = self.expert_forward(expert, flat[tokens]) * weights[tokens, slots, None]
            out = out.index_add(0, tokens, contribution.to(out.dtype))
        return out.reshape(x.shape)


@dataclass
class LayerView:
    """One decoder layer: token mixer (Gated DeltaNet or attention), its two RMSNorms and the MoE block."""

    index: int
    name: str  # module path in model.named_modules(), e.g. "model.layers.3"
    kind: str  # "linear_attention" | "full_attention"
    module: nn.Module
    mixer: nn.Module
    input_norm: nn.Module
    post_attention_norm: nn.Module
    moe: MoEView | None  # None for a dense-MLP layer
    norm_types: tuple[type[nn.Module], ...]

    def norms(self) -> list[tuple[str, nn.Module]]:
        """Every RMSNorm in the layer with its full name, incl. q/k norms and the gated DeltaNet norm."""
        return [
            (f"{self.name}.{name}", module)
            for name, module in self.module.named_modules()
            if isinstance(module, self.norm_types)
        ]


@dataclass
class ModelView:
    """The whole causal LM: embeddings, layers, final norm, LM head."""

    model: PreTrainedModel
    family: str
    config: PretrainedConfig
    embed_tokens: nn.Embedding
    layers: list[LayerView]
    final_norm: nn.Module
    lm_head: nn.Linear

    def moe_layers(self) -> list[LayerView]:
        return [layer for layer in self.layers if layer.moe is not None]

    def all_norms(self) -> list[tuple[str, nn.Module]]:
        """Every RMSNorm of the model in forward order, final norm last."""
        return [norm for layer in self.layers for norm in layer.norms()] + [("model.norm", self.final_norm)]


def moe_view(block: nn.Module, shared_expert: nn.Module | None = None, shared_gate: nn.Linear | None = None,
             routing: Routing | None = None) -> MoEView:
    """View of a transformers 5 sparse block (`gate`: TopKRouter, `experts`: packed); the names are the
    same in every family. A router without `norm_topk_prob` (Mixtral's) always renormalizes its top-k weights;
    one with an `e_score_correction_bias` gives the view its selection bias."""
    return MoEView(
        module=block,
        router_module=block.gate,
        router=block.gate.weight,
        gate_up_proj=block.experts.gate_up_proj,
        down_proj=block.experts.down_proj,
        act_fn=block.experts.act_fn,
        top_k=block.gate.top_k,
        norm_topk_prob=getattr(block.gate, "norm_topk_prob", True),
        shared_expert=shared_expert,
        shared_expert_gate=shared_gate,
        selection_bias=getattr(block.gate, "e_score_correction_bias", None),
        routing=routing,
    )


def attention_layer_view(index: int, layer: nn.Module, moe: MoEView | None,
                         norm_types: tuple[type[nn.Module], ...]) -> LayerView:
    """LayerView of a plain full-attention decoder layer (`self_attn`, `input_layernorm`,
    `post_attention_layernorm`), as in qwen3_moe, olmoe and mixtral."""
    return LayerView(
        index=index,
        name=f"model.layers.{index}",
        kind="full_attention",
        module=layer,
        mixer=layer.self_attn,
        input_norm=layer.input_layernorm,
        post_attention_norm=layer.post_attention_layernorm,
        moe=moe,
        norm_types=norm_types,
    )


def decoder_view(model: PreTrainedModel, layer_view: Callable[[int, nn.Module], LayerView]) -> ModelView:
    """ModelView of the `model.model.{embed_tokens, layers, norm}` + `lm_head` skeleton all families share."""
    return ModelView(
        model=model,
        family=model.config.model_type,
        config=model.config,
        embed_tokens=model.model.embed_tokens,
        layers=[layer_view(index, layer) for index, layer in enumerate(model.model.layers)],
        final_norm=model.model.norm,
        lm_head=model.lm_head,
    )


def view(model: PreTrainedModel) -> ModelView:
    """The uniform view of `model`, through the adapter registered for its `config.model_type`."""
    return model_families.get(model.config.model_type, "model.config.model_type").view(model)

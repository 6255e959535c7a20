"""Multi-token prediction module (SlimQwen eq 9, DeepSeek-V3 style), owned by the harness: HF has none.

Depth k = 1..D at position i = 0..T-k-1:
    h'_i = M_k [RMSNorm(h_i^{k-1}); RMSNorm(Emb(t_{i+k}))]   (eh_proj, hidden block first)
    h^k  = TRM_k(h')                                          (causal over positions 0..T-k-1)
    logits_i^k = OutHead(RMSNorm(h_i^k))                      predicts t_{i+k+1}
h^0 is the backbone's final hidden state (the input of its LM head). Position i at depth k therefore
sees t_0..t_{i+k}. Emb and OutHead are the backbone's, passed in at forward: the module owns no copy
and saves none. TRM_k is a full-attention decoder layer of the backbone's own family (Qwen3-Next:
gated attention + MoE with shared expert, like the released Qwen3-Next MTP layer).
D comes from config.json: `mtp_num_hidden_layers` (the released Qwen3-Next key, which the harness writes), or
`mtp_num_layers` (the harness's own key before, still read). Weights on disk: slim.harness.models.mtp_io.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.masking_utils import create_causal_mask

from slim.harness.compression.width import hidden_dims
from slim.harness.models.view import view

PREFIX = "mtp."
DEPTH_KEY = "mtp_num_hidden_layers"  # released Qwen3-Next config key
LEGACY_DEPTH_KEY = "mtp_num_layers"  # the harness's own key in older checkpoints
# Width dims of each depth's own parameters; eh_proj [d, 2d] has the width in both dims (2 blocks in dim 1).
OWN_HIDDEN_DIMS: dict[str, tuple[int, ...]] = {
    "hnorm.weight": (0,),
    "enorm.weight": (0,),
    "eh_proj.weight": (0, 1),
    "norm.weight": (0,),
}

RotaryEmbedding = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def block_config(config: PretrainedConfig) -> PretrainedConfig:
    """A copy of the backbone config describing one full-attention MoE decoder layer (index 0)."""
    block = copy.deepcopy(config)
    block.num_hidden_layers = 1
    for field, value in (("layer_types", ["full_attention"]), ("mlp_only_layers", []), ("decoder_sparse_step", 1),
                         ("first_k_dense_replace", 0)):
        if hasattr(block, field):
            setattr(block, field, value)
    return block


class MTPLayer(nn.Module):
    """One prediction depth: input norms, the 2d -> d projection M_k, a decoder block and an output norm."""

    def __init__(self, config: PretrainedConfig, layer_class: type[nn.Module], norm_class: type[nn.Module]) -> None:
        super().__init__()
        width, eps = config.hidden_size, config.rms_norm_eps
        self.hnorm = norm_class(width, eps=eps)
        self.enorm = norm_class(width, eps=eps)
        self.eh_proj = nn.Linear(2 * width, width, bias=False)
        self.block = layer_class(config, 0)
        self.norm = norm_class(width, eps=eps)

    def forward(
        self,
        hidden: torch.Tensor,
        embeds: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """h^{k-1}, Emb(t_{i+k}) [B, T-k, d] -> h^k [B, T-k, d], before the output norm."""
        combined = self.eh_proj(torch.cat([self.hnorm(hidden), self.enorm(embeds)], dim=-1))  # [B, T-k, d]
        return self.block(combined, position_embeddings=position_embeddings, attention_mask=attention_mask)


class MTPModule(nn.Module):
    """D prediction depths (D = `config_mtp_depth(config)`) on top of a backbone's final hidden states."""

    def __init__(self, config: PretrainedConfig, layer_class: type[nn.Module], norm_class: type[nn.Module]) -> None:
        super().__init__()
        self.config = block_config(config)
        self.layers = nn.ModuleList(
            MTPLayer(self.config, layer_class, norm_class) for _ in range(config_mtp_depth(config))
        )

    def forward(
        self,
        hidden: torch.Tensor,
        input_ids: torch.Tensor,
        embed: nn.Embedding,
        head: nn.Linear,
        rotary_emb: RotaryEmbedding,
    ) -> list[torch.Tensor]:
        """hidden [B, T, d] (h^0), input_ids [B, T] -> D logits tensors, depth k [B, T-k, V]."""
        seq_len = input_ids.shape[1]
        if seq_len <= len(self.layers):
            raise ValueError(f"MTP needs sequences longer than its depth {len(self.layers)}, got length {seq_len}")
        position_ids = torch.arange(seq_len, device=input_ids.device).unsqueeze(0)  # [1, T]
        cos, sin = rotary_emb(hidden, position_ids)
        logits = []
        for depth, layer in enumerate(self.layers, start=1):
            length = seq_len - depth
            embeds = embed(input_ids[:, depth:])  # Emb(t_{i+k}) for i = 0..T-k-1
            # config, inputs_embeds, attention_mask, cache: positional, as transformers renamed the cache
            # argument (past_key_values up to 5.2x, cache in 5.25)
            mask = create_causal_mask(self.config, embeds, None, None, position_ids=position_ids[:, :length])
            hidden = layer(hidden[:, :length], embeds, (cos[:, :length], sin[:, :length]), mask)
            logits.append(head(layer.norm(hidden)))
        return logits


def run_mtp(
    model: PreTrainedModel, mtp: MTPModule, hidden: torch.Tensor, input_ids: torch.Tensor
) -> list[torch.Tensor]:
    """MTP logits of `model` from its final hidden states, with its embedding, LM head and rotary table."""
    model_view = view(model)
    return mtp(hidden, input_ids, model_view.embed_tokens, model_view.lm_head, model.model.rotary_emb)


def construct_mtp(model: PreTrainedModel, device: torch.device | str) -> MTPModule:
    """An uninitialized MTP module for `model` built on `device` ("meta" allocates nothing)."""
    model_view = view(model)
    layer_class, norm_class = type(model_view.layers[0].module), type(model_view.final_norm)
    with torch.device(device):
        return MTPModule(model.config, layer_class, norm_class)


def config_mtp_depth(config: PretrainedConfig) -> int:
    """D from a config: `mtp_num_hidden_layers`, else the older `mtp_num_layers`; 0 when it has neither."""
    depth = getattr(config, DEPTH_KEY, None)
    return getattr(config, LEGACY_DEPTH_KEY, 0) if depth is None else depth


def mtp_depth(model: PreTrainedModel) -> int:
    """D from the model config; 0 for checkpoints that never had an MTP module."""
    return config_mtp_depth(model.config)


def build_mtp(model: PreTrainedModel, seed: int | None = None) -> MTPModule | None:
    """A freshly initialized MTP module for `model` (the family's own init), on its device and dtype; None when the
    config has no MTP depth. With `seed`, drawn on the CPU from that seed alone (the global RNG untouched), so a
    student's fresh MTP module is the same whatever the device, process count or sharding; without, from the global
    torch RNG on the model's device."""
    if mtp_depth(model) == 0:
        return None
    embed_weight = model.get_input_embeddings().weight
    if seed is None:
        mtp = construct_mtp(model, embed_weight.device)
        mtp.apply(model._init_weights)
        return mtp.to(embed_weight.dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mtp = construct_mtp(model, "cpu")
        mtp.apply(model._init_weights)
    return mtp.to(embed_weight.device, embed_weight.dtype)


def mtp_hidden_params(mtp: MTPModule) -> list[tuple[str, torch.Tensor, int]]:
    """(name, parameter, dim) for every width-sized dim of the MTP module, for `shrink_hidden(extra=...)`.

    Each depth's norms and eh_proj are listed here (eh_proj twice: output dim and its [h; e] input);
    the decoder block's dims come from the family's table, as for a backbone layer.
    """
    family_dims = hidden_dims(mtp.config.model_type)
    entries = []
    for name, param in mtp.named_parameters():
        _, _, local = name.split(".", 2)  # "layers.<k>.<local>"
        if local.startswith("block."):
            block_dim = family_dims.get(f"model.layers.*.{local.removeprefix('block.')}")
            dims: tuple[int, ...] = () if block_dim is None else (block_dim,)
        else:
            dims = OWN_HIDDEN_DIMS[local]
        entries.extend((PREFIX + name, param, dim) for dim in dims)
    return entries

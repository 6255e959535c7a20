"""Calibration instrumentation shared by the full pass (`collect`) and the layer-by-layer pass (`layerwise`).

`StatsCollector.installed()` swaps every MoE block's forward for `MoEStatsForward` and hooks the
hidden-size RMSNorms and the decoder layers; whatever then runs through those modules, a whole-model
forward or one block at a time, adds to the same sums. Leaving the context restores the model exactly,
also when the pass raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from slim.harness.calibration.moe_stats import MoEStatsForward
from slim.harness.calibration.stats import CalibrationStats, DepthStats
from slim.harness.calibration.sums import RunningSums
from slim.harness.models.view import ModelView, view
from slim.kernels.grouped_experts import ExpertOutputs, expert_outputs_grouped

DEPTH_SUMS = ("token_cos_sum", "pooled_cos_sum")


def hidden_norms(model_view: ModelView) -> list[tuple[str, nn.Module]]:
    """The RMSNorms that write the residual-stream width (eq 5): each layer's input and post-attention
    norm, then the final norm; q/k norms and the gated DeltaNet norm normalize other widths."""
    names = {id(module): name for name, module in model_view.model.named_modules()}
    modules = [norm for layer in model_view.layers for norm in (layer.input_norm, layer.post_attention_norm)]
    return [(names[id(module)], module) for module in (*modules, model_view.final_norm)]


def layer_output(output: Any) -> torch.Tensor:
    """A decoder layer's hidden states, whether it returns a tensor or a tuple starting with one."""
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def replaced_forward(module: nn.Module, forward: Any) -> Iterator[None]:
    """`module.forward` is `forward` inside the context and exactly what it was before afterwards."""
    had_own = "forward" in vars(module)
    previous = vars(module).get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if had_own:
            module.forward = previous
        else:
            del module.forward


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the context, the previous train/eval mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class StatsCollector:
    """Accumulates every `CalibrationStats` sum of `model` while installed; `expert_outputs` runs the routed
    experts (`slim.kernels.grouped_experts`)."""

    def __init__(self, model: PreTrainedModel, probe_tokens: int,
                 expert_outputs: ExpertOutputs = expert_outputs_grouped) -> None:
        self.view = view(model)
        self.num_layers = len(self.view.layers)
        self.moe = {layer.index: MoEStatsForward(layer.moe, probe_tokens, expert_outputs)
                    for layer in self.view.moe_layers()}
        self.norms = hidden_norms(self.view)
        hidden_size = self.view.config.hidden_size
        self.norm_sums = RunningSums({name: (hidden_size,) for name, _ in self.norms})
        self.norm_tokens = dict.fromkeys(self.norm_sums.values, 0)
        self.depth_sums = RunningSums({f"{kind}.{index}": () for kind in DEPTH_SUMS
                                       for index in range(self.num_layers)})
        self.depth_tokens = [0] * self.num_layers
        self.depth_sequences = [0] * self.num_layers

    @contextmanager
    def installed(self) -> Iterator[StatsCollector]:
        """Instrument the model (eval mode); everything is undone on exit, also on an exception."""
        with ExitStack() as stack:
            stack.enter_context(evaluating(self.view.model))
            for index, moe_forward in self.moe.items():
                stack.enter_context(replaced_forward(self.view.layers[index].moe.module, moe_forward))
            for name, module in self.norms:
                stack.callback(module.register_forward_hook(self._norm_hook(name)).remove)
            for layer in self.view.layers:
                hook = layer.module.register_forward_hook(self._depth_hook(layer.index), with_kwargs=True)
                stack.callback(hook.remove)
            yield self

    def _norm_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            flat = output.reshape(-1, output.shape[-1])  # [T, d]
            self.norm_sums.add(name, flat.abs().sum(dim=0, dtype=torch.float64))
            self.norm_tokens[name] += flat.shape[0]

        return hook

    def _depth_hook(self, index: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            h_in = (args[0] if args else kwargs["hidden_states"]).float()  # [B, S, d]
            h_out = layer_output(output).float()
            token_cos = F.cosine_similarity(h_in, h_out, dim=-1)  # [B, S]
            pooled_cos = F.cosine_similarity(h_in.mean(dim=1), h_out.mean(dim=1), dim=-1)  # [B]
            self.depth_sums.add(f"token_cos_sum.{index}", token_cos.sum(dtype=torch.float64))
            self.depth_sums.add(f"pooled_cos_sum.{index}", pooled_cos.sum(dtype=torch.float64))
            self.depth_tokens[index] += h_in.shape[0] * h_in.shape[1]
            self.depth_sequences[index] += h_in.shape[0]

        return hook

    def stats(self, fingerprint: str) -> CalibrationStats:
        """The accumulated sums, on CPU."""
        assert len(set(self.depth_tokens)) == 1 and len(set(self.depth_sequences)) == 1, (
            f"layers saw different data: tokens {self.depth_tokens}, sequences {self.depth_sequences}")
        sums = self.depth_sums.cpu()
        per_layer = {kind: torch.stack([sums[f"{kind}.{index}"] for index in range(self.num_layers)])
                     for kind in DEPTH_SUMS}  # [L] each
        depth = DepthStats(num_tokens=self.depth_tokens[0], num_sequences=self.depth_sequences[0], **per_layer)
        return CalibrationStats(
            fingerprint=fingerprint,
            num_layers=self.num_layers,
            moe={index: moe_forward.stats() for index, moe_forward in self.moe.items()},
            norm_abs_sum=self.norm_sums.cpu(),
            norm_tokens=dict(self.norm_tokens),
            depth=depth,
        )

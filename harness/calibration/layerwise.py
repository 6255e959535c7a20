"""`calibrate_layerwise`: the same statistics as `calibrate`, with one decoder block in device memory at a time.

All batches are embedded first; then each block in turn is moved to `cfg.device`, run over every batch
and moved back, its outputs becoming the next block's inputs; the final norm runs last. Peak memory:
on the device one block plus one batch's activations; on the host the hidden states of the whole
calibration set, num_samples x seq_len x hidden_size values in the model dtype (1024 x 4096 x 2048 in
bf16 is 16 GiB), plus wherever the other blocks live.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from tqdm import tqdm
from transformers import PreTrainedModel

from slim.harness.calibration.block_inputs import LayerCall, decoder_layer_calls
from slim.harness.calibration.collect import check_calibration_config
from slim.harness.calibration.fingerprint import model_fingerprint
from slim.harness.calibration.instrument import StatsCollector, layer_output
from slim.harness.calibration.stats import CalibrationStats
from slim.harness.config.schema import CalibrationConfig


def module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


@contextmanager
def placed_on(module: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """`module` moved to `device` inside the context, back where it was afterwards."""
    home = module_device(module)
    module.to(device)
    try:
        yield module
    finally:
        module.to(home)


@torch.no_grad()
def layer_calls_by_shape(model: PreTrainedModel, hidden: list[torch.Tensor],
                         device: torch.device) -> dict[torch.Size, list[LayerCall]]:
    """Each decoder layer's non-hidden arguments on `device`, once per distinct batch shape: they depend
    on the shape only (unpadded batches), not on the token values."""
    shapes = {hidden_states.shape: hidden_states.dtype for hidden_states in hidden}
    return {shape: decoder_layer_calls(model, inputs_embeds=torch.zeros(shape, dtype=dtype, device=device))
            for shape, dtype in shapes.items()}


@torch.no_grad()
def embed(model: PreTrainedModel, batches: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """First decoder layer's input [B, S, d] of every batch, on CPU."""
    device = model.get_input_embeddings().weight.device
    return [decoder_layer_calls(model, input_ids=ids.to(device))[0].hidden_states.cpu() for ids in batches]


@torch.no_grad()
def calibrate_layerwise(model: PreTrainedModel, batches: Iterable[torch.Tensor],
                        cfg: CalibrationConfig) -> CalibrationStats:
    """Statistics equal to `calibrate(model, batches, cfg)`, one decoder block on `cfg.device` at a time."""
    check_calibration_config(cfg)
    device = torch.device(cfg.device)
    fingerprint = model_fingerprint(model)
    hidden = embed(model, tqdm(batches, desc="calibrate: embed", unit="batch", leave=False))
    calls = layer_calls_by_shape(model, hidden, device)  # before the hooks go in: no layer runs here
    layers = model.model.layers
    collector = StatsCollector(model, cfg.probe_tokens)
    with collector.installed(), tqdm(total=len(layers) * len(hidden), desc="calibrate: blocks", leave=False) as bar:
        for index, layer in enumerate(layers):
            with placed_on(layer, device):
                for batch, hidden_states in enumerate(hidden):
                    call = calls[hidden_states.shape][index]
                    output = layer(hidden_states.to(device), *call.args, **call.kwargs)
                    hidden[batch] = layer_output(output).cpu()
                    bar.update()
        with placed_on(model.model.norm, device) as final_norm:
            for hidden_states in hidden:
                final_norm(hidden_states.to(device))
    return collector.stats(fingerprint)

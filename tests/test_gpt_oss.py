"""gpt-oss experts under cuts (issue 26): a merge combines the expert biases with the weights by the plan's weights, the
router bias follows the router rows it keeps, and the view computes each expert and the block as the model does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from slim.harness.compression.experts import reduce_experts
from slim.harness.compression.plan import ExpertGroup, ExpertPlan
from slim.harness.config.load import load_config
from slim.harness.errors import UserError
from slim.harness.models.build import build_model
from slim.harness.models.io import save_pretrained
from slim.harness.models.view import view
from slim.methods.zeda.inject import check_injection
from slim.methods.zeda.options import ZedaConfig
from tests.conftest import TINY_OVERRIDES
from tests.tiny_families import FAMILY_SHAPE, SHAPE

IDS = torch.randint(0, 1024, (2, 24), generator=torch.Generator().manual_seed(0))
PLAN = ExpertPlan([ExpertGroup((0, 1), (0.25, 0.75), router_row=1), ExpertGroup.single(2), ExpertGroup.single(5),
                   ExpertGroup((3, 4, 6, 7), (0.25,) * 4, router_row=6)], 8)


def _model() -> torch.nn.Module:
    """A tiny gpt-oss whose expert biases are far from zero (its init zeroes them), with a sliding window shorter
    than the test's sequences."""
    overrides = [*TINY_OVERRIDES, *SHAPE, "model.family=gpt_oss", *FAMILY_SHAPE["gpt_oss"]]
    model = build_model(load_config(overrides).model)
    model.config.sliding_window = 8
    for layer in model.model.layers:
        layer.self_attn.sliding_window = 8 if layer.self_attn.sliding_window else None
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in view(model).moe_layers():
            for bias in layer.moe.expert_biases:
                bias.copy_(torch.randn(bias.shape, generator=generator) * 0.1)
    return model.eval()


def _combined(tensor: torch.Tensor) -> torch.Tensor:
    """The plan's groups computed by hand, in float64 as the plan combines."""
    rows = [0.25 * tensor[0].double() + 0.75 * tensor[1].double(), tensor[2].double(), tensor[5].double(),
            sum(0.25 * tensor[e].double() for e in (3, 4, 6, 7))]
    return torch.stack(rows).to(tensor.dtype)


def test_the_view_computes_every_expert_and_the_block_as_the_model_does():
    model = _model()
    x = torch.randn(7, model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    for layer in view(model).moe_layers():
        output, _ = layer.module.mlp(x[None])
        assert torch.allclose(layer.moe.forward(x), output[0], atol=1e-6)


def test_a_merge_combines_expert_biases_and_keeps_the_router_rows_and_bias(tmp_path: Path):
    model = _model()
    layers = view(model).moe_layers()
    before = {layer.index: [t.detach().clone() for t in (layer.moe.router, layer.moe.router_bias,
                                                         layer.moe.gate_up_proj, layer.moe.down_proj,
                                                         *layer.moe.expert_biases)] for layer in layers}
    reduce_experts(model, {layer.index: PLAN for layer in layers})
    for layer in view(model).moe_layers():
        router, router_bias, gate_up, down, gate_up_bias, down_bias = before[layer.index]
        moe = layer.moe
        assert torch.equal(moe.router, router[[1, 2, 5, 6]]) and torch.equal(moe.router_bias, router_bias[[1, 2, 5, 6]])
        assert torch.equal(moe.gate_up_proj, _combined(gate_up)) and torch.equal(moe.down_proj, _combined(down))
        assert torch.equal(moe.expert_biases[0], _combined(gate_up_bias))
        assert torch.equal(moe.expert_biases[1], _combined(down_bias))
        assert moe.router_module.num_experts == moe.module.experts.num_experts == 4
    save_pretrained(model, tmp_path / "student")
    assert json.loads((tmp_path / "student" / "config.json").read_text())["num_local_experts"] == 4
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "student").eval()
    for tensor in plain.parameters():  # out of the memory map, as the harness's copy is
        tensor.data = tensor.data.clone()
    with torch.no_grad():
        assert torch.equal(plain(input_ids=IDS, use_cache=False).logits, model(input_ids=IDS, use_cache=False).logits)


def test_zeda_refuses_a_router_that_is_not_a_plain_softmax():
    """ZEDA's zero experts extend a softmax over all experts; gpt-oss's router has a bias and a softmax over the top-k
    only, so the adaptation is refused in one line before any work."""
    with pytest.raises(UserError) as error:
        check_injection(ZedaConfig(), _model().config)
    assert str(error.value).startswith("zeda.teacher: family 'gpt_oss' does not route by a plain softmax top-k")
    assert "qwen3_next" in str(error.value) and "gpt_oss" not in str(error.value).split("allowed families:")[1]

"""The harness's MTP module (SlimQwen eq 9): shapes, causality, shared embedding/head, save/load, width."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel

from slim.harness.compression.width import shrink_hidden, sync_width_attributes
from slim.harness.config.schema import ModelConfig
from slim.harness.errors import UserError
from slim.harness.models.build import build_model
from slim.harness.models.io import load_pretrained, save_pretrained
from slim.harness.models.mtp import MTPModule, build_mtp, mtp_hidden_params, run_mtp
from slim.harness.models.mtp_io import HARNESS_FILE, load_mtp, save_mtp
from slim.harness.training.loss_terms import mtp_lm_loss

DEPTH, BATCH, SEQ, VOCAB = 2, 2, 10, 256


def tiny_config(**overrides: int) -> ModelConfig:
    fields = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4, num_experts=8, num_experts_per_tok=2,
                  moe_intermediate_size=32, shared_expert_intermediate_size=64, mtp_num_layers=DEPTH)
    return ModelConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def model_and_mtp() -> tuple[PreTrainedModel, MTPModule]:
    model = build_model(tiny_config()).eval()
    torch.manual_seed(1)
    return model, build_mtp(model).eval()


@pytest.fixture(scope="module")
def input_ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))


def mtp_logits(model: PreTrainedModel, mtp: MTPModule, input_ids: torch.Tensor) -> list[torch.Tensor]:
    hidden = model.model(input_ids=input_ids).last_hidden_state
    return run_mtp(model, mtp, hidden, input_ids)


def test_logit_shapes_per_depth(model_and_mtp, input_ids) -> None:
    """Depth k gives logits [B, T-k, V] for positions 0..T-k-1."""
    with torch.no_grad():
        logits = mtp_logits(*model_and_mtp, input_ids)
    assert [tuple(x.shape) for x in logits] == [(BATCH, SEQ - k, VOCAB) for k in range(1, DEPTH + 1)]


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_position_sees_only_tokens_up_to_i_plus_k(model_and_mtp, input_ids, attn_implementation: str) -> None:
    """Changing t_j changes depth-k logits exactly at the positions i >= j-k, whatever the attention kernel."""
    model, mtp = model_and_mtp
    mtp.config._attn_implementation = attn_implementation
    try:
        for j in (3, 7):
            changed_ids = input_ids.clone()
            changed_ids[:, j] = (changed_ids[:, j] + 1) % VOCAB
            with torch.no_grad():
                before, after = mtp_logits(model, mtp, input_ids), mtp_logits(model, mtp, changed_ids)
            for k, (old, new) in enumerate(zip(before, after), start=1):
                moved = (old - new).abs().amax(dim=(0, 2))  # [T-k]; MoE dispatch order adds ~1e-7 noise
                assert torch.all(moved[: j - k] < 1e-5), (j, k)
                assert torch.all(moved[j - k:] > 1e-3), (j, k)
    finally:
        mtp.config._attn_implementation = "sdpa"


def test_embedding_and_head_are_the_backbones(model_and_mtp) -> None:
    """The MTP module owns no embedding or LM head: none of its parameters is or is named like them."""
    model, mtp = model_and_mtp
    names = [name for name, _ in mtp.named_parameters()]
    assert not any("embed" in name or "lm_head" in name for name in names)
    backbone = {id(model.get_input_embeddings().weight), id(model.lm_head.weight)}
    assert backbone.isdisjoint(id(param) for param in mtp.parameters())
    assert not any(isinstance(module, torch.nn.Embedding) for module in mtp.modules())


def test_gradient_reaches_block_and_shared_embedding(input_ids) -> None:
    """MTP-LM backpropagates into every depth's block and, via Emb(t_{i+k}), into the shared embedding."""
    model = build_model(tiny_config(num_hidden_layers=1, full_attention_interval=1))
    mtp = build_mtp(model)
    hidden = model.model(input_ids=input_ids).last_hidden_state.detach()  # only the MTP path reaches the embedding
    labels = torch.roll(input_ids, -1, dims=1)
    mtp_lm_loss(run_mtp(model, mtp, hidden, input_ids), labels).backward()
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0
    for layer in mtp.layers:
        assert layer.block.self_attn.q_proj.weight.grad.abs().sum() > 0
        assert layer.block.mlp.experts.gate_up_proj.grad.abs().sum() > 0


def test_save_load_gives_identical_logits(model_and_mtp, input_ids, tmp_path: Path) -> None:
    """A student saved with `save_mtp` as extras reloads to bit-identical MTP logits."""
    model, mtp = model_and_mtp
    directory = save_pretrained(model, tmp_path / "student", extras=lambda tmp: save_mtp(mtp, tmp))
    reloaded, _ = load_pretrained(directory)
    reloaded_mtp = load_mtp(reloaded, directory).eval()
    with torch.no_grad():
        expected, actual = mtp_logits(model, mtp, input_ids), mtp_logits(reloaded, reloaded_mtp, input_ids)
    for old, new in zip(expected, actual):
        assert torch.equal(old, new)


def test_no_mtp_when_depth_is_zero(tmp_path: Path) -> None:
    """MTP depth 0 builds and loads no MTP module."""
    model = build_model(tiny_config(num_hidden_layers=1, full_attention_interval=1, mtp_num_layers=0))
    assert build_mtp(model) is None
    assert load_mtp(model, tmp_path) is None


def test_missing_weights_name_the_directory(model_and_mtp, tmp_path: Path) -> None:
    """A config with D > 0 and no MTP weights in either layout fails with one line naming the directory."""
    with pytest.raises(UserError, match=f"^checkpoint {tmp_path}: no MTP weights"):
        load_mtp(model_and_mtp[0], tmp_path)


def test_corrupt_file_names_the_path(model_and_mtp, tmp_path: Path) -> None:
    """An unreadable harness-layout mtp.safetensors fails with one line naming the file."""
    (tmp_path / HARNESS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match=str(tmp_path / HARNESS_FILE)):
        load_mtp(model_and_mtp[0], tmp_path)


def test_width_surgery_slices_mtp_with_the_backbone(input_ids) -> None:
    """Shrinking the width with `mtp_hidden_params` as extras leaves a working MTP of the new width."""
    model = build_model(tiny_config(num_hidden_layers=1, full_attention_interval=1))
    mtp = build_mtp(model)
    shrink_hidden(model, list(range(0, 64, 2)), extra=mtp_hidden_params(mtp))
    sync_width_attributes(mtp, 32)
    assert all(layer.eh_proj.weight.shape == (32, 64) for layer in mtp.layers)
    with torch.no_grad():
        logits = mtp_logits(model, mtp, input_ids)
    assert [tuple(x.shape) for x in logits] == [(BATCH, SEQ - k, VOCAB) for k in range(1, DEPTH + 1)]


def test_a_seeded_fresh_mtp_depends_on_the_seed_alone() -> None:
    """build_mtp(model, seed) draws on the CPU from `seed`, leaving the global RNG as it was: the same module after
    any other draws, in the model's dtype (what makes 1 process and FSDP start from one MTP init), another seed
    another module."""
    model = build_model(tiny_config())
    torch.manual_seed(5)
    first = build_mtp(model, seed=3).state_dict()
    after_first = torch.rand(4)
    torch.manual_seed(5)
    torch.rand(100)  # other draws before the second build
    second = build_mtp(model, seed=3).state_dict()
    torch.manual_seed(5)
    assert torch.equal(torch.rand(4), after_first)  # the global stream continued as if no MTP were drawn
    assert all(torch.equal(tensor, second[name]) for name, tensor in first.items())
    other = build_mtp(model, seed=4).state_dict()
    assert any(not torch.equal(tensor, other[name]) for name, tensor in first.items())
    half = build_mtp(model.to(torch.bfloat16), seed=3).state_dict()
    assert all(tensor.dtype == torch.bfloat16 and torch.equal(tensor, first[name].to(torch.bfloat16))
               for name, tensor in half.items())

"""Cached decoding for every student: a Qwen3-Next left with Gated DeltaNet layers only (a depth-pruned student)
decodes through LinearStateCache exactly as the no-cache recompute does, one new token per forward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel

from slim.harness.cli.main import main
from slim.harness.compression.depth import drop_layers
from slim.harness.config.schema import ModelConfig
from slim.harness.evaluation.efficiency import time_models
from slim.harness.evaluation.mtp_acceptance import acceptance_rates, mtp_drafter
from slim.harness.models.build import build_model
from slim.harness.models.families import TRANSFORMERS_CACHE, prepare_decoding
from slim.harness.models.families.qwen3_next import LINEAR_STATE_CACHE, LinearStateCache
from slim.harness.models.io import load_pretrained, save_pretrained
from slim.harness.models.mtp import build_mtp

TEACHER = "assets/tiny-teacher"  # 8 layers: Gated DeltaNet except full attention at 3 and 7
VOCAB = 64
NEW_TOKENS = 16


def tiny_model(num_layers: int) -> PreTrainedModel:
    """4 layers: hybrid (layer 3 is full attention); 3 layers: Gated DeltaNet only, like a depth-pruned student."""
    config = ModelConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=num_layers, num_experts=4,
                         num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32)
    return build_model(config).eval()


def prompts(prompt_len: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, prompt_len), generator=torch.Generator().manual_seed(prompt_len))


def greedy(model: PreTrainedModel, prompt: torch.Tensor, use_cache: bool):
    return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS,
                          min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0, use_cache=use_cache,
                          return_dict_in_generate=True, output_logits=True)


@pytest.mark.parametrize(("num_layers", "cache_path"), [(3, LINEAR_STATE_CACHE), (4, TRANSFORMERS_CACHE)],
                         ids=["linear_only", "hybrid"])
def test_cached_generate_equals_recompute(num_layers: int, cache_path: str) -> None:
    """Greedy generate with the cache gives the tokens and logits of recomputing the whole prefix every step."""
    model = tiny_model(num_layers)
    assert prepare_decoding(model) == cache_path
    cached, recomputed = greedy(model, prompts(8), use_cache=True), greedy(model, prompts(8), use_cache=False)
    assert isinstance(cached.cache, LinearStateCache) == (cache_path == LINEAR_STATE_CACHE)
    assert torch.equal(cached.sequences, recomputed.sequences)
    torch.testing.assert_close(torch.stack(cached.logits), torch.stack(recomputed.logits), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("prompt_len", [8, 64])
def test_cached_decode_feeds_one_token_per_step(prompt_len: int) -> None:
    """The linear-only student's prefill embeds the P prompt tokens, then each decode step embeds 1 token,
    whatever P; the cache has counted every token fed (and forgets them on reset)."""
    model = tiny_model(3)
    fed: list[int] = []
    model.model.embed_tokens.register_forward_hook(lambda module, args, out: fed.append(out.shape[1]))
    cache = greedy(model, prompts(prompt_len), use_cache=True).cache
    assert fed == [prompt_len] + [1] * (NEW_TOKENS - 1)
    assert cache.get_seq_length() == prompt_len + NEW_TOKENS - 1
    cache.reset()
    assert cache.get_seq_length() == 0


def test_forward_with_cache_continues_like_full_forward() -> None:
    """A plain forward (use_cache from the config) of the linear-only student returns a LinearStateCache; feeding
    the next tokens through it gives the logits of one forward over the whole sequence."""
    model = tiny_model(3)
    sequence = prompts(12)
    with torch.no_grad():
        prefill = model(input_ids=sequence[:, :8])
        assert isinstance(prefill.cache, LinearStateCache) and prefill.cache.get_seq_length() == 8
        steps = [model(input_ids=sequence[:, i:i + 1], cache=prefill.cache).logits for i in range(8, 12)]
        full = model(input_ids=sequence, use_cache=False).logits
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 8:], rtol=1e-4, atol=1e-5)


def test_drafting_and_timing_run_on_linear_only_student() -> None:
    """MTP acceptance and the efficiency runs (prefill, cached generate) work on the linear-only student."""
    model = tiny_model(3)
    prompt = prompts(6)
    assert len(acceptance_rates(model, mtp_drafter(model, build_mtp(model).eval(), 2), prompt, 6, 2)) == 2
    timings = time_models({"model": model}, prompt, new_tokens=3, repeats=1, warmup=0)["model"]
    assert timings.efficiency(prompt, new_tokens=3).decode_tokens_per_s > 0


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny teacher cut to its first three layers (all Gated DeltaNet: no attention left), on disk."""
    model, tokenizer = load_pretrained(TEACHER)
    drop_layers(model, [0, 1, 2])
    return save_pretrained(model, tmp_path_factory.mktemp("student") / "model", tokenizer)


def test_loaded_student_generates_with_cache(student: Path) -> None:
    """`load_pretrained` gives the linear-only student a cache that plain `generate` uses, as lm-eval calls it."""
    model = load_pretrained(student)[0].eval()
    out = model.generate(prompts(6), max_new_tokens=4, use_cache=True, pad_token_id=0, return_dict_in_generate=True)
    assert out.sequences.shape == (2, 10) and isinstance(out.cache, LinearStateCache)


def test_eval_summary_records_decode_cache(student: Path, tmp_path: Path) -> None:
    """eval_summary.json names the cache each model decoded with: the student's own, the teacher's transformers'."""
    assert main(["eval", f"run_dir={tmp_path}", f"eval.model={student}", f"eval.teacher={TEACHER}", "eval.tasks=[]",
                 "eval.perplexity_batches=1", "eval.batch_size=4", "eval.device=cpu", "eval.mtp.new_tokens=4",
                 "eval.efficiency.prompt_len=16", "eval.efficiency.new_tokens=4", "eval.efficiency.repeats=1",
                 "eval.efficiency.warmup=0"]) == 0
    summary = json.loads((tmp_path / "eval_summary.json").read_text())
    assert summary["decode_cache"] == LINEAR_STATE_CACHE
    assert summary["efficiency"]["teacher_decode_cache"] == TRANSFORMERS_CACHE
    assert summary["efficiency"]["student_vs_teacher"]["decode_speedup"] > 0

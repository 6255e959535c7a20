"""`vllm`: prefill / decode throughput under vLLM, SlimQwen Table 11's second backend.

Timed as the transformers runs are: prefill = generating 1 token, decode = generating `new_tokens` (greedy, EOS
ignored) minus the prefill time, each the mean of `repeats` runs after `warmup`. Each model runs in a fresh spawned
process, so one engine's GPU memory is gone before the next starts. Runs only where the `vllm` package imports and a
CUDA device is visible; a student saved in a portable architecture needs vLLM support for it (trust_remote_code).
"""

from __future__ import annotations

import importlib.util
import multiprocessing

import torch

from slim.harness.config.schema import EfficiencyConfig
from slim.harness.evaluation.backends import InferenceBackend, inference_backends
from slim.harness.evaluation.efficiency import mean_seconds


def unavailable() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed"
    if not torch.cuda.is_available():
        return "vllm needs a CUDA device"
    return None


def _measure_here(model_dir: str, prompts: list[list[int]], new_tokens: int, repeats: int, warmup: int,
                  sender) -> None:
    """In the spawned process: load the engine, time prefill and generation, send the throughputs back."""
    from vllm import LLM, SamplingParams

    engine = LLM(model=model_dir, trust_remote_code=True, enable_prefix_caching=False)
    inputs = [{"prompt_token_ids": ids} for ids in prompts]

    def generate(tokens: int) -> None:
        engine.generate(inputs, SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True), use_tqdm=False)

    cpu = torch.device("cpu")  # generate returns when done: nothing to synchronize
    prefill_s = mean_seconds(lambda: generate(1), cpu, repeats, warmup)
    generate_s = mean_seconds(lambda: generate(new_tokens), cpu, repeats, warmup)
    batch, length = len(prompts), len(prompts[0])
    sender.send({"prefill_tokens_per_s": batch * length / prefill_s,
                 "decode_tokens_per_s": batch * (new_tokens - 1) / max(generate_s - prefill_s, 1e-9)})


def measure(model_dir: str, prompts: list[list[int]], settings: EfficiencyConfig) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_measure_here, args=(model_dir, prompts, settings.new_tokens, settings.repeats,
                                                          settings.warmup, sender))
    process.start()
    sender.close()
    try:
        result = receiver.recv()
    except EOFError:
        process.join()
        raise RuntimeError(f"vllm: measuring {model_dir} failed (its process exited with code {process.exitcode})"
                           ) from None
    process.join()
    return result


inference_backends.register("vllm")(InferenceBackend(
    doc="vLLM: prefill / decode tokens/s of student and teacher (Table 11's second backend); needs vllm and a GPU",
    unavailable=unavailable, measure=measure))

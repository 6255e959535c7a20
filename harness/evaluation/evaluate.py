"""`slim eval`: lm-eval tasks, validation perplexity, MTP acceptance and speed/memory of one model (vs its
teacher), written to `<run_dir>/eval_summary.json`. Every field is checked before any model is loaded."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from slim.harness.atomic import write_text_atomic
from slim.harness.config.schema import EvalConfig, SlimConfig
from slim.harness.data.packing import WindowDataset, validation_windows
from slim.harness.distributed import init_distributed, local_rank, on_rank_zero
from slim.harness.errors import UserError
from slim.harness.evaluation.backends import backend_summaries, inference_backends
from slim.harness.evaluation.efficiency import efficiency_ratios, time_models
from slim.harness.evaluation.lm_eval_runner import check_tasks, go_offline, run_lm_eval, task_manager
from slim.harness.evaluation.mtp_acceptance import acceptance_rates, mtp_drafter
from slim.harness.evaluation.perplexity import model_perplexity
from slim.harness.evaluation.task_metrics import include_paths
from slim.harness.models.expert_flops import count_expert_flops
from slim.harness.models.experts_policy import apply_experts_policy
from slim.harness.models.families import prepare_decoding
from slim.harness.models.io import TOKENIZER_FILES, check_checkpoint, has_tokenizer, load_pretrained, read_model_config
from slim.harness.models.mtp import mtp_depth
from slim.harness.models.mtp_io import find_mtp
from slim.harness.outputs import check_work_dir
from slim.harness.provenance import stamped

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

SUMMARY_NAME = "eval_summary.json"
HeldOut = Callable[[PreTrainedTokenizerBase, int], WindowDataset]  # (tokenizer, window length) -> validation windows
POSITIVE_FIELDS = ("batch_size", "mtp.num_prompts", "mtp.prompt_len", "mtp.new_tokens", "efficiency.batch_size",
                   "efficiency.prompt_len", "efficiency.new_tokens", "efficiency.repeats")
NON_NEGATIVE_FIELDS = ("limit", "perplexity_batches", "mtp.num_draft_tokens", "efficiency.warmup")
TASK_DEFAULT_FEWSHOT = -1  # eval.num_fewshot: each task's own setting (lm-eval's num_fewshot=None)


def _field(cfg: EvalConfig, dotted: str) -> object:
    value: object = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def validate_eval_config(cfg: EvalConfig) -> None:
    """One-line UserError naming the first bad `eval.*` field."""
    bounds = [*((name, 1) for name in POSITIVE_FIELDS), *((name, 0) for name in NON_NEGATIVE_FIELDS),
              ("num_fewshot", TASK_DEFAULT_FEWSHOT)]
    for dotted, low in bounds:
        if _field(cfg, dotted) < low:
            raise UserError(f"eval.{dotted}: must be >= {low}, got {_field(cfg, dotted)}")
    if cfg.mtp.new_tokens <= cfg.mtp.num_draft_tokens:
        raise UserError(f"eval.mtp.new_tokens: must exceed eval.mtp.num_draft_tokens ({cfg.mtp.num_draft_tokens}), "
                        f"got {cfg.mtp.new_tokens}")
    if not cfg.tasks and not cfg.perplexity_batches:
        raise UserError("eval.tasks: empty and eval.perplexity_batches is 0, nothing to evaluate")
    include_paths(cfg.include_path)
    for name in cfg.efficiency.backends:
        inference_backends.validate(name, "eval.efficiency.backends")
    if cfg.device != "auto" and cfg.device.split(":")[0] not in ("cpu", "cuda"):
        raise UserError(f"eval.device: must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    model_config = read_model_config(cfg.model, "eval.model")
    if not has_tokenizer(cfg.model):
        raise UserError(f"eval.model: no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {cfg.model}")
    check_checkpoint(cfg.model, "eval.model")
    if cfg.teacher:
        if read_model_config(cfg.teacher, "eval.teacher").vocab_size != model_config.vocab_size:
            raise UserError(f"eval.teacher: its vocabulary differs from eval.model's ({model_config.vocab_size} "
                            "tokens); speed is compared on the same token ids")
        check_checkpoint(cfg.teacher, "eval.teacher")  # a truncated teacher fails here, not after the whole eval


def resolve_device(name: str) -> torch.device:
    """"auto" is this process's own CUDA device (cuda:LOCAL_RANK under torchrun or srun) when there is one, else
    the CPU."""
    if name == "auto":
        return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"eval.device: {name!r} asked for, but no CUDA device is available")
    return torch.device(name)


def _prompts(heldout: HeldOut, tokenizer: PreTrainedTokenizerBase, count: int, length: int,
             device: torch.device) -> torch.Tensor:
    """The first `count` held-out windows of `length` tokens, [count, length] on `device`."""
    windows = heldout(tokenizer, length)
    if len(windows) < count:
        raise UserError(f"eval: the validation split holds {len(windows)} prompts of {length} tokens, "
                        f"asked for {count}")
    return torch.stack([windows[i]["input_ids"] for i in range(count)]).to(device)


def _mtp_summary(cfg: SlimConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, heldout: HeldOut,
                 device: torch.device) -> dict:
    """acc_0..acc_{K-1}, or why there are none (no MTP depth in config.json, or no saved MTP weights)."""
    if mtp_depth(model) == 0:
        return {"acc": None, "note": "config.json has no MTP depths (mtp_num_hidden_layers = 0)"}
    mtp = find_mtp(model, cfg.eval.model)
    if mtp is None:
        return {"acc": None, "note": f"no MTP weights in {cfg.eval.model}: the model has no trained MTP module"}
    apply_experts_policy(cfg.model_runtime.experts_implementation, mtp)
    mtp.eval()
    settings = cfg.eval.mtp
    num_draft = settings.num_draft_tokens or mtp_depth(model)
    prompts = _prompts(heldout, tokenizer, settings.num_prompts, settings.prompt_len, device)
    acc = acceptance_rates(model, mtp_drafter(model, mtp, num_draft), prompts, settings.new_tokens, num_draft)
    return {"acc": acc, "tokens_per_step": 1 + sum(acc), "num_draft_tokens": num_draft}


def _efficiency_summary(cfg: SlimConfig, model: PreTrainedModel, prompts: torch.Tensor) -> dict:
    """The model's speed and memory, and with eval.teacher the teacher's on the same prompts, timed round by round
    with the model's, and their ratios with the speedups' spread over the rounds."""
    settings = cfg.eval.efficiency
    models = {"model": model}
    summary: dict = {"device": str(prompts.device)}
    if cfg.eval.teacher:
        teacher = load_pretrained(cfg.eval.teacher, device=str(prompts.device))[0]
        apply_experts_policy(cfg.model_runtime.experts_implementation, teacher)
        summary["teacher_decode_cache"] = prepare_decoding(teacher)
        models["teacher"] = teacher
    timings = time_models(models, prompts, settings.new_tokens, settings.repeats, settings.warmup)
    summary.update((name, asdict(timing.efficiency(prompts, settings.new_tokens))) for name, timing in timings.items())
    if "teacher" in timings:
        summary["student_vs_teacher"], summary["student_vs_teacher_spread"] = efficiency_ratios(timings["model"],
                                                                                                timings["teacher"])
    if settings.backends:
        summary["backends"] = backend_summaries(settings.backends, cfg.eval.model, cfg.eval.teacher, prompts.tolist(),
                                                settings)
    return summary


def evaluate(cfg: SlimConfig) -> dict:
    """Evaluate eval.model; returns the summary and writes it to `<run_dir>/eval_summary.json`. Under torchrun or
    srun every rank checks the config, then rank 0 alone evaluates (on its own device) while the others wait for
    its summary: lm-eval, perplexity and the speed runs are not split across ranks."""
    validate_eval_config(cfg.eval)
    check_work_dir(cfg.run_dir, "run_dir")
    if cfg.eval.offline:
        go_offline()
    manager = task_manager(include_paths(cfg.eval.include_path)) if cfg.eval.tasks else None
    if manager is not None:
        check_tasks(cfg.eval.tasks, manager)
    init_distributed(cuda=False)  # the others only wait on rank 0: host-side, gloo
    return on_rank_zero(lambda: _evaluate(cfg, manager))


def _evaluate(cfg: SlimConfig, manager: TaskManager | None) -> dict:
    """The evaluation itself, in this process."""
    device = resolve_device(cfg.eval.device)
    heldout = validation_windows(cfg.data)  # text the evaluated models never trained on
    model, tokenizer = load_pretrained(cfg.eval.model, device=str(device))
    model.eval()
    # Which cache `generate` decodes with: transformers' own, or a model family's (slim.harness.models.families).
    summary: dict = {"model": cfg.eval.model, "teacher": cfg.eval.teacher or None,
                     "decode_cache": prepare_decoding(model),
                     "experts_implementation": apply_experts_policy(cfg.model_runtime.experts_implementation, model)}
    if manager is not None:
        limit = cfg.eval.limit or None
        fewshot = None if cfg.eval.num_fewshot == TASK_DEFAULT_FEWSHOT else cfg.eval.num_fewshot
        summary["lm_eval"] = run_lm_eval(model, tokenizer, cfg.eval.tasks, manager, limit, cfg.eval.batch_size,
                                         fewshot)
    if cfg.eval.perplexity_batches:
        loader = DataLoader(heldout(tokenizer, cfg.data.seq_len), batch_size=cfg.eval.batch_size)
        # Share of routed expert FLOPs skipped (routes to zero experts; 0 for a static MoE), counted in the same pass.
        with count_expert_flops(model) as counts:
            summary["perplexity"] = model_perplexity(model, loader, cfg.eval.perplexity_batches)
        summary["expert_flops_saved"] = counts.summary()
    summary["mtp_acceptance"] = _mtp_summary(cfg, model, tokenizer, heldout, device)
    if cfg.eval.efficiency.enabled:
        speed = cfg.eval.efficiency
        prompts = _prompts(heldout, tokenizer, speed.batch_size, speed.prompt_len, device)
        summary["efficiency"] = _efficiency_summary(cfg, model, prompts)
    write_text_atomic(Path(cfg.run_dir) / SUMMARY_NAME, json.dumps(stamped(summary), indent=2))
    return summary

"""`slim pretrain`: train the teacher on the shipped corpus and write a Hugging Face directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slim.harness.config.schema import SlimConfig
from slim.harness.data.datamodule import CorpusDataModule
from slim.harness.data.packing import window_rows
from slim.harness.data.sources import get_source
from slim.harness.data.tokenizer import load_tokenizer, needs_training
from slim.harness.errors import UserError
from slim.harness.evaluation.perplexity import model_perplexity, unigram_perplexity
from slim.harness.models.build import build_model, validate_model_config
from slim.harness.models.io import save_pretrained
from slim.harness.models.params import count_parameters
from slim.harness.outputs import check_output_dir
from slim.harness.tracking.wandb_logger import finish_runs, validate_tracking_config, wandb_loggers
from slim.harness.training.fsdp import gather_unsharded
from slim.harness.training.lm_module import PretrainModule
from slim.harness.training.run import (
    ExpertsPolicy,
    check_run_dir,
    fit,
    prepare_run,
    validate_train_config,
    write_summary,
)
from slim.harness.training.trainer import CHECKPOINT_BYTES_PER_PARAM

# Windows the unigram baseline is fit and scored on: a whole shipped corpus, a bounded sample of a prepared one.
UNIGRAM_WINDOWS = 1 << 16


@dataclass
class PretrainSummary:
    """What `slim pretrain` reports and writes to `<run_dir>/pretrain_summary.json`."""

    model_dir: str
    val_perplexity: float
    unigram_perplexity: float
    steps: int
    tokens_seen: int  # over the whole run, resumed steps included
    wall_seconds: float  # of this process's training
    tokens_per_second: float  # tokens trained by this process / its wall_seconds (a resume's earlier steps excluded)
    experts_implementation: str  # model_runtime.experts_implementation as resolved for the training device


def validate_pretrain_config(cfg: SlimConfig) -> None:
    """Refuse inconsistent configs before any work starts: the model's vocabulary is the data tokenizer's (one still
    to be trained will have data.vocab_size tokens)."""
    validate_model_config(cfg.model)
    if needs_training(cfg.data) and get_source(cfg.data).train_texts is not None:
        if cfg.model.vocab_size != cfg.data.vocab_size:
            raise UserError(
                f"model.vocab_size ({cfg.model.vocab_size}) must equal data.vocab_size ({cfg.data.vocab_size})"
            )
    else:
        ids = max(load_tokenizer(cfg.data.tokenizer).get_vocab().values()) + 1
        if ids != cfg.model.vocab_size:
            raise UserError(f"model.vocab_size ({cfg.model.vocab_size}) must equal the {ids} token ids of the "
                            f"tokenizer at data.tokenizer={cfg.data.tokenizer}")
    validate_train_config(cfg.train)
    validate_tracking_config(cfg.tracking)


def model_dir(cfg: SlimConfig) -> Path:
    """Where the pretrained model goes: `<run_dir>/model`."""
    return Path(cfg.run_dir) / "model"


def _model_bytes(cfg: SlimConfig) -> int:
    """Rough size of the saved model: its parameters (built on the meta device, no memory) in float32."""
    return count_parameters(build_model(cfg.model, device="meta")).total * 4


def pretrain(cfg: SlimConfig) -> PretrainSummary:
    """Pretrain `cfg.model` on the corpus; resumes from `<run_dir>/checkpoints/last.ckpt` when present."""
    validate_pretrain_config(cfg)
    check_run_dir(cfg)
    check_output_dir(model_dir(cfg), "run_dir", _model_bytes(cfg) * (1 + CHECKPOINT_BYTES_PER_PARAM // 4))
    data = CorpusDataModule(cfg.data, cfg.train.batch_size, seed=cfg.train.seed)
    data.setup("fit")
    run_dir = prepare_run(cfg)
    module = PretrainModule(cfg.model, cfg.train)
    experts = ExpertsPolicy(cfg.model_runtime.experts_implementation)
    loggers = wandb_loggers(cfg)
    result = fit(module, data, cfg.train, run_dir, loggers=loggers, callbacks=[experts])
    trainer = result.trainer

    model = module.model
    gathered = gather_unsharded((model,), lambda: (build_model(cfg.model, seed=cfg.train.seed),))
    if gathered is not None:  # under FSDP only rank 0 holds the gathered model and writes it
        save_pretrained(gathered[0], model_dir(cfg), tokenizer=data.tokenizer)
    tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
    summary = PretrainSummary(
        model_dir=str(model_dir(cfg)),
        val_perplexity=model_perplexity(model, data.val_dataloader(), desc="validation perplexity"),
        unigram_perplexity=unigram_perplexity(
            window_rows(data.data.train, 0, min(len(data.data.train), UNIGRAM_WINDOWS)),
            window_rows(data.data.validation, 0, min(len(data.data.validation), UNIGRAM_WINDOWS))[:, 1:],
            cfg.model.vocab_size,
        ),
        steps=trainer.global_step,
        tokens_seen=trainer.global_step * tokens_per_step,
        wall_seconds=round(result.wall_seconds, 1),
        tokens_per_second=result.tokens_per_second(tokens_per_step),
        experts_implementation=experts.implementation,
    )
    finish_runs(loggers, {"val_perplexity": summary.val_perplexity, "unigram_perplexity": summary.unigram_perplexity})
    if trainer.is_global_zero:
        write_summary(run_dir, "pretrain_summary", summary)
    trainer.strategy.barrier()
    return summary

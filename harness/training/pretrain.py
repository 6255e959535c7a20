"""`slim pretrain`: train the teacher on the shipped corpus and write a Hugging Face directory."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch

from harness.config.load import to_yaml
from harness.config.schema import SlimConfig
from harness.data.datamodule import CorpusDataModule
from harness.errors import UserError
from harness.evaluation.perplexity import model_perplexity, unigram_perplexity
from harness.models.build import validate_model_config
from harness.models.io import save_pretrained
from harness.training.lm_module import PretrainModule
from harness.training.trainer import build_trainer, resume_path


@dataclass
class PretrainSummary:
    """What `slim pretrain` reports and writes to `<run_dir>/pretrain_summary.json`."""

    model_dir: str
    val_perplexity: float
    unigram_perplexity: float
    steps: int
    tokens_seen: int
    wall_seconds: float
    tokens_per_second: float


def validate_pretrain_config(cfg: SlimConfig) -> None:
    """Refuse inconsistent configs before any work starts."""
    validate_model_config(cfg.model)
    if cfg.model.vocab_size != cfg.data.vocab_size:
        raise UserError(
            f"model.vocab_size ({cfg.model.vocab_size}) must equal data.vocab_size ({cfg.data.vocab_size})"
        )
    if cfg.train.max_steps < 1 or cfg.train.batch_size < 1:
        raise UserError("train.max_steps and train.batch_size must be >= 1")
    if cfg.train.warmup_steps >= cfg.train.max_steps:
        raise UserError(f"train.warmup_steps ({cfg.train.warmup_steps}) must be < train.max_steps ({cfg.train.max_steps})")


def pretrain(cfg: SlimConfig) -> PretrainSummary:
    """Pretrain `cfg.model` on the corpus; resumes from `<run_dir>/checkpoints/last.ckpt` when present."""
    validate_pretrain_config(cfg)
    data = CorpusDataModule(cfg.data, cfg.train.batch_size, seed=cfg.train.seed)
    data.setup("fit")
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
    module = PretrainModule(cfg.model, cfg.train)
    trainer = build_trainer(cfg.train, run_dir)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=resume_path(run_dir, cfg.train))
    wall = time.perf_counter() - start

    model = module.model
    model_dir = run_dir / "model"
    save_pretrained(model, model_dir, tokenizer=data.tokenizer)
    tokens = trainer.global_step * cfg.train.batch_size * cfg.data.seq_len
    summary = PretrainSummary(
        model_dir=str(model_dir),
        val_perplexity=model_perplexity(model, data.val_dataloader(), desc="validation perplexity"),
        unigram_perplexity=unigram_perplexity(
            data.data.train.sequences, data.data.validation.sequences[:, 1:], cfg.model.vocab_size
        ),
        steps=trainer.global_step,
        tokens_seen=tokens,
        wall_seconds=round(wall, 1),
        tokens_per_second=round(tokens / max(wall, 1e-9), 1),
    )
    (run_dir / "pretrain_summary.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary

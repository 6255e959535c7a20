"""Kind `compress`: one-shot compression without training, scored by validation perplexity (the "one-shot"
columns of Tables 2 and 8)."""

from __future__ import annotations

from harness.compression.compress import compress
from harness.compression.recipe import validate_recipe
from harness.config.schema import SlimConfig
from harness.data.datamodule import CorpusDataModule
from harness.distributed import on_rank_zero
from harness.evaluation.perplexity import model_perplexity
from harness.grid.cells._params import PARAM_METRICS, param_metrics
from harness.grid.kinds import CellOutput, register_kind
from harness.models.io import load_pretrained, read_model_config


def validate_compress(cfg: SlimConfig) -> None:
    """The compression recipe against the teacher's config."""
    validate_recipe(cfg.compress, read_model_config(cfg.compress.teacher, "compress.teacher"))


def _perplexity(model_dir: str, data: CorpusDataModule, desc: str) -> float:
    model, _ = load_pretrained(model_dir)
    return model_perplexity(model, data.val_dataloader(), desc=desc)


def _perplexities(cfg: SlimConfig) -> dict[str, float]:
    """Student and teacher validation perplexity on the same batches as `run`."""
    data = CorpusDataModule(cfg.data, cfg.train.batch_size, cfg.train.seed)
    data.setup()
    return {
        "val_perplexity": _perplexity(cfg.compress.output, data, "student validation perplexity"),
        "teacher_val_perplexity": _perplexity(cfg.compress.teacher, data, "teacher validation perplexity"),
    }


@register_kind("compress", metrics=("val_perplexity", "teacher_val_perplexity", *PARAM_METRICS),
               validate=validate_compress)
def compress_cell(cfg: SlimConfig) -> CellOutput:
    """Compress the teacher and score student and teacher on the validation split (same batches as `run`)."""
    report = compress(cfg)
    metrics = on_rank_zero(lambda: _perplexities(cfg))  # under torchrun or srun the other ranks wait
    return CellOutput(metrics={**metrics, **param_metrics(report["params"])},
                      artifacts={"student": cfg.compress.output})

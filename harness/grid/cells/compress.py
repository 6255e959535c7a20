"""Kind `compress`: one-shot compression without training, scored by validation perplexity (the "one-shot"
columns of Tables 2 and 8)."""

from __future__ import annotations

from slim.harness.compression.compress import compress
from slim.harness.compression.recipe import validate_recipe
from slim.harness.config.schema import SlimConfig
from slim.harness.data.datamodule import CorpusDataModule
from slim.harness.distributed import on_rank_zero
from slim.harness.evaluation.perplexity import model_perplexity
from slim.harness.evaluation.teacher_metrics import teacher_perplexity
from slim.harness.grid.cells._params import PARAM_METRICS, param_metrics
from slim.harness.grid.kinds import CellOutput, register_kind
from slim.harness.models.experts_policy import apply_experts_policy
from slim.harness.models.io import load_pretrained, read_model_config


def validate_compress(cfg: SlimConfig) -> None:
    """The compression recipe against the teacher's config."""
    validate_recipe(cfg.compress, read_model_config(cfg.compress.teacher, "compress.teacher"))


def _perplexities(cfg: SlimConfig) -> dict[str, float]:
    """Student and teacher validation perplexity on the same batches as `run` (the teacher's computed once per
    teacher, data and batches: slim.harness.evaluation.teacher_metrics), one model loaded at a time."""
    data = CorpusDataModule(cfg.data, cfg.train.batch_size, cfg.train.seed)
    data.setup()
    student = load_pretrained(cfg.compress.output)[0]
    apply_experts_policy(cfg.model_runtime.experts_implementation, student)
    metrics = {"val_perplexity": model_perplexity(student, data.val_dataloader(), desc="student validation perplexity")}
    del student
    teacher = load_pretrained(cfg.compress.teacher)[0]
    apply_experts_policy(cfg.model_runtime.experts_implementation, teacher)
    metrics["teacher_val_perplexity"] = teacher_perplexity(cfg.compress.teacher, teacher, data.val_dataloader())
    return metrics


@register_kind("compress", metrics=("val_perplexity", "teacher_val_perplexity", *PARAM_METRICS),
               validate=validate_compress, calibrates=True)
def compress_cell(cfg: SlimConfig) -> CellOutput:
    """Compress the teacher and score student and teacher on the validation split (same batches as `run`)."""
    report = compress(cfg)
    metrics = on_rank_zero(lambda: _perplexities(cfg))  # under torchrun or srun the other ranks wait
    return CellOutput(metrics={**metrics, **param_metrics(report["params"])},
                      artifacts={"student": cfg.compress.output})

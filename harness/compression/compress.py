"""`slim compress`: teacher + calibration stats + recipe -> student Hugging Face directory.

Two halves: statistics (slim.harness.compression.statistics: read, or calibrated on every rank) and the cut
(slim.harness.compression.cut: pure surgery on rank 0). The student directory gets `compression_report.json` with
parameter counts, kept layers/dims, per-layer expert maps, the methods used, the stats fingerprint and the lineage.
"""

from __future__ import annotations

import json
from pathlib import Path

from slim.harness.calibration.io import check_fingerprint
from slim.harness.compression.cut import cut
from slim.harness.compression.lineage import REPORT_NAME, Lineage, identity_lineage, read_lineage
from slim.harness.compression.recipe import validate_recipe
from slim.harness.compression.statistics import compress_statistics, stored_stats
from slim.harness.config.schema import CompressConfig, SlimConfig
from slim.harness.distributed import on_rank_zero
from slim.harness.models.io import read_model_config, save_pretrained
from slim.harness.models.mtp_io import find_mtp, save_mtp
from slim.harness.models.view import ModelView, view
from slim.harness.outputs import check_output_dir, weights_bytes


def source_lineage(recipe: CompressConfig, model_view: ModelView) -> Lineage:
    """The compressed model's own lineage (a student cut again), or the identity for an original teacher."""
    stored = read_lineage(recipe.teacher, REPORT_NAME)
    if stored is not None:
        return stored
    experts = [layer.moe.router.shape[0] if layer.moe is not None else 0 for layer in model_view.layers]
    return identity_lineage(recipe.teacher, len(model_view.layers), experts)


def compress(cfg: SlimConfig) -> dict:
    """Compress `cfg.compress.teacher` by the recipe and write the student to `cfg.compress.output`; returns the
    compression report. Under torchrun or srun every rank calibrates its share of the batches (when compress.stats
    is empty), then rank 0 alone cuts and writes the student while the others wait for its report."""
    recipe = cfg.compress
    teacher_cfg = read_model_config(recipe.teacher, "compress.teacher")
    validate_recipe(recipe, teacher_cfg)
    check_output_dir(recipe.output, "compress.output", weights_bytes(recipe.teacher))
    stored = stored_stats(cfg, teacher_cfg)
    teacher, stats = compress_statistics(cfg, stored)

    def cut_and_write() -> dict:
        model, tokenizer = teacher
        if stored is not None:
            check_fingerprint(stats, model, recipe.stats)
        # A teacher pretrained without an MTP module has none to compress; the distiller then builds a fresh one.
        student = cut(recipe, teacher_cfg, model, stats, source_lineage(recipe, view(model)),
                      find_mtp(model, recipe.teacher))

        def write_report(directory: Path) -> None:
            (directory / REPORT_NAME).write_text(json.dumps(student.report, indent=1))
            if student.mtp is not None:
                save_mtp(student.mtp, directory)

        save_pretrained(model, recipe.output, tokenizer=tokenizer, extras=write_report)
        return student.report

    return on_rank_zero(cut_and_write)

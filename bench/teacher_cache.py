"""Quality of distilling from the offline teacher cache vs the live teacher, by cached top-k.

On the shipped tiny teacher and the tiny SlimQwen student, a short KD run from a cache of the teacher's
top-k (k = 32, 256, V) is compared with the same run against the live teacher: the metric is the full-vocab
KL(teacher || student) on validation batches after training (lower is better; the start value is the
compressed student's). Writes bench/results/teacher_cache.json.

    .venv/bin/python bench/teacher_cache.py [--steps 12] [--lines 600]
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from pathlib import Path

import torch

from slim.harness.compression.compress import compress
from slim.harness.config.load import load_config
from slim.harness.data.datamodule import CorpusDataModule
from slim.harness.provenance import stamped
from slim.harness.training.distill import distill
from slim.harness.training.distill_module import DistillModule
from slim.harness.training.teacher_cache_writer import cache_teacher

TEACHER = "assets/tiny-teacher"


def full_kl(student: str, batches: list[dict]) -> float:
    """Mean full-vocab KL(teacher || student) over `batches`, with the live teacher."""
    probe = load_config([f"distill.teacher={TEACHER}", f"distill.student={student}", "distill.loss=kd"])
    module = DistillModule(probe.distill, probe.train)
    module.configure_model()
    with torch.no_grad():
        return sum(module.step_loss(batch).terms["kd"].item() for batch in batches) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--lines", type=int, default=600, help="corpus lines used (Genesis 1-23 at 600)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    with gzip.open("data/corpus/kjv.txt.gz", "rt") as source:
        (root / "corpus.txt").write_text("".join(next(source) for _ in range(args.lines)))
    base = [f"data.path={root / 'corpus.txt'}", f"data.tokenizer={TEACHER}", "train.num_threads=1",
            f"train.max_steps={args.steps}", "train.batch_size=8", "train.warmup_steps=1",
            f"train.val_every={args.steps}", "train.val_batches=1", "distill.loss=kd", f"distill.teacher={TEACHER}",
            "tracking.wandb=false"]
    student = str(root / "student")
    compress(load_config([*base, f"compress.output={student}"], ["conf/recipes/tiny-slimqwen.yaml"]))
    data = CorpusDataModule(load_config(base).data, batch_size=8)
    data.setup()
    batches = list(data.val_dataloader())[:4]
    results = {"start": full_kl(student, batches), "steps": args.steps, "runs": {}}
    for k in ("live", 32, 256, 4096):
        run = [*base, f"distill.student={student}", f"distill.output={root / f'out-{k}'}",
               f"run_dir={root / f'run-{k}'}"]
        if k != "live":
            run += [f"distill.teacher_cache={root / f'cache-{k}'}", f"distill.teacher_cache_top_k={k}"]
            cache_teacher(load_config(run))
        start = time.perf_counter()
        distill(load_config(run))
        results["runs"][str(k)] = {"full_kl": full_kl(str(root / f"out-{k}"), batches),
                                   "wall_seconds": round(time.perf_counter() - start, 1)}
        print(k, results["runs"][str(k)], flush=True)
    out = Path("bench/results/teacher_cache.json")
    out.write_text(json.dumps(stamped(results), indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

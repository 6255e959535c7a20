"""`slim plan`'s time-to-train line: the recipe's token budget at the FLOP rate a real-width step measured.

bench/distill_scale.py times one distillation step at the paper's layer shapes and records the FLOP rate one device
reached (slim.harness.step_flops counts the FLOPs). A full-depth step runs the same layer shapes, so its tokens/s per
device is that rate over the recipe's FLOPs per token, and the budget (train.batch_size x train.max_steps x
data.seq_len tokens) takes budget / (tokens/s per device x devices). A GPU result is used when one exists; a CPU one
is shown as such, since no GPU cluster runs at a CPU's rate. The line names the file its rate came from.
"""

from __future__ import annotations

import json
from pathlib import Path

from slim.harness.compression.shapes import student_shape
from slim.harness.config.schema import SlimConfig
from slim.harness.models.params import format_count
from slim.harness.step_flops import format_duration, step_flops
from slim.harness.training.loss_mixes import loss_mixes

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
MEASUREMENTS = ("distill_scale_cuda.json", "distill_scale.json")  # preferred first


def measurement(results: Path = RESULTS) -> tuple[Path, dict] | None:
    """The first real-width step measurement found in `results`, with its file."""
    for name in MEASUREMENTS:
        if (results / name).is_file():
            return results / name, json.loads((results / name).read_text())
    return None


def time_to_train_line(cfg: SlimConfig, results: Path = RESULTS) -> str:
    """One line: the budget, its duration on the planned devices, the tokens/s per device and where it came from."""
    train, devices = cfg.train, cfg.plan.gpus * cfg.plan.nodes
    budget = train.batch_size * train.max_steps * cfg.data.seq_len
    found = measurement(results)
    if found is None:
        return (f"time to train {format_count(budget)} tokens: no step measurement in {results} "
                "(run bench/distill_scale.py on a GPU)")
    path, result = found
    recipe = cfg.compress
    student = student_shape(cfg.model, recipe.depth.num_drop, recipe.width.hidden_size, recipe.experts.num_experts,
                            recipe.experts.top_k).model
    with_mtp = loss_mixes.get(cfg.distill.loss, "distill.loss").needs_mtp
    flops = step_flops(cfg.model, student, cfg.data.seq_len, with_mtp).total
    per_device = result["achieved_flop_per_s"]["median"] / flops
    where = f"{path.name}: {result['device']}, {result['precision']}"
    if result["device"] == "cpu":
        where += "; no GPU measurement yet: run bench/distill_scale.py --device cuda"
    return (f"time to train {format_count(budget)} tokens: {format_duration(budget / (per_device * devices))} on "
            f"{devices} devices at {per_device:,.0f} tokens/s each (the FLOP rate of {where})")

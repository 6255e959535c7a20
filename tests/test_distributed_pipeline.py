"""Rank-aware stages with 2 CPU processes (gloo), launched as srun's tasks or by torchrun, against one process:
`slim calibrate` gives the same statistics, `slim run` under FSDP the same compressed and distilled student."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slim.harness.calibration.io import DEPTH_COUNTS, DEPTH_SUMS, MOE_COUNTS, MOE_SUMS, load_stats
from slim.harness.calibration.run import calibrate_teacher
from slim.harness.calibration.stats import CalibrationStats
from slim.harness.config.load import load_config
from slim.harness.data.packing import build_corpus_data
from slim.harness.models.build import build_model
from slim.harness.models.io import load_pretrained, save_pretrained
from slim.harness.models.mtp import build_mtp
from slim.harness.models.mtp_io import save_mtp
from slim.harness.pipeline import run_recipe
from tests.conftest import TINY_OVERRIDES
from tests.fixtures.distill_pair import TWO_LAYER_MODEL
from tests.fixtures.distributed_runs import LAUNCH_VARIABLES, LOGITS_TOL, RUN

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
# 10 samples in batches of 4, 4, 2: rank 0 calibrates the first batch, rank 1 the other two, and the probe set
# of expert_outputs (the first 200 tokens) spans both shares (128 + 72 tokens).
CALIBRATION = ["calibration.num_samples=10", "calibration.batch_size=4", "calibration.probe_tokens=200"]
# Every kind of statistic decides something: depth (block influence), width (eq 5), experts (reap importance,
# expert-output similarity, importance-weighted merges).
RECIPE = ["compress.depth.num_drop=1", "compress.depth.selector=block_influence", "compress.width.hidden_size=48",
          "compress.experts.num_experts=4", "compress.experts.reducer=partial_preserve",
          "compress.experts.criterion=reap", "compress.experts.similarity=expert_outputs"]
# Floating sums of 2 ranks add in another order than one process's: relative to the largest |value| of a sum.
SUM_TOL = 1e-12


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> tuple[Path, list[str]]:
    """(teacher dir, base overrides): a random-init 2-layer teacher with an MTP module and the corpus tokenizer."""
    root = tmp_path_factory.mktemp("distributed")
    base = [*TINY_OVERRIDES, *TWO_LAYER_MODEL, "data.seq_len=32", f"data.tokenizer={tokenizer_dir}", *CALIBRATION]
    cfg = load_config(base)
    model = build_model(cfg.model, seed=0)
    mtp = build_mtp(model)
    teacher_dir = save_pretrained(model, root / "teacher", build_corpus_data(cfg.data).tokenizer,
                                  extras=lambda directory: save_mtp(mtp, directory))
    return teacher_dir, [*base, f"compress.teacher={teacher_dir}"]


def _environment() -> dict[str, str]:
    """This process's environment without any launcher's variables, one thread per process, no W&B."""
    clean = {name: value for name, value in os.environ.items() if name not in LAUNCH_VARIABLES}
    return {**clean, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def srun_slim(command: str, *args: str, tasks: int = 2) -> list[str]:
    """`slim <command>` as `srun --ntasks-per-node <tasks>` starts it: one process per task, told its place by
    SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID. Returns each task's output."""
    port = str(_free_port())
    processes = []
    for task in range(tasks):
        env = {**_environment(), "SLURM_NTASKS": str(tasks), "SLURM_NTASKS_PER_NODE": str(tasks),
               "SLURM_PROCID": str(task), "SLURM_LOCALID": str(task), "SLURM_NODEID": "0",
               "SLURM_JOB_NAME": "slim-test", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        processes.append(subprocess.Popen([sys.executable, "-m", "slim.harness.cli.main", command, *args], cwd=REPO,
                                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [process.communicate(timeout=900)[0] for process in processes]
    for task, (process, output) in enumerate(zip(processes, outputs, strict=True)):
        assert process.returncode == 0, f"task {task}:\n{output[-3000:]}"
    return outputs


def torchrun_slim(command: str, *args: str, processes: int = 2) -> None:
    """`torchrun --standalone --nproc_per_node <processes> -m slim.harness.cli.main <command> ...`."""
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={processes}", "-m", "slim.harness.cli.main", command, *args],
                          cwd=REPO, env=_environment(), capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]


def _sums_and_counts(stats: CalibrationStats) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Every sum and count of `stats` by name."""
    sums = {f"moe.{index}.{name}": getattr(layer, name) for index, layer in stats.moe.items() for name in MOE_SUMS}
    counts = {f"moe.{index}.{name}": getattr(layer, name) for index, layer in stats.moe.items() for name in MOE_COUNTS}
    sums.update({f"norm.{name}": value for name, value in stats.norm_abs_sum.items()})
    counts.update({f"norm_tokens.{name}": value for name, value in stats.norm_tokens.items()})
    sums.update({f"depth.{name}": getattr(stats.depth, name) for name in DEPTH_SUMS})
    counts.update({f"depth.{name}": getattr(stats.depth, name) for name in DEPTH_COUNTS})
    return sums, counts


def test_two_process_calibration_equals_one_process(teacher, tmp_path):
    """srun with 2 tasks: each calibrates its share, the sums are all-reduced and rank 0 alone writes stats equal to one
    process's (floats within SUM_TOL of each sum's scale, token / sequence / probe counts exactly)."""
    _, base = teacher
    one = calibrate_teacher(load_config([*base, f"calibration.output={tmp_path / 'one.safetensors'}"]))
    outputs = srun_slim("calibrate", *base, f"calibration.output={tmp_path / 'two.safetensors'}")
    assert ["wrote" in output for output in outputs] == [True, False]  # two ranks, and rank 0 wrote the stats
    two = load_stats(tmp_path / "two.safetensors")
    (one_sums, one_counts), (two_sums, two_counts) = _sums_and_counts(one), _sums_and_counts(two)
    assert two_counts == one_counts
    assert {one_counts[f"moe.{index}.probe_tokens"] for index in one.moe} == {200}
    assert one_counts["depth.num_tokens"] == 320
    assert sorted(two_sums) == sorted(one_sums)
    worst = max(((two_sums[key] - value).abs().max() / value.abs().max().clamp_min(1e-300)).item()
                for key, value in one_sums.items())
    print(f"max over sums of max|2 processes - 1 process| / max|1 process| = {worst:.1e}")
    assert worst < SUM_TOL
    assert (two.fingerprint, two.tokenizer_fingerprint, two.data_fingerprint) == (
        one.fingerprint, one.tokenizer_fingerprint, one.data_fingerprint)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor in the directory's safetensors files (the model's and the MTP module's)."""
    return {f"{path.name}:{key}": tensor for path in sorted(directory.glob("*.safetensors"))
            for key, tensor in load_file(path).items()}


@pytest.mark.slow
def test_torchrun_slim_run_writes_the_one_process_student(teacher, tmp_path):
    """torchrun with 2 FSDP processes: calibrated together, compressed by rank 0, the student is the one-process
    student bit for bit, and the distilled student gives the one-process logits within test_fsdp's tolerance."""
    _, base = teacher

    def run_args(name: str) -> list[str]:
        return [*base, *RECIPE, *RUN, "train.max_steps=3", f"compress.output={tmp_path / name / 'student'}",
                f"distill.output={tmp_path / name / 'distilled'}", f"run_dir={tmp_path / name / 'run'}"]

    run_recipe(load_config(run_args("one")))
    torchrun_slim("run", *run_args("two"), "train.strategy=fsdp", "train.devices=2")
    one, two = tmp_path / "one", tmp_path / "two"
    one_weights, two_weights = _weights(one / "student"), _weights(two / "student")
    assert sorted(two_weights) == sorted(one_weights)
    assert all(torch.equal(two_weights[key], value) for key, value in one_weights.items())
    reports = [json.loads((root / "student" / "compression_report.json").read_text()) for root in (one, two)]
    selections = [{"kept_layers": report["kept_layers"], "kept_dims": report["kept_dims"],
                   "experts": {layer: {key: value for key, value in entry.items() if key != "scores"}
                               for layer, entry in report["experts"].items()}} for report in reports]
    assert selections[0] == selections[1]
    for layer, entry in reports[0]["experts"].items():  # the criterion's scores: all-reduced sums, equal to rounding
        assert entry["scores"] == pytest.approx(reports[1]["experts"][layer]["scores"], rel=1e-12)
    models = [load_pretrained(root / "distilled")[0] for root in (one, two)]
    input_ids = torch.arange(32).remainder(models[0].config.vocab_size).reshape(2, 16)
    with torch.no_grad():
        diff = (models[0](input_ids=input_ids, use_cache=False).logits
                - models[1](input_ids=input_ids, use_cache=False).logits).abs().max().item()
    print(f"max |logits 1 process - logits 2 torchrun FSDP processes| = {diff:.2e}")
    assert diff < LOGITS_TOL
    summary = json.loads((two / "run" / "run_summary.json").read_text())
    assert summary["distill"]["steps"] == 3


def _eval_result(run_dir: Path) -> dict:
    """eval_summary.json without what differs between any two runs (the software stamp; nothing is timed here)."""
    summary = json.loads((run_dir / "eval_summary.json").read_text())
    summary.pop("software", None)
    return summary


@pytest.mark.slow
def test_torchrun_slim_eval_finishes_with_the_one_process_summary(teacher, tmp_path):
    """torchrun with 2 processes: rank 0 evaluates (lm-eval, perplexity, MTP acceptance) while rank 1 waits, and the
    summary equals one process's. Its perplexity metric used to wait in a collective rank 1 never joined (a
    deadlock until the time limit); torchrun_slim's timeout turns a hang into a failure."""
    teacher_dir, base = teacher
    args = [*base, f"eval.model={teacher_dir}", "eval.tasks=[kjv_cloze]", "eval.limit=4", "eval.perplexity_batches=2",
            "eval.mtp.num_prompts=1", "eval.batch_size=4", "eval.efficiency.enabled=false"]
    subprocess.run([sys.executable, "-m", "slim.harness.cli.main", "eval", *args, f"run_dir={tmp_path / 'one'}"],
                   cwd=REPO, env=_environment(), check=True, capture_output=True, timeout=900)
    torchrun_slim("eval", *args, f"run_dir={tmp_path / 'two'}")
    one, two = _eval_result(tmp_path / "one"), _eval_result(tmp_path / "two")
    assert one["perplexity"] > 1 and one["lm_eval"]
    assert two == one


def _children(pid: int) -> list[int]:
    """The live child processes of `pid` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    """`pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_killing_torchrun_leaves_no_worker(teacher, tmp_path):
    """kill -9 of torchrun while its 2 workers run `slim eval`: both workers die with it (PR_SET_PDEATHSIG), none is
    left holding the rendezvous port. Waits on events (workers started, workers gone), never on a fixed delay."""
    teacher_dir, base = teacher
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
         "slim.harness.cli.main", "eval", *base, f"eval.model={teacher_dir}", "eval.tasks=[]",
         "eval.perplexity_batches=1000", f"run_dir={tmp_path / 'run'}"],
        cwd=REPO, env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while len(workers := _children(launcher.pid)) < 2:
            assert launcher.poll() is None and time.monotonic() < deadline, "torchrun never started 2 workers"
            time.sleep(0.2)
        launcher.kill()
        launcher.wait()
        while alive := [pid for pid in workers if _alive(pid)]:
            assert time.monotonic() < deadline, f"workers {alive} outlived torchrun"
            time.sleep(0.2)
    finally:
        if launcher.poll() is None:
            launcher.kill()


def _slim(command: str, *args: str) -> None:
    """`slim <command>` in one process (no launcher), with _environment()'s settings."""
    done = subprocess.run([sys.executable, "-m", "slim.harness.cli.main", command, *args], cwd=REPO,
                          env=_environment(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]


@pytest.mark.slow
def test_torchrun_compress_and_cache_teacher_write_the_one_process_files(teacher, tmp_path):
    """torchrun with 2 processes: `slim compress` (calibrating on the fly, both ranks) writes the one-process student
    bit for bit; `slim cache-teacher` splits the shards between the ranks and writes the one-process cache (manifest
    and every shard equal). 3,000 lines at 256 tokens a sequence make 2 shards, one per rank."""
    teacher_dir, base = teacher
    with gzip.open(REPO / "data/corpus/kjv.txt.gz", "rt") as source:
        (tmp_path / "corpus.txt").write_text("".join(next(source) for _ in range(3000)))
    for name, launch in (("one", _slim), ("two", torchrun_slim)):
        launch("compress", *base, *RECIPE, f"compress.output={tmp_path / name / 'student'}")
        launch("cache-teacher", *base, f"data.path={tmp_path / 'corpus.txt'}", "data.seq_len=256",
               f"distill.teacher={teacher_dir}", f"distill.teacher_cache={tmp_path / name / 'cache'}",
               "distill.teacher_cache_top_k=8", "train.batch_size=4")
    one, two = _weights(tmp_path / "one" / "student"), _weights(tmp_path / "two" / "student")
    assert sorted(one) == sorted(two) and all(torch.equal(two[key], value) for key, value in one.items())
    caches = [tmp_path / name / "cache" for name in ("one", "two")]
    assert (caches[0] / "manifest.json").read_text() == (caches[1] / "manifest.json").read_text()
    shards = sorted(path.name for path in caches[0].glob("shard-*.safetensors"))
    assert len(shards) == 2 and shards == sorted(path.name for path in caches[1].glob("shard-*.safetensors"))
    for shard in shards:
        first, second = (load_file(cache / shard) for cache in caches)
        assert all(torch.equal(first[key], second[key]) for key in ("ids", "logprobs")), shard

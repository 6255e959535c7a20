"""docs/scale.md's sbatch script, run as written under an emulated Slurm on the shipped tiny teacher: a stop signal
mid-training ends the job with 75 and a requeue; the requeued job skips calibration and resumes where it stopped.

The emulation is two executables put first on PATH: `srun` starts SLURM_NTASKS_PER_NODE local tasks with the
SLURM_* variables srun gives its tasks (as tests/test_distributed_pipeline.py's srun_slim does) and forwards SIGUSR1
and SIGTERM to them, as srun does; `scontrol` records its arguments.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.distributed_runs import LAUNCH_VARIABLES

pytestmark = [pytest.mark.e2e, pytest.mark.docs, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = re.search(r"```bash cluster\n(#!/bin/bash\n.*?)```", (REPO / "docs/scale.md").read_text(), re.DOTALL)
FAKE_SRUN = """#!{python}
import os, signal, socket, subprocess, sys
command = [arg for arg in sys.argv[1:] if not arg.startswith("--")]
tasks = int(os.environ["SLURM_NTASKS_PER_NODE"])
with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = str(probe.getsockname()[1])
workers = [subprocess.Popen(command, env={{**os.environ, "SLURM_NTASKS": str(tasks), "SLURM_PROCID": str(task),
                                          "SLURM_LOCALID": str(task), "SLURM_NODEID": "0",
                                          "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}})
           for task in range(tasks)]
for signum in (signal.SIGUSR1, signal.SIGTERM):
    signal.signal(signum, lambda signum, frame: [worker.send_signal(signum) for worker in workers])
sys.exit(max(worker.wait() for worker in workers))
"""
FAKE_SCONTROL = "#!/bin/sh\necho \"$@\" >> \"$SCONTROL_LOG\"\n"
RECIPE = """compress: {{depth: {{num_drop: 2, selector: last_n}}, experts: {{num_experts: 8}}}}
calibration: {{num_samples: 16, batch_size: 8, probe_tokens: 128}}
data: {{seq_len: 64}}
distill: {{loss: kd}}
train: {{max_steps: {steps}, batch_size: 4, warmup_steps: 1, val_every: 100, val_batches: 1, log_every: 1,
        accelerator: cpu, strategy: fsdp, num_threads: 1}}
tracking: {{wandb: false}}
"""


def _job(tmp_path: Path, steps: int) -> tuple[list[str], dict[str, str]]:
    """(command, environment) of one submission of the script: the recipe budget `steps`, fake srun and scontrol."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("srun", FAKE_SRUN.format(python=sys.executable)), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "recipe.yaml").write_text(RECIPE.format(steps=steps))
    (tmp_path / "job.sh").write_text(SCRIPT.group(1))
    clean = {name: value for name, value in os.environ.items() if name not in LAUNCH_VARIABLES}
    env = {**clean, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "slim-docs",
           "SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "2", "SLURM_CPUS_PER_TASK": "1", "WANDB_MODE": "disabled",
           "RUN": str(tmp_path / "run"), "RECIPE": str(tmp_path / "recipe.yaml"),
           "TEACHER": str(REPO / "assets/tiny-teacher"), "SLIM": str(Path(sys.prefix) / "bin" / "slim"),
           "SCONTROL_LOG": str(tmp_path / "scontrol.log")}
    return ["bash", str(tmp_path / "job.sh")], env


def _logged_steps(run_dir: Path) -> dict[int, list[int]]:
    """metrics version -> the training steps it logged, for every metrics.csv under `run_dir`."""
    found = {}
    for path in run_dir.rglob("metrics/version_*/metrics.csv"):
        with open(path) as handle:
            found[int(path.parent.name.split("_")[1])] = sorted(
                {int(row["step"]) for row in csv.DictReader(handle) if row.get("train/loss")})
    return found


def test_the_sbatch_script_requeues_on_the_signal_and_resumes(tmp_path):
    assert SCRIPT, "docs/scale.md has no ```bash cluster fence holding a #!/bin/bash script"
    command, env = _job(tmp_path, steps=400)
    job = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 900
    while not any(_logged_steps(tmp_path / "run").values()):  # training has started (a step is logged)
        assert job.poll() is None, job.communicate()[0][-4000:]
        assert time.monotonic() < deadline, "no training step was logged"
        time.sleep(0.5)
    stats = tmp_path / "run" / "stats.safetensors"
    stats_written = stats.stat().st_mtime_ns
    job.send_signal(signal.SIGUSR1)  # what `sbatch --signal=B:USR1@300` sends the script
    output = job.communicate(timeout=900)[0]
    assert job.returncode == 75, output[-4000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    stopped = int(re.search(r"stopped on SIGUSR1 after step (\d+)", output).group(1))
    assert 0 < stopped < 400

    command, env = _job(tmp_path, steps=stopped + 2)  # the requeued job (a smaller budget keeps the test short)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert stats.stat().st_mtime_ns == stats_written  # calibration skipped: the stats were there
    versions = _logged_steps(tmp_path / "run")
    assert versions[max(versions)] == [stopped, stopped + 1]  # resumed at the step after the signal
    assert (tmp_path / "run" / "distilled" / "config.json").is_file()

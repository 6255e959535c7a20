"""One rank of tests/test_sharded_loading.py: load a model directory the sharded way over gloo, then report.

Usage: RANK=r WORLD_SIZE=2 MASTER_ADDR=... MASTER_PORT=... python sharded_load_worker.py <model_dir> <out_dir>
Writes <out_dir>/rank<r>.json: this rank's RSS before loading and its peak while loading (MiB, from
/proc/self/status with the peak reset just before loading, after the imports), and on rank 0 how the sharded
model compares to `load_pretrained` + `load_mtp` (the normal load): gathered weights, buffers and logits, in
fp32 and as a bf16 teacher.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from transformers import PreTrainedModel

from slim.harness.models.io import empty_model, load_pretrained
from slim.harness.models.mtp import MTPModule
from slim.harness.models.mtp_io import load_mtp
from slim.harness.training.fsdp import full_state_dict, shard_with_mtp
from slim.harness.training.precision import cast_parameters
from slim.harness.training.sharded_load import empty_with_mtp, fill_pretrained


def memory_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def load(model_dir: str, mesh: DeviceMesh, dtype: torch.dtype | None) -> tuple[PreTrainedModel, MTPModule]:
    """The sharded load as DistillModule does it: model and MTP module on the meta device, cast to `dtype`
    (None: the checkpoint's), sharded, then filled from rank 0."""
    model, mtp = empty_with_mtp(model_dir, with_mtp=True)
    cast_parameters((model, mtp), dtype)
    shard_with_mtp(model, mtp, mesh)
    fill_pretrained(model, mtp, model_dir, mesh, seed=0)
    return model, mtp


def compare(model: PreTrainedModel, mtp: MTPModule, model_dir: str, dtype: torch.dtype | None) -> dict[str, object]:
    """Every rank gathers and runs the sharded model; rank 0 compares it with the normal load (cast to `dtype`)."""
    states = full_state_dict(model), full_state_dict(mtp)
    input_ids = torch.arange(24).remainder(model.config.vocab_size).reshape(2, 12)
    with torch.no_grad():
        logits = model(input_ids=input_ids, use_cache=False).logits
    if dist.get_rank() != 0:
        return {}
    reference, _ = load_pretrained(model_dir)
    reference_mtp = load_mtp(reference, model_dir)
    cast_parameters((reference, reference_mtp), dtype)
    with torch.no_grad():
        reference_logits = reference(input_ids=input_ids, use_cache=False).logits
    references = reference, reference_mtp
    unequal = [name for state, module in zip(states, references, strict=True)
               for name, tensor in module.state_dict().items()
               if not (state[name].dtype == tensor.dtype and torch.equal(state[name], tensor))]
    buffers = dict(model.named_buffers())
    return {
        "keys_match": [set(state) for state in states] == [set(module.state_dict()) for module in references],
        "unequal_weights": unequal,
        "unequal_buffers": [name for name, buffer in reference.named_buffers()
                            if not (buffers[name].dtype == buffer.dtype and torch.equal(buffers[name], buffer))],
        "max_logits_diff": (logits.float() - reference_logits.float()).abs().max().item(),
    }


def main(model_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    empty_model(model_dir)  # imports the family's modeling code (~80 MiB of code and state, not weights) first
    rss_before = memory_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    model, mtp = load(model_dir, mesh, None)
    report = {"rss_before_mib": rss_before, "peak_mib": memory_mib("VmHWM")}
    report["fp32"] = compare(model, mtp, model_dir, None)
    del model, mtp
    report["bf16"] = compare(*load(model_dir, mesh, torch.bfloat16), model_dir, torch.bfloat16)
    Path(out_dir, f"rank{dist.get_rank()}.json").write_text(json.dumps(report, indent=2))
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(*sys.argv[1:3])

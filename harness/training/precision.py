"""`train.precision`: the dtypes of the trained and the frozen models, and who does the bf16 compute.

"32-true": every model in its checkpoint's dtype. "bf16-mixed": the trained model keeps fp32 master weights
(the optimizer steps on them) and computes in bf16; a frozen model (the teacher, no optimizer) is cast to bf16
once. Under FSDP the bf16 compute is FSDP2's `MixedPrecisionPolicy` (bf16 all-gathered parameters, fp32
gradient reduce-scatter) and Lightning runs at "32-true", so it does not autocast on top (torchtitan does the
same); without FSDP it is Lightning's bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy

from slim.harness.config.schema import TrainConfig

BF16_MIXED = "bf16-mixed"


def master_dtype(precision: str) -> torch.dtype | None:
    """The dtype trained weights are kept in; None keeps the checkpoint's."""
    return torch.float32 if precision == BF16_MIXED else None


def frozen_dtype(precision: str) -> torch.dtype | None:
    """The dtype a frozen model runs in; None keeps the checkpoint's."""
    return torch.bfloat16 if precision == BF16_MIXED else None


def mixed_precision_policy(precision: str) -> MixedPrecisionPolicy:
    """FSDP2's policy for trained modules: bf16 compute with fp32 gradient reduction under bf16-mixed, else none."""
    if precision == BF16_MIXED:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def trainer_precision(cfg: TrainConfig) -> str:
    """Lightning's precision flag: "32-true" under FSDP, whose MixedPrecisionPolicy already computes in bf16."""
    return "32-true" if cfg.strategy == "fsdp" else cfg.precision


def cast_parameters(modules: Iterable[nn.Module | None], dtype: torch.dtype | None) -> None:
    """Parameters of `modules` (None entries skipped) to `dtype` in place; buffers keep their dtype (rotary
    `inv_freq` stays fp32, as transformers keeps it in a bf16 model). No-op for dtype None."""
    if dtype is None:
        return
    for module in modules:
        for param in [] if module is None else module.parameters():
            param.data = param.data.to(dtype)

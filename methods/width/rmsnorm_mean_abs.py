"""`rmsnorm_mean_abs` (SlimQwen eq 5): a hidden dim matters as much as the RMSNorms write into it.

I_k = average over every hidden-size RMSNorm of the model of Mean(|RMSNorm(X)|)_k, the per-norm mean
absolute output over calibration tokens; the `target` dims with the largest I_k are kept everywhere
the hidden size appears (embeddings, mixers, experts, router, norms, LM head, MTP).
"""

from __future__ import annotations

import torch

from slim.harness.calibration.stats import CalibrationStats
from slim.harness.compression.method_support import require_stats, scored_by
from slim.harness.compression.ranking import top
from slim.harness.compression.width_selectors import width_selectors
from slim.harness.errors import UserError


def hidden_importance(stats: CalibrationStats | None, hidden_size: int) -> torch.Tensor:
    """I [hidden_size] of eq 5: mean over norms of (sum_x |RMSNorm(x)| / tokens), float64."""
    stats = require_stats(stats, "rmsnorm_mean_abs", "compress.width.selector")
    if not stats.norm_abs_sum:
        raise UserError("compress.width.selector: 'rmsnorm_mean_abs' needs RMSNorm statistics; "
                        "the calibration has none")
    per_norm = []
    for name, abs_sum in stats.norm_abs_sum.items():
        if abs_sum.numel() != hidden_size or stats.norm_tokens.get(name, 0) <= 0:
            raise UserError(f"compress.width.selector: norm statistics {name!r} ({abs_sum.numel()} dims, "
                            f"{stats.norm_tokens.get(name, 0)} tokens) do not fit hidden size {hidden_size}")
        per_norm.append(abs_sum.double() / stats.norm_tokens[name])
    return torch.stack(per_norm).mean(dim=0)


@width_selectors.register("rmsnorm_mean_abs")
@scored_by(hidden_importance)
def rmsnorm_mean_abs(stats: CalibrationStats, hidden_size: int, target: int) -> list[int]:
    """Keep the target hidden dims with the largest mean |RMSNorm output| averaged over all norms (eq 5)."""
    if not 1 <= target <= hidden_size:
        raise UserError(f"compress.width.hidden_size: must be in [1, {hidden_size}], got {target}")
    return top(hidden_importance(stats, hidden_size), target)

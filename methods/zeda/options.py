"""`zeda.*` config keys: ZEDA's options, joined into the config schema at load (harness/config/sections.py)."""

from __future__ import annotations

from dataclasses import dataclass

from slim.harness.config.sections import config_options


@config_options("zeda")
@dataclass
class ZedaConfig:
    """`slim adapt zeda` (methods/zeda, arXiv 2605.18643): inject zero-output experts into the original MoE, then
    two-stage self-distillation from it (stage 1: routers only, stage 2: everything) with a group-level balancing
    loss."""

    teacher: str = "assets/tiny-teacher"  # the original static MoE: source of the student and its frozen KD teacher
    # the adapted HF directory; "" = <run_dir>/model (reload with slim.harness.models.io.load_pretrained)
    output: str = ""
    num_zero_experts: int = 8  # zero experts injected per MoE layer, >= 1
    group_size: int = 0  # real experts per balancing group, must divide the expert count; 0 = one group of all
    balance_weight: float = 0.1  # weight of the group balancing loss, >= 0 (replaces model.router_aux_loss_coef)
    router_share: float = 0.3  # share of train.max_steps in stage 1 (routers only), in [0, 1]
    init_bias: float = 0.0  # initial bias of the zero-expert router columns (lower = fewer zero routes at start)
    loss: str = "kd"  # loss mix key (methods/losses) of both stages; KD targets come from zeda.teacher

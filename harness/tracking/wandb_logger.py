"""The W&B logger every training run gets: offline by default (no network, `wandb sync`-able later),
the resolved config attached, grouped and named from `tracking`, nothing at all when tracking is off."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf

from harness.config.schema import SlimConfig, TrackingConfig
from harness.errors import UserError

MODES = ("offline", "online", "disabled")


def validate_tracking_config(cfg: TrackingConfig) -> None:
    if cfg.mode not in MODES:
        raise UserError(f"tracking.mode: unknown {cfg.mode!r}; valid: {', '.join(MODES)}")


def tracking_enabled(cfg: TrackingConfig) -> bool:
    return cfg.wandb and cfg.mode != "disabled"


class RunLogger(WandbLogger):
    """Lightning's WandbLogger that finishes its W&B run when the fit ends: otherwise the next fit in the
    same process (a progressive stage, a search trial) would silently log into this run."""

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is not None:
            self._experiment.finish(exit_code=0 if status == "success" else 1)


def wandb_loggers(cfg: SlimConfig) -> list[Logger]:
    """[RunLogger] writing `<tracking.dir or run_dir>/wandb/<mode>-run-*`, or [] when tracking is off."""
    tracking = cfg.tracking
    validate_tracking_config(tracking)
    if not tracking_enabled(tracking):
        return []
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    save_dir = Path(tracking.dir or cfg.run_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    logger = RunLogger(
        save_dir=str(save_dir),
        project=tracking.project,
        group=tracking.group or None,
        name=tracking.name or Path(cfg.run_dir).name,
        mode=tracking.mode,
        config=OmegaConf.to_container(OmegaConf.structured(cfg)),
        # no console capture, system sampling, git or code snapshot: a fast start and clean output
        settings=wandb.Settings(console="off", x_disable_stats=True, disable_git=True, save_code=False, silent=True),
    )
    logger._wandb_init.pop("anonymous")  # Lightning always passes it; wandb >= 0.2x warns it has no effect
    return [logger]

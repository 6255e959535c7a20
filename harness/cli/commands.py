"""Implementations of the `slim` subcommands; each turns parsed args into one harness function call."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from harness.config.load import load_config, to_yaml
from harness.config.schema import SlimConfig


def _config(args: argparse.Namespace) -> SlimConfig:
    return load_config(args.overrides, files=args.config)


def pretrain(args: argparse.Namespace) -> int:
    """Pretrain the teacher on the shipped corpus; writes <run_dir>/model as a Hugging Face directory."""
    from harness.training.pretrain import pretrain as run_pretrain

    summary = run_pretrain(_config(args))
    print(json.dumps(asdict(summary), indent=2))
    return 0


def params(args: argparse.Namespace) -> int:
    """Build the configured model on the meta device and report total / active parameters."""
    from harness.models.build import build_model, validate_model_config
    from harness.models.params import count_parameters, format_count

    cfg = _config(args)
    validate_model_config(cfg.model)
    count = count_parameters(build_model(cfg.model, device="meta"))
    print(f"total {format_count(count.total)}  active {format_count(count.active)}")
    print(json.dumps(asdict(count), indent=2))
    return 0


def show_config(args: argparse.Namespace) -> int:
    """Print the fully resolved config (defaults, presets, files and overrides applied)."""
    print(to_yaml(_config(args)), end="")
    return 0


def methods(args: argparse.Namespace) -> int:
    """List every registered method (criteria, similarities, reducers, depth/width selectors, families)."""
    from harness.methods_catalog import format_catalog

    print(format_catalog())
    return 0

"""Plug-ins declare their own options (harness/config/sections.py): the core schema names no method, a declaration
joins an existing node or makes a new one, clashes are refused, resolved configs pickle into spawned workers, and
the engine's sources name no adaptation."""

from __future__ import annotations

import multiprocessing
import pickle
import re
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from slim.harness.compression.expert_reducers import reducers
from slim.harness.compression.recipe import configured
from slim.harness.config.load import load_config, to_yaml
from slim.harness.config.schema import ExpertTarget, SlimConfig
from slim.harness.config.sections import _extend, root_schema
from slim.harness.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class _NewSection:
    size: int = 3


@dataclass
class _JoinedOptions:
    sharpness: float = 0.5


@dataclass
class _Clashing:
    reducer: str = "mine"


def test_core_schema_names_no_plugin_option_and_the_loaded_one_has_them():
    """`zeda.*` and partial_preserve's keys come from their own files, not from harness/config/schema.py."""
    assert not hasattr(SlimConfig(), "zeda")
    assert {"intact_ratio", "base_choice"}.isdisjoint(item.name for item in fields(ExpertTarget))
    cfg = load_config(["zeda.num_zero_experts=3", "compress.experts.intact_ratio=0.25"])
    assert (cfg.zeda.num_zero_experts, cfg.compress.experts.intact_ratio) == (3, 0.25)
    assert isinstance(cfg, SlimConfig) and isinstance(cfg.compress.experts, ExpertTarget)
    assert type(cfg) is root_schema()


def test_a_declaration_joins_a_node_or_makes_one_and_overrides_are_typed():
    schema = _extend(SlimConfig, [(("compress", "experts"), _JoinedOptions), (("extra", "inner"), _NewSection)], ())
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema),
                                              OmegaConf.from_dotlist(["compress.experts.sharpness=0.9",
                                                                      "extra.inner.size=7", "train.lr=0.1"])))
    assert (cfg.compress.experts.sharpness, cfg.extra.inner.size, cfg.train.lr) == (0.9, 7, 0.1)
    assert cfg.compress.experts.reducer == ExpertTarget().reducer  # the core node keeps its own fields
    with pytest.raises(Exception, match="size"):
        OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(["extra.inner.size=big"]))


def test_a_declaration_that_clashes_with_a_core_key_is_refused():
    with pytest.raises(ValueError, match="'compress.experts.reducer'"):
        _extend(SlimConfig, [(("compress", "experts"), _Clashing)], ())
    with pytest.raises(ValueError, match="'train.lr' is a value"):
        _extend(SlimConfig, [(("train", "lr"), _NewSection)], ())


def _yaml_in_child(blob: bytes, queue: multiprocessing.Queue) -> None:
    queue.put(to_yaml(pickle.loads(blob)))


def test_a_resolved_config_pickles_into_a_spawned_process():
    """Grid and search workers are spawned: the generated classes must be found by name in a fresh interpreter."""
    cfg = load_config(["zeda.group_size=4", "compress.experts.base_choice=most_similar_to_rest"])
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_yaml_in_child, args=(pickle.dumps(cfg), queue))
    child.start()
    received = queue.get(timeout=300)
    child.join(timeout=60)
    assert child.exitcode == 0 and received == to_yaml(cfg)


def test_reducer_options_bind_by_name_and_an_undeclared_one_is_refused(monkeypatch):
    cfg = load_config(["compress.experts.reducer=partial_preserve", "compress.experts.intact_ratio=0.25"])
    bound = configured(cfg.compress, "reducer")
    assert bound.keywords == {"base_choice": "next_important", "intact_ratio": 0.25}

    def needs_option(importance, similarity, num_keep, *, temperature: float = 1.0):
        """A reducer whose option no file declares."""

    monkeypatch.setitem(reducers._entries, "needs_option", needs_option)
    cfg.compress.experts.reducer = "needs_option"
    with pytest.raises(UserError, match="compress.experts.reducer: 'needs_option' takes options that no config "
                                        "declares: temperature"):
        configured(cfg.compress, "reducer")


def test_the_engine_names_no_adaptation():
    """The house rule: outside its CLI, harness/ reaches ZEDA only through generic hooks."""
    named = [str(path.relative_to(ROOT)) for path in (ROOT / "harness").rglob("*.py")
             if "cli" not in path.relative_to(ROOT / "harness").parts
             and re.search("zeda", path.read_text(), re.IGNORECASE)]
    assert named == []

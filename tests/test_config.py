"""Typed config loading: presets, overrides and one-line errors that name the bad key."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness.config.load import CONF_DIR, load_config, preset_names
from harness.config.schema import ModelConfig, SlimConfig
from harness.errors import UserError


def test_overrides_are_typed_and_applied():
    """`key=value` overrides reach the dataclass with the schema's types."""
    cfg = load_config(["train.max_steps=7", "train.betas=[0.8,0.9]", "model.num_experts=32"])
    assert isinstance(cfg, SlimConfig)
    assert cfg.train.max_steps == 7 and isinstance(cfg.train.max_steps, int)
    assert tuple(cfg.train.betas) == (0.8, 0.9)
    assert cfg.model.num_experts == 32


def test_unknown_key_names_it_and_lists_valid_keys():
    """A typo is an error naming the key, suggesting the closest one and listing the valid keys."""
    with pytest.raises(UserError) as err:
        load_config(["train.max_step=5"])
    message = str(err.value)
    assert "'train.max_step'" in message and "did you mean 'max_steps'" in message
    assert "batch_size" in message and "\n" not in message


def test_unknown_section_lists_top_level_keys():
    """An unknown top-level key lists the sections."""
    with pytest.raises(UserError, match=r"'trian'.*valid keys here: run_dir, model, data, train"):
        load_config(["trian.lr=1"])


def test_mistyped_value_names_the_key():
    """A value of the wrong type names the key and the expected type."""
    with pytest.raises(UserError, match=r"'train.max_steps'.*Integer"):
        load_config(["train.max_steps=abc"])


def test_unknown_preset_lists_presets():
    """`model=<name>` must name a file in conf/model; the error lists them."""
    with pytest.raises(UserError, match=r"unknown preset 'huge'; valid: .*tiny"):
        load_config(["model=huge"])


def test_malformed_override_and_missing_file():
    """An override without `=` and a missing YAML file are one-line errors."""
    with pytest.raises(UserError, match="expected key=value"):
        load_config(["train.max_steps"])
    with pytest.raises(UserError, match="file not found"):
        load_config(files=["/nonexistent/recipe.yaml"])


def test_yaml_file_then_override_precedence(tmp_path: Path):
    """Files apply in order, and command-line overrides win over files."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  max_steps: 11\n  lr: 0.5\n")
    cfg = load_config(["train.lr=0.25"], files=[str(recipe)])
    assert cfg.train.max_steps == 11 and cfg.train.lr == 0.25


PRESET_GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name in SlimConfig.__dataclass_fields__)


@pytest.mark.parametrize("group", PRESET_GROUPS)
def test_every_shipped_preset_validates(group: str):
    """Every preset in conf/<section>/ loads against the schema, so presets cannot rot."""
    for name in preset_names(group):
        cfg = load_config([f"{group}={name}"])
        assert getattr(cfg, group) is not None


@pytest.mark.parametrize("recipe", sorted((CONF_DIR / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_validates(recipe: Path):
    """Every recipe in conf/recipes/ is a valid partial config."""
    assert isinstance(load_config(files=[str(recipe)]), SlimConfig)


def test_model_preset_only_overrides_schema_fields():
    """conf/model/*.yaml contain only ModelConfig fields."""
    valid = set(OmegaConf.structured(ModelConfig).keys())
    for name in preset_names("model"):
        keys = set(OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml").keys())
        assert keys <= valid, keys - valid

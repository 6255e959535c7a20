"""Typed config loading: presets, overrides and one-line errors that name the bad key."""

import re
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from slim.harness.config.load import CONF_DIR, load_config, preset_names
from slim.harness.config.schema import RANGE, REGISTRY, ModelConfig, Range, SlimConfig
from slim.harness.errors import UserError
from slim.harness.plugins import load_plugins
from slim.harness.registry import all_registries
from slim.harness.training.distill import validate_distill_config


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
    """Every preset in conf/<section>/ loads against the schema and its every value reaches the resolved config, so
    presets cannot rot (a value the schema coerces or a key it drops would differ)."""
    for name in preset_names(group):
        resolved = OmegaConf.structured(getattr(load_config([f"{group}={name}"]), group))
        for key, value in OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{name}.yaml")).items():
            assert OmegaConf.to_container(OmegaConf.create({"v": resolved[key]}))["v"] == value, (name, key)


def registry_fields(node: object, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted field, entry-point group) of every field of the resolved config that names a registry entry."""
    found = []
    for spec in fields(node):
        value = getattr(node, spec.name)
        if is_dataclass(value):
            found += registry_fields(value, f"{prefix}{spec.name}.")
        elif REGISTRY in spec.metadata:
            found.append((f"{prefix}{spec.name}", spec.metadata[REGISTRY]))
    return found


@pytest.mark.parametrize("recipe", sorted((CONF_DIR / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_validates(recipe: Path):
    """Every recipe in conf/recipes/ loads, and every method it names is a registered entry of its registry."""
    cfg = load_config(files=[str(recipe)])
    load_plugins()  # every registry's module, so each registry exists
    registries = {registry.group: registry for registry in all_registries().values()}
    for dotted, group in registry_fields(cfg):
        value = OmegaConf.select(OmegaConf.structured(cfg), dotted)
        assert value in registries[group].keys(), (dotted, value)


REGISTRY_FIELDS = registry_fields(SlimConfig())


def test_the_registry_backed_fields_are_the_method_keys():
    """Every method key of the schema is checked at load (a new key without its registry would not be)."""
    assert {dotted for dotted, _ in REGISTRY_FIELDS} >= {
        "model.family", "data.source", "compress.depth.selector", "compress.width.selector", "compress.experts.reducer",
        "compress.experts.criterion", "compress.experts.similarity", "compress.plan", "distill.loss",
        "distill.lambda_schedule", "distill.beta_schedule", "distill.kd_kernel"}


@pytest.mark.parametrize("dotted", [dotted for dotted, _ in REGISTRY_FIELDS])
def test_a_misspelt_method_key_fails_at_load_naming_the_entry(dotted: str):
    """One letter doubled at the end of the default is refused when the config loads, with the did-you-mean line."""
    default = OmegaConf.select(OmegaConf.structured(SlimConfig()), dotted)
    with pytest.raises(UserError) as err:
        load_config([f"{dotted}={default}{default[-1]}"])
    message = str(err.value)
    assert message.startswith(f"{dotted}: unknown ") and f"(did you mean {default!r}?)" in message
    assert "\n" not in message


def test_model_preset_only_overrides_schema_fields():
    """conf/model/*.yaml contain only ModelConfig fields."""
    valid = set(OmegaConf.structured(ModelConfig).keys())
    for name in preset_names("model"):
        keys = set(OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml").keys())
        assert keys <= valid, keys - valid


def test_recipe_derives_from_its_base(tmp_path: Path):
    """`base:` applies the named file (relative to the recipe) first, then the recipe's own keys; a cycle is refused."""
    (tmp_path / "parent.yaml").write_text("train:\n  lr: 0.5\n  max_steps: 9\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text("base: ../parent.yaml\ntrain:\n  max_steps: 3\n")
    cfg = load_config(files=[str(tmp_path / "sub" / "child.yaml")])
    assert (cfg.train.lr, cfg.train.max_steps) == (0.5, 3)
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(UserError, match="a cycle"):
        load_config(files=[str(tmp_path / "a.yaml")])


@pytest.mark.parametrize(("variant", "batch", "tokens"), [("120b", 512, 120e9), ("400b", 1024, 400e9)])
def test_paper_recipe_budgets(variant: str, batch: int, tokens: float):
    """The 23A2B budget variants carry sec 4.1 / Table 7 on top of the base recipe, validate as a distillation
    config, and train on their token budget to within one step."""
    cfg = load_config(files=[str(CONF_DIR / "recipes" / f"qwen3-next-23a2b-{variant}.yaml")])
    train, distill = cfg.train, cfg.distill
    assert (train.batch_size, train.lr, train.warmup_steps) == (batch, 4e-4, 2000)
    assert train.lr * train.min_lr_ratio == pytest.approx(3e-5)
    assert (train.precision, train.strategy, train.activation_checkpointing) == ("bf16-mixed", "fsdp", True)
    assert (distill.loss, distill.lambda_schedule, distill.lambda_start,
            distill.lambda_end) == ("full", "linear", 1, 0.75)
    assert (distill.beta_schedule, distill.beta_start, distill.beta_end) == ("cosine", 0.3, 0.1)
    assert cfg.compress.experts.num_experts == 256  # the base recipe's cut
    step_tokens = train.batch_size * cfg.data.seq_len
    assert 0 <= train.max_steps * step_tokens - tokens < step_tokens
    validate_distill_config(cfg)


@pytest.mark.parametrize(("old", "new"), [("data.corpus_path", "data.path"), ("data.tokenizer_dir", "data.tokenizer")])
def test_renamed_keys_name_the_new_key(old: str, new: str, tmp_path: Path):
    """An old key, as an override or in a YAML file, is one line naming the key that replaced it."""
    with pytest.raises(UserError, match=rf"^config key '{old}' was renamed to '{new}'$"):
        load_config([f"{old}=x"])
    recipe = tmp_path / "old.yaml"
    recipe.write_text(f"data:\n  {old.split('.')[1]}: x\n")
    with pytest.raises(UserError, match=rf"^config key '{old}' was renamed to '{new}'$"):
        load_config(files=[str(recipe)])


def test_slim_max_steps_caps_the_step_budget(monkeypatch: pytest.MonkeyPatch):
    """SLIM_MAX_STEPS=N caps train.max_steps at N, scales the warmup down and keeps at most two validations; a
    budget already within N is left alone; a bad value is one line naming the variable."""
    monkeypatch.setenv("SLIM_MAX_STEPS", "12")
    train = load_config(["train.max_steps=1200", "train.warmup_steps=300", "train.val_every=100"]).train
    assert (train.max_steps, train.warmup_steps, train.val_every) == (12, 3, 6)
    train = load_config(["train.max_steps=8", "train.warmup_steps=2", "train.val_every=4"]).train
    assert (train.max_steps, train.warmup_steps, train.val_every) == (8, 2, 4)
    monkeypatch.setenv("SLIM_MAX_STEPS", "0")
    with pytest.raises(UserError, match=r"SLIM_MAX_STEPS='0': need an integer >= 1"):
        load_config()


def _ranged_fields(cls: type, prefix: str = "") -> list[tuple[str, Range]]:
    """(dotted key, range) of every field of the config tree under `cls` that declares a range."""
    found = []
    for spec in fields(cls):
        if is_dataclass(spec.default_factory):  # a section
            found += _ranged_fields(spec.default_factory, f"{prefix}{spec.name}.")
        elif RANGE in spec.metadata:
            found.append((f"{prefix}{spec.name}", spec.metadata[RANGE]))
    return found


def _outside(bounds: Range) -> float:
    """A value just outside `bounds`."""
    if bounds.low is not None:
        return bounds.low - 1 if bounds.low_inclusive else bounds.low
    return bounds.high + 1 if bounds.high_inclusive else bounds.high


def test_every_ranged_field_refuses_a_value_outside_its_range_at_load():
    """Walks the schema: each field declaring a range refuses a value just outside it, in one line naming the field
    and the range, when the config loads (before any work); the default itself is inside."""
    ranged = _ranged_fields(SlimConfig)
    assert len(ranged) >= 30
    assert {"train.lr", "train.warmup_steps", "compress.experts.num_experts"} <= dict(ranged).keys()
    for key, bounds in ranged:
        value = _outside(bounds)
        literal = int(value) if float(value).is_integer() else value
        with pytest.raises(UserError, match=rf"^{re.escape(key)}: must be {re.escape(bounds.describe())}, got "):
            load_config([f"{key}={literal}"])

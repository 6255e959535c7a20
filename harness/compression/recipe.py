"""Validate a compression recipe against the teacher's config before any work starts.

Every check raises a one-line UserError naming the recipe field and the allowed values.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

from transformers import PretrainedConfig

from slim.harness.compression.depth_selectors import depth_selectors
from slim.harness.compression.expert_criteria import criteria
from slim.harness.compression.expert_reducers import reducers
from slim.harness.compression.expert_similarities import similarities
from slim.harness.compression.modeling_slim import expert_count
from slim.harness.compression.width import hidden_dims
from slim.harness.compression.width_selectors import width_selectors
from slim.harness.config.schema import CompressConfig
from slim.harness.errors import UserError
from slim.harness.models.families import model_families

BUDGETS = ("uniform", "global")


# compress.experts keys naming a method whose keyword-only parameters are options -> the registry it is looked up in
EXPERT_METHODS = {"reducer": reducers, "criterion": criteria, "similarity": similarities}


def validate_method_keys(recipe: CompressConfig) -> None:
    """Unknown method names fail with the list of registered ones; so does an option no config declares."""
    depth_selectors.validate(recipe.depth.selector, "compress.depth.selector")
    width_selectors.validate(recipe.width.selector, "compress.width.selector")
    if recipe.experts.budget not in BUDGETS:
        raise UserError(f"compress.experts.budget: unknown budget {recipe.experts.budget!r}; "
                        f"valid: {', '.join(BUDGETS)}")
    for kind in EXPERT_METHODS:
        configured(recipe, kind)


def method_options(method: Callable, field: str, node: object) -> dict[str, object]:
    """A method's options: each keyword-only parameter (e.g. partial_preserve's `base_choice`) takes the key of the
    same name on `node` (compress.experts), which the method's plug-in declares (harness/config/sections.py); a
    parameter no config declares is refused, naming the method's field."""
    options = [parameter.name for parameter in inspect.signature(method).parameters.values()
               if parameter.kind is inspect.Parameter.KEYWORD_ONLY]
    missing = [name for name in options if not hasattr(node, name)]
    if missing:
        raise UserError(f"{field}: {getattr(node, field.rsplit('.', 1)[1])!r} takes options that no config "
                        f"declares: {', '.join(missing)} (declare them with @config_options('compress.experts'))")
    return {name: getattr(node, name) for name in options}


def configured(recipe: CompressConfig, kind: str) -> Callable:
    """The recipe's expert `kind` method (reducer, criterion or similarity) with its options bound."""
    field = f"compress.experts.{kind}"
    method = EXPERT_METHODS[kind].get(getattr(recipe.experts, kind), field)
    return functools.partial(method, **method_options(method, field, recipe.experts))


def student_top_k(recipe: CompressConfig, teacher: PretrainedConfig) -> int:
    return recipe.experts.top_k or teacher.num_experts_per_tok


def validate_targets(recipe: CompressConfig, teacher: PretrainedConfig) -> None:
    """Targets must be strictly smaller than the teacher (0 = keep) and mutually consistent."""
    layers, hidden, experts = teacher.num_hidden_layers, teacher.hidden_size, expert_count(teacher)
    if not 0 <= recipe.depth.num_drop < layers:
        raise UserError(f"compress.depth.num_drop: {recipe.depth.num_drop} out of range; allowed 0..{layers - 1} "
                        f"(teacher has {layers} layers)")
    width = recipe.width.hidden_size
    if width and not 0 < width < hidden:
        raise UserError(f"compress.width.hidden_size: {width} out of range; allowed 1..{hidden - 1} "
                        f"(teacher hidden size {hidden}) or 0 to keep all")
    if width % 8:
        raise UserError(f"compress.width.hidden_size: {width} must be a multiple of 8 (grouped expert matmuls "
                        f"need 16-byte row strides)")
    if width:
        hidden_dims(teacher.model_type)  # refuses a family whose heads cannot keep their size at another width
    target = recipe.experts.num_experts
    if target and not 0 < target < experts:
        raise UserError(f"compress.experts.num_experts: {target} must be smaller than the teacher's {experts}; "
                        f"allowed 1..{experts - 1} or 0 to keep all")
    top_k, kept = student_top_k(recipe, teacher), target or experts
    if not 1 <= top_k <= kept:
        raise UserError(f"compress.experts.top_k: {top_k} must be in 1..{kept} (experts kept per layer)")
    family = model_families.get(teacher.model_type, "model.config.model_type")
    if family.check_experts is not None and recipe.experts.budget == "uniform":
        family.check_experts(teacher, [kept], top_k)  # a global budget's counts are checked once chosen
    kept_layers = layers - recipe.depth.num_drop
    if recipe.experts.exempt_first + recipe.experts.exempt_last > kept_layers:
        raise UserError(f"compress.experts.exempt_first/exempt_last: {recipe.experts.exempt_first}+"
                        f"{recipe.experts.exempt_last} exceed the {kept_layers} layers kept")


def validate_recipe(recipe: CompressConfig, teacher: PretrainedConfig) -> None:
    """All recipe checks, cheapest first; needs only the teacher's config, not its weights."""
    validate_method_keys(recipe)
    validate_targets(recipe, teacher)

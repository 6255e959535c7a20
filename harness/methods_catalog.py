"""Every pluggable method family in one place, so `slim methods` and recipe validation see them all.

`slim methods` reads the registrations from the source files (`ast`) instead of importing them: the entries'
modules import torch, transformers and Lightning, seconds before the first name could be printed, while a listing
needs only each `<registry>.register("name")` call and the docstring it registers. `tests/test_cli.py` checks the
listing against the imported registries, so the two cannot drift.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from pathlib import Path

from slim.harness.registry import Registry, package_folder

# the engine module defining each extension point -> the attribute holding its Registry
METHOD_PACKAGES: dict[str, str] = {
    "slim.harness.compression.expert_criteria": "criteria",
    "slim.harness.compression.expert_similarities": "similarities",
    "slim.harness.compression.expert_reducers": "reducers",
    "slim.harness.compression.depth_selectors": "depth_selectors",
    "slim.harness.compression.width_selectors": "width_selectors",
    "slim.harness.progressive_plans": "plans",
    "slim.harness.training.loss_mixes": "loss_mixes",
    "slim.harness.training.weight_schedules": "weight_schedules",
    "slim.harness.adaptations": "adaptations",
    "slim.harness.models.variants": "model_variants",
    "slim.kernels.kd_loss": "kd_implementations",
    "slim.kernels.kd_loss.cached_reference": "cached_kd_implementations",
    "slim.kernels.kd_loss.fused_head": "head_implementations",
    "slim.kernels.grouped_experts": "expert_output_implementations",
    "slim.harness.models.families": "model_families",
    "slim.harness.data.sources": "sources",
}


def method_registries() -> list[Registry]:
    """The registries of every method family, entries loaded."""
    return [getattr(importlib.import_module(package), attr) for package, attr in METHOD_PACKAGES.items()]


@dataclass(frozen=True)
class StaticEntry:
    """One registration as written in its source file; `condition` is the source of the `if` it sits under (the
    entry exists only where that holds, e.g. `triton is not None`), "" when it always registers."""

    name: str
    doc: str
    condition: str = ""


def _source_path(module: str) -> Path:
    """The file of `module` (its `__init__.py` for a package), found without importing anything below the top code
    package (`slim.methods`, `slim.kernels`, `slim.harness`: namespace packages, which run no code)."""
    namespace, top, *rest = module.split(".")
    path = package_folder(f"{namespace}.{top}").joinpath(*rest)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""


def _registry_call(tree: ast.Module, attr: str) -> ast.Call:
    """The `attr = Registry(family, package=...)` call at the top of a module."""
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign)
                                                                       else None)
        if isinstance(target, ast.Name) and target.id == attr and isinstance(node.value, ast.Call):
            return node.value
    raise AssertionError(f"no `{attr} = Registry(...)` found")


def _literal(call: ast.Call, position: int, keyword: str) -> str | None:
    node = next((kw.value for kw in call.keywords if kw.arg == keyword), None)
    if node is None and len(call.args) > position:
        node = call.args[position]
    return node.value if isinstance(node, ast.Constant) else None


def _registered_name(node: ast.AST, attr: str) -> str | None:
    """"name" when `node` is the call `attr.register("name")`."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "register"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == attr and node.args
            and isinstance(node.args[0], ast.Constant)):
        return node.args[0].value
    return None


def _object_doc(value: ast.AST, tree: ast.Module) -> str | None:
    """The doc an object built as `Entry(doc, ...)` / `Entry(doc=..., ...)` carries: a string literal, the module's
    `__doc__`, or the docstring of a function or class the module defines (what the entry's `__doc__` copies)."""
    if not isinstance(value, ast.Call):
        return None
    node = next((kw.value for kw in value.keywords if kw.arg == "doc"), value.args[0] if value.args else None)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id == "__doc__":
        return ast.get_docstring(tree)
    if isinstance(node, ast.Name):
        defined = [item for item in tree.body if isinstance(item, (ast.FunctionDef, ast.ClassDef))
                   and item.name == node.id]
        return ast.get_docstring(defined[0]) if defined else None
    return None


def _module_entries(tree: ast.Module, attr: str, body: list[ast.stmt] | None = None,
                    condition: str = "") -> list[StaticEntry]:
    """Registrations in `body` (default: the module's top level) and under its `if` blocks."""
    entries = []
    for node in tree.body if body is None else body:
        if isinstance(node, ast.If):
            entries += _module_entries(tree, attr, node.body, ast.unparse(node.test))
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            entries += [StaticEntry(name, _first_line(ast.get_docstring(node)), condition)
                        for decorator in node.decorator_list if (name := _registered_name(decorator, attr))]
        elif (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
              and (name := _registered_name(node.value.func, attr))):
            entries.append(StaticEntry(name, _first_line(_object_doc(node.value.args[0], tree)), condition))
    return entries


def static_family(module: str, attr: str) -> tuple[str, list[StaticEntry]]:
    """(family name, entries sorted by name) of the registry `module.attr`, read from the sources of the package
    it loads (every module under it, as `Registry` imports them)."""
    call = _registry_call(ast.parse(_source_path(module).read_text()), attr)
    family, package = _literal(call, 0, "family"), _literal(call, 1, "package")
    entries = []
    for path in sorted(_source_path(package).parent.rglob("*.py")):
        text = path.read_text()
        if f"{attr}.register(" in text:
            entries += _module_entries(ast.parse(text), attr)
    return family, sorted(entries, key=lambda entry: entry.name)


def format_catalog() -> str:
    """Plain-text listing: family header, then `name  first docstring line` per entry (from the sources)."""
    lines = []
    for module, attr in METHOD_PACKAGES.items():
        family, entries = static_family(module, attr)
        lines.append(f"{family}:")
        width = max(len(entry.name) for entry in entries)
        lines += [f"  {entry.name:<{width}}  {entry.doc}" + (f" (only when {entry.condition})" if entry.condition
                                                             else "") for entry in entries]
    return "\n".join(lines)

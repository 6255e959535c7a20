"""Plug-in discovery through Python entry points, the standard way one package adds to another.

Each extension point is an entry-point group; an entry's name is the method's key and its value the module that
registers it (importing the module runs its `@<registry>.register("<name>")`). Options a plug-in adds to the config
are entries of OPTIONS_GROUP whose value is the dataclass it decorates with `config_options`. The built-in methods
are declared in this project's pyproject.toml exactly as a third-party package declares its own:

    [project.entry-points."slim.expert_criteria"]
    sharp = "my_package.sharp"

    [project.entry-points."slim.options"]
    sharp = "my_package.sharp:SharpOptions"

Listing the keys reads installed metadata only (no import, so `slim methods` stays fast); every spawned process
finds the same entries, so a plug-in works in grid, search and submitit workers as in the parent.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

# Entry-point group -> the family name its registry reports (in errors and `slim methods`).
GROUPS = {
    "slim.expert_criteria": "expert criterion",
    "slim.expert_similarities": "expert similarity",
    "slim.expert_reducers": "expert reducer",
    "slim.depth_selectors": "depth selector",
    "slim.width_selectors": "width selector",
    "slim.progressive_plans": "progressive plan",
    "slim.loss_mixes": "loss mix",
    "slim.weight_schedules": "weight schedule",
    "slim.adaptations": "MoE adaptation",
    "slim.model_variants": "model variant",
    "slim.model_families": "model family",
    "slim.data_sources": "data source",
    "slim.kd_kernels": "kd loss kernel",
    "slim.cached_kd_kernels": "cached-teacher kd loss kernel",
    "slim.head_kernels": "head loss kernel",
    "slim.expert_output_kernels": "expert outputs kernel",
    "slim.cell_kinds": "grid cell kind",
    "slim.inference_backends": "inference backend",
}
OPTIONS_GROUP = "slim.options"


def entries(group: str) -> list[EntryPoint]:
    """The installed entries of `group`, by name (metadata only: nothing is imported)."""
    return sorted(entry_points(group=group), key=lambda entry: entry.name)


def describe_entry(entry: EntryPoint) -> str:
    """`name = value (distribution)` for messages naming where an entry comes from."""
    distribution = entry.dist.name if entry.dist is not None else "unknown distribution"
    return f"{entry.name} = {entry.value} ({distribution})"


def load_entry(entry: EntryPoint, group: str):
    """`entry.load()`, with an import failure told in one line naming the entry and the group."""
    from slim.harness.errors import UserError

    try:
        return entry.load()
    except (ImportError, AttributeError) as err:
        raise UserError(f"plug-in {describe_entry(entry)} in {group}: cannot load it: {err}") from None


def load_plugins() -> None:
    """Import every registered method and options class (the CLI and every spawned worker call it first), so a
    plug-in that fails to import says so at start, naming its entry, instead of in the middle of a run."""
    from slim.harness.config.sections import root_schema

    for group in (*GROUPS, OPTIONS_GROUP):
        for entry in entries(group):
            load_entry(entry, group)
    root_schema()

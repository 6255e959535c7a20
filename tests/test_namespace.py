"""One import namespace: every module of ours imports as `slim.*`, and nothing at the repository root shadows a
dependency when Python runs from there (Hugging Face's `kernels`, which transformers imports, broke us once)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from slim.harness.source_tree import CODE_FOLDERS, python_path

REPO = Path(__file__).resolve().parents[1]


def tracked_python_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "*.py"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return [REPO / name for name in listed if name and (REPO / name).is_file()]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in `path`, function-level ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        found += [(node.lineno, name) for name in names]
    return found


def bare_imports(path: Path, root: Path = REPO) -> list[str]:
    """`import harness...` / `from kernels... import` lines of `path` (named relative to `root`), by line number."""
    return [f"{path.relative_to(root)}:{line}: {name}" for line, name in imported_modules(path)
            if name.split(".")[0] in CODE_FOLDERS]


def test_no_file_imports_a_bare_top_level_code_folder():
    """`harness`, `methods`, `kernels` and `reports` are generic names (three are PyPI projects): our code, tests and
    bench scripts import them as `slim.harness`, ... only."""
    files = tracked_python_files()
    assert len(files) > 100, "the scan found too few files to mean anything"
    assert [line for path in files for line in bare_imports(path)] == []


def test_bare_import_scan_catches_each_form(tmp_path: Path):
    """The scan above is not vacuous: every import form of a bare code folder is reported, `slim.*` is not."""
    source = tmp_path / "sample.py"
    source.write_text("import harness.cli\nfrom kernels import kd_loss\nfrom reports.table import x\nimport methods\n"
                      "import slim.harness\nfrom slim.kernels import kd_loss\nfrom . import harness\n")
    found = [line.rsplit(": ", 1)[1] for line in bare_imports(source, tmp_path)]
    assert found == ["harness.cli", "kernels", "reports.table", "methods"]


def test_the_engine_imports_no_plugin():
    """Extension points live in the engine and plug-ins register into them: nothing under harness/ imports
    slim.methods (the reverse direction is the point of a plug-in)."""
    engine = sorted((REPO / "harness").rglob("*.py"))
    assert len(engine) > 50
    assert [f"{path.relative_to(REPO)}:{line}: {name}" for path in engine for line, name in imported_modules(path)
            if name == "slim.methods" or name.startswith("slim.methods.")] == []


def test_no_test_imports_another_test_file():
    """Shared fixtures and helpers live in tests/fixtures/ (registered by tests/conftest.py): a test module importing
    another one's fixture re-creates it under the importer's scope and needs `noqa: F811` on every use."""
    tests = sorted((REPO / "tests").rglob("*.py"))
    assert len(tests) > 50
    assert [f"{path.relative_to(REPO)}:{line}: {name}" for path in tests for line, name in imported_modules(path)
            if name.split(".")[0] == "tests" and name.split(".")[-1].startswith("test_")] == []


def test_code_folders_have_no_top_level_init():
    """Without `__init__.py` at their top, the folders are namespace portions: any installed regular package of the
    same name wins over them when Python runs from the repository root."""
    assert [folder for folder in CODE_FOLDERS if (REPO / folder / "__init__.py").exists()] == []


def test_nothing_at_the_root_shadows_an_installed_distribution():
    """No regular package or module at the repository root has the top-level name of an installed distribution's
    module (a `tests` package shipped by a careless dependency would be one)."""
    installed = set(packages_distributions()) - {"slim"}
    importable = {entry.stem for entry in REPO.iterdir()
                  if (entry.is_dir() and (entry / "__init__.py").exists()) or entry.suffix == ".py"}
    assert importable & installed == set()


def test_the_metadata_python_sees_from_the_root_declares_pyproject_entry_points():
    """The plug-in entry points Python finds from the root are pyproject.toml's: a stale `<project>.egg-info` at the
    root (a metadata build with build isolation leaves one) or an install older than pyproject would hide methods."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    probe = ("import json; from importlib.metadata import distribution; "
             "entries = distribution('slimqwen-harness').entry_points; "
             "print(json.dumps(sorted([e.group, e.name, e.value] for e in entries if e.group.startswith('slim.'))))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == sorted([group, name, value] for group, items in declared.items()
                                             for name, value in items.items()), "reinstall: make test does"


def test_pyproject_lists_every_package_under_the_code_folders():
    """pyproject's explicit package list (the mapping needs one) names the four code folders and every folder below
    them that holds Python files (lm_eval_tasks/ holds the loader its task YAML names, without an `__init__.py`)."""
    declared = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {f"slim.{folder}" for folder in CODE_FOLDERS}
    for folder in CODE_FOLDERS:
        found |= {"slim." + ".".join(source.parent.relative_to(REPO).parts)
                  for source in (REPO / folder).rglob("*.py") if "__pycache__" not in source.parts}
    assert declared == found


@pytest.mark.parametrize("name", CODE_FOLDERS)
def test_from_the_root_a_bare_name_is_never_our_regular_package(name: str):
    """Run from the repository root (its folder first on sys.path), a bare `import <name>` finds an installed package
    or our folder as a mere namespace portion, never a package of ours that would shadow a dependency."""
    probe = ("import importlib.util, json\n"
             f"spec = importlib.util.find_spec({name!r})\n"
             "print(json.dumps(None if spec is None else spec.origin))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    origin = json.loads(done.stdout)
    assert origin is None or not Path(origin).is_relative_to(REPO / name), origin


def test_transformers_imports_from_the_repository_root():
    """transformers' model code imports Hugging Face's `kernels` where it is installed; from the root it must get
    theirs, not our folder."""
    done = subprocess.run([sys.executable, "-c", "import transformers.modeling_utils"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_installed_slim_command_lists_every_registry(where: str, tmp_path: Path):
    """The console script resolves `slim.*` from any directory; `slim methods` lists every registry."""
    from slim.harness.plugins import GROUPS

    done = subprocess.run([str(Path(sys.prefix) / "bin" / "slim"), "methods"],
                          cwd=REPO if where == "root" else tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(GROUPS) == 18
    assert [group for group, family in GROUPS.items() if f"{family} [{group}]: " not in done.stdout] == []


def test_python_path_imports_slim_from_the_given_tree(tmp_path: Path):
    """The README walk's and the A/B benchmarks' children import the code of their own tree, not the checkout the
    editable install maps."""
    tree = tmp_path / "tree"
    for folder in CODE_FOLDERS:
        (tree / folder).mkdir(parents=True)
    (tree / "harness" / "provenance.py").write_text("RESULTS_VERSION = 'from the other tree'\n")
    probe = "import slim.harness.provenance as p; print(p.RESULTS_VERSION, p.__file__)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": python_path(tree, tmp_path / "shim"), "PATH": "/usr/bin:/bin"})
    assert done.stdout.startswith("from the other tree "), done.stdout

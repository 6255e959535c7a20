"""The README walk (issue 14): every command in the ```bash fences of README.md and of the docs/ pages (PAGES, the
README's documentation index in order) runs as written, in order, in a fresh copy of the repository (its tracked and
untracked, not ignored files), with SLIM_MAX_STEPS lowering every step count.

Skipped, and only these: fences marked ```bash cluster (a GPU cluster, a scheduler or checkpoints such as /ckpt that
a laptop lacks) and `make` lines (`make test` runs this test). Each section (a page's `## ` heading) is one test; a
section run alone first runs the sections before it, whose outputs it reads.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from slim.harness.source_tree import python_path

pytestmark = pytest.mark.docs

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# README.md, then the manual in the order of README's documentation index (later pages read earlier pages' outputs)
PAGES = ("README.md", "docs/configuration.md", "docs/data.md", "docs/models.md", "docs/compress.md", "docs/distill.md",
         "docs/evaluate.md", "docs/grids-and-search.md", "docs/safety.md", "docs/scale.md", "docs/adaptations.md")
CLUSTER = "cluster"  # the fence info word that marks commands the walk skips
WALK_MAX_STEPS = "12"  # >= 11: the search spec's smallest plan share (0.05) must still give its first stage a step
COMMAND_TIMEOUT_S = 900
FENCE = re.compile(r"^```bash(?P<info>[^\n]*)\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^## (?P<title>.+)$", re.MULTILINE)


@dataclass(frozen=True)
class Section:
    """The runnable commands under one `## ` heading of the README, in order."""

    title: str
    commands: tuple[str, ...]


def logical_lines(body: str) -> list[str]:
    """A fence's commands: backslash continuations joined, blank lines and whole-line comments dropped (a trailing
    comment stays: bash ignores it)."""
    commands, current = [], ""
    for line in body.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.strip()[:-1].rstrip() + " "
            continue
        commands.append(current + line.strip())
        current = ""
    assert not current, f"a README command ends in a backslash: {current!r}"
    return commands


def readme_sections(text: str, page: str = "") -> list[Section]:
    """A page's runnable commands grouped by section (titled `page: heading` when `page` is given), in order: every
    ```bash fence except ```bash cluster ones, without `make` lines."""
    headings = [(match.start(), match["title"].strip()) for match in HEADING.finditer(text)]
    sections: dict[str, list[str]] = {}
    for fence in FENCE.finditer(text):
        if CLUSTER in fence["info"].split():
            continue
        title = next((title for start, title in reversed(headings) if start < fence.start()), "(top)")
        title = f"{page}: {title}" if page else title
        commands = [line for line in logical_lines(fence["body"]) if not line.startswith("make ")]
        if commands:
            sections.setdefault(title, []).extend(commands)
    return [Section(title, tuple(commands)) for title, commands in sections.items()]


SECTIONS = [section for page in PAGES for section in readme_sections((REPO / page).read_text(), page)]


def test_the_walk_covers_every_page_the_readme_indexes():
    """Every docs/*.md page is walked, in the order README.md's documentation index lists them."""
    index = README.read_text().split("\n## Documentation\n", 1)[1]
    indexed = re.findall(r"\]\((docs/[\w-]+\.md)\)", index)
    assert list(PAGES[1:]) == list(dict.fromkeys(indexed)) and set(PAGES[1:]) == {
        path.relative_to(REPO).as_posix() for path in (REPO / "docs").glob("*.md")}


def test_readme_commands_are_extracted_in_order_and_cluster_fences_are_skipped():
    """Continuations join, comments and `make` lines drop, ```bash cluster fences are left out."""
    text = ("## A\n```bash\nmake demo   # demo\n# a comment\n.venv/bin/slim config \\\n"
            "    model=tiny  # resolved\n```\n"
            "## B\n```bash cluster\n.venv/bin/torchrun x\n```\n```bash\n.venv/bin/slim methods\n```\n")
    assert readme_sections(text) == [Section("A", (".venv/bin/slim config model=tiny  # resolved",)),
                                     Section("B", (".venv/bin/slim methods",))]


def test_readme_walk_runs_something_in_every_section_that_has_commands():
    """The README's own fences parse: the walk has commands, and none of them names a cluster-only path unmarked."""
    commands = [command for section in SECTIONS for command in section.commands]
    assert commands and all("slim" in command for command in commands), commands
    assert not [command for command in commands if "/ckpt" in command or "torchrun" in command or "srun" in command]


def fresh_copy(destination: Path) -> Path:
    """The repository's tracked and untracked, not ignored files (a clone plus the uncommitted work), with `.venv`
    naming the virtual environment running this test."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    (destination / ".venv").symlink_to(Path(sys.prefix))
    return destination


@dataclass
class Walk:
    """One fresh copy the sections run in, in README order; `done` holds each run section's outcome."""

    root: Path
    done: dict[str, str]

    def environment(self) -> dict[str, str]:
        # PYTHONPATH: the copy's code, not the checkout the venv's editable install maps (a link folder beside
        # the copy, so the copy holds only what a clone has); one thread per process on the shared 2 cores
        # (see tests/conftest.py)
        path = python_path(self.root, self.root.parent / f"{self.root.name}-imports")
        return os.environ | {"SLIM_MAX_STEPS": WALK_MAX_STEPS, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}

    def run_through(self, section: Section) -> None:
        """Run every section up to `section` not yet run; fail naming the first command that exits non-zero."""
        for earlier in SECTIONS[:SECTIONS.index(section) + 1]:
            if earlier.title not in self.done:
                self.done[earlier.title] = self._run(earlier)
            if self.done[earlier.title] != "ok":
                pytest.fail(f"README section {earlier.title!r}: {self.done[earlier.title]}")

    def _run(self, section: Section) -> str:
        for command in section.commands:
            start = time.perf_counter()
            done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=self.root, env=self.environment(),
                                  capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
            print(f"{time.perf_counter() - start:6.1f}s  exit {done.returncode}  {command}")
            if done.returncode != 0:
                return f"`{command}` exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        return "ok"


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Walk:
    return Walk(fresh_copy(tmp_path_factory.mktemp("readme-walk")), {})


@pytest.mark.slow
@pytest.mark.parametrize("section", SECTIONS, ids=[section.title for section in SECTIONS])
def test_readme_section_runs_as_written(walk: Walk, section: Section):
    """Each command of the section exits 0 in the fresh copy, after the sections before it."""
    walk.run_through(section)

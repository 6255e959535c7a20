"""README.md is a front page: under 200 lines, every relative link in it and in the manual resolves, it indexes every
docs/ page, and its "add a criterion" code and test are the plug-in example's files verbatim, so they cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.docs

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", ROOT / "bench" / "README.md",
         *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\((?!https?://)([^)#\s]+)(?:#[^)]*)?\)")
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def test_the_readme_is_a_front_page():
    assert len(README.splitlines()) < 200
    for linked in ["CONTRIBUTING.md", "CHANGELOG.md", "bench/README.md",
                   *(path.relative_to(ROOT).as_posix() for path in (ROOT / "docs").glob("*.md"))]:
        assert f"]({linked})" in README, linked


@pytest.mark.parametrize("page", PAGES, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page: Path):
    for target in LINK.findall(page.read_text()):
        assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to missing {target}"


def test_the_criterion_example_is_the_plugin_and_its_test_verbatim():
    load, code, test = FENCE.findall(README)
    assert "trust_remote_code=True" in load  # the student-loading lines come first
    assert code == (ROOT / "tests" / "plugin_example" / "slim_sharp_example" / "__init__.py").read_text()
    assert test in (ROOT / "tests" / "test_third_party_plugin.py").read_text()

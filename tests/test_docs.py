"""The README and docs/ (issue 15): every relative link resolves (file and #anchor), and the
README's set-up commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # no headings in code
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [m.group(1) for m in LINK.finditer(text)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    for link in _links(page):
        if re.match(r"^[a-z]+://", link) or link.startswith("mailto:"):
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page.name}: link {link!r}: {target} does not exist"
        if anchor:
            assert target.suffix == ".md", f"{page.name}: anchor into a non-markdown file: {link}"
            assert anchor in _anchors(target), (
                f"{page.name}: link {link!r}: no heading with anchor #{anchor} in {target.name} "
                f"(has {sorted(_anchors(target))})"
            )


def test_docs_pages_are_all_linked_from_the_readme():
    linked = {(ROOT / link.partition("#")[0]).resolve() for link in _links(ROOT / "README.md")}
    for page in PAGES[1:]:
        assert page.resolve() in linked, f"{page.name} is not linked from README.md"


def test_every_docs_page_says_who_it_is_for():
    for page in PAGES[1:]:
        lines = page.read_text().splitlines()
        assert lines[0].startswith("# ") and lines[2].startswith("*For "), page.name


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    setup = text[text.index("## Set-up") :]
    setup = setup[: setup.index("\n## ", 1)]
    blocks = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
    return [line for b in blocks for line in b.strip().splitlines() if line.strip()]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    cmds = _setup_commands()
    assert len(cmds) == 2, cmds
    demo, test = cmds
    for cmd in cmds:  # torch pinned first: an unpinned one could pull a multi-GB CUDA build
        assert cmd.index("pip install torch==2.13.0") < cmd.index("pip install -e")
    assert demo.endswith("lars-npu demo") and "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci.splitlines(), "CI does not run the README's test command verbatim"


def test_the_code_cites_docs_not_a_missing_design_file():
    hits = []
    for pattern in ("lars_npu/**/*.py", "csrc/**/*.h", "csrc/**/*.cpp", "tests/*.py"):
        for f in ROOT.glob(pattern):
            if f.name != "test_docs.py" and "DESIGN.md" in f.read_text(errors="replace"):
                hits.append(str(f.relative_to(ROOT)))
    assert not hits, f"cite docs/ instead of DESIGN.md (not in this repository): {hits}"

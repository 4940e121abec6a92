"""The README and docs/: every relative link resolves (file and #anchor), the README's set-up
commands are the ones CI runs, and the Python in the README and the guides runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
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


# -- the code in the docs runs -----------------------------------------------------------------
# Every ```python block of these pages runs, in order, in one namespace per page (a later block may
# use what an earlier one defined), in a fresh interpreter. A block that needs a library lars_npu
# does not depend on (timm, apex, MindSpore, wandb) is marked on the line before it with
# "<!-- not run: why -->" and only checked to be valid Python.
RUN_PAGES = ["README.md", "docs/recipe.md", "docs/migrating.md"]
NOT_RUN = re.compile(r"<!-- not run: ([^>]+) -->\n```python\n")


def _python_blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """(line, code, why it is not run or None) of every ```python block of ``page``."""
    text = page.read_text()
    blocks = []
    for m in re.finditer(r"```python\n(.*?)```", text, flags=re.S):
        before = text[: m.start()]
        marker = re.search(r"<!-- not run: ([^>]+) -->\n$", before)
        blocks.append((before.count("\n") + 1, m.group(1), marker.group(1) if marker else None))
    return blocks


@pytest.mark.parametrize("name", RUN_PAGES)
def test_the_python_blocks_of_the_page_run(name, tmp_path):
    page = ROOT / name
    blocks = _python_blocks(page)
    runnable = [(line, code) for line, code, why in blocks if why is None]
    assert runnable, f"{name} has no runnable python block"
    for line, code, why in blocks:
        if why is not None:
            compile(code, f"{name}:{line}", "exec")  # shown, not run: still valid Python
    script = "ns = {'__name__': '__main__'}\n" + "".join(
        f"exec(compile({code!r}, {f'{name}:{line}'!r}, 'exec'), ns)\n" for line, code in runnable
    )
    env = {k: v for k, v in os.environ.items() if k != "LARS_NPU_BACKEND"}
    p = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert p.returncode == 0, f"{name}: a python block failed\n{p.stdout}\n{p.stderr}"


@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_the_recipe_script_is_complete_on_its_own_and_trains(amp_dtype, tmp_path):
    """The recipe's first block is the whole script: alone, it trains (λ logged for the two
    adapted weights only), checkpoints and resumes; with fp16 (what its text says to set on a
    GPU or NPU) the GradScaler it builds is on, and the loop works with it too."""
    (_line, code, why), *_ = _python_blocks(ROOT / "docs" / "recipe.md")
    assert why is None
    assert "amp_dtype = torch.bfloat16" in code
    code = code.replace("amp_dtype = torch.bfloat16", f"amp_dtype = torch.{amp_dtype}")
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    epochs = [s for s in p.stdout.splitlines() if s.startswith("epoch ")]
    assert len(epochs) == 5, p.stdout
    assert "'0.weight'" in epochs[-1] and "'5.weight'" in epochs[-1], epochs[-1]
    assert "'1.weight'" not in epochs[-1] and "bias" not in epochs[-1]  # the filter's exclusions
    assert "skipped steps 0" in epochs[-1]
    assert "resumed at step 40" in p.stdout


def test_not_run_markers_sit_on_python_blocks():
    for name in RUN_PAGES:
        text = (ROOT / name).read_text()
        assert text.count("<!-- not run:") == len(NOT_RUN.findall(text)), name


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_paragraph_is_repeated(page):
    """A block pasted twice (it happened once) shows up as a repeated paragraph."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    seen: set[str] = set()
    for para in paragraphs:
        if len(para) < 80:
            continue
        assert para not in seen, f"{page.name}: paragraph repeated: {para[:100]}..."
        seen.add(para)

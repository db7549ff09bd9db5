"""Every ```python block of README.md and docs/**/*.md runs, as written, in the order of its page.

The blocks of one page share one namespace (a later block may use an earlier one's names), so a
page reads as one script; a block with an undefined name fails here. Sybil (a maintained library)
finds the blocks and honours the skip markers the docs use, each visible in the page's source:

    <!-- skip: next -->                                   never run (e.g. an illustrative fragment)
    <!-- skip: next if(not torch.cuda.is_available(), "needs CUDA") -->   run where the condition allows

Shell blocks (```bash) are not run here: a block that takes minutes carries a "run by hand before a
release" marker (docs/contributing.md lists them).
"""

from __future__ import annotations

from pathlib import Path
from unittest import SkipTest

import pytest

sybil = pytest.importorskip("sybil")
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PARSER = sybil.Sybil(parsers=[PythonCodeBlockParser(), SkipParser()])


def _blocks(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip() == "```python")


ALL_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PAGES = [p for p in ALL_PAGES if _blocks(p)]  # the pages with Python to run


def test_the_pages_with_python_are_found():
    assert ROOT / "README.md" in PAGES and len(PAGES) >= 10


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_of_the_page_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import headway.models  # noqa: F401 - the built-in backbones, registered on import
    from headway.models import registry

    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    # a page that registers a backbone registers it for this test only: the process's other tests (and
    # a second run of the page) see the registry as it was
    monkeypatch.setattr(registry, "_BACKBONES", dict(registry._BACKBONES))
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    document = PARSER.parse(page)
    ran = 0
    for example in document:
        try:
            example.evaluate()
        except SkipTest:
            continue
        except Exception as e:
            raise AssertionError(f"{page.relative_to(ROOT)}, the block at line {example.line}: "
                                 f"{type(e).__name__}: {e}") from e
        ran += 1
    assert ran > 0


def test_every_python_block_is_found() -> None:
    """A block Sybil does not see (e.g. a mistyped fence) would silently never run."""
    for page in ALL_PAGES:
        found = sum(1 for _, region in PARSER.parse(page).regions
                    if type(region.evaluator).__name__ == "PythonEvaluator")
        assert found >= _blocks(page), f"{page.relative_to(ROOT)}: {_blocks(page)} python blocks, {found} found"


MARKER = "<!-- run by hand before a release: takes minutes -->"
COMMANDS = ('pip install -c requirements-lock.txt -e ".[cli]" && headway train',
            'pip install -c requirements-lock.txt -e ".[dev]" && python -m pytest -x -q -n 2 --dist loadfile')


def test_the_readme_is_short_and_starts_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move details into docs/"
    first = text[text.index("```bash"):]
    first = first[: first.index("\n```\n")]
    assert all(c in first for c in COMMANDS), "the README's first block holds the two fresh-machine commands"
    assert text.index("```bash") < text.index("```python")
    start = lines.index("## Quick start: the library")
    block = lines[lines.index("```python", start) + 1:]
    assert len(block[: block.index("```")]) <= 20, "the quick-start trains in at most 20 lines"


def test_release_markers_sit_right_above_a_shell_block() -> None:
    for page in ALL_PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            if line.strip() == MARKER:
                assert n + 1 < len(lines) and lines[n + 1].startswith("```"), f"{page.relative_to(ROOT)}:{n + 1}"

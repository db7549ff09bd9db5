"""The repository speaks to its users: no file tells of the work's own history (its work periods,
its tracker's numbers). Results live in dated files under docs/benchmarks/ (date, commit, machine,
torch version); user-facing changes in CHANGELOG.md, per version."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORD = "ses" + "sion"  # spelled apart so that this file does not match itself
BANNED = [
    (re.compile(rf"\b{WORD}s?\b", re.IGNORECASE), f"'{WORD}' (name the date or the change instead)"),
    (re.compile(r"\bissues?\s*#?\d+", re.IGNORECASE), "an issue number (say what the change is)"),
    (re.compile(r"\bissue" + "'s\\b", re.IGNORECASE), "a tracker item's target (say what the target is)"),
    (re.compile(r"\.\./shared/|DESIGN" + r"\.md"), "a file outside the repository (cite docs/concepts.md)"),
]
ALLOWED = [re.compile(p, re.IGNORECASE) for p in (r"requests\." + WORD, r"HTTP " + WORD, r"aiohttp")]
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".yml", ".yaml", ".cfg", ".ini", ".json", ".sh", ""}


def _files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    return [ROOT / f for f in out if (ROOT / f).is_file() and (ROOT / f).suffix in TEXT_SUFFIXES]


def test_no_file_speaks_of_the_work_history() -> None:
    hits = []
    for path in _files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if any(a.search(line) for a in ALLOWED):
                continue
            for pattern, why in BANNED:
                if pattern.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{n}: {why}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)

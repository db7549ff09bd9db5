"""Corpora: the embedded default (the Python standard library's own sources), text files, jsonl.

The default corpus needs no download: every `.py` file under this interpreter's standard library
(outside site-packages), split by file into train / validation deterministically (a hash of the
relative path, so the split is the same on every machine with the same Python version).
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst", ".json", ".jsonl", ".c", ".h", ".js", ".html", ".csv", ".toml")


@dataclass(frozen=True)
class Document:
    name: str
    text: str

    @property
    def num_bytes(self) -> int:
        return len(self.text.encode("utf-8"))


def is_validation(name: str, fraction: float) -> bool:
    """Deterministic split: the first 8 hex digits of sha1(name) as a number in [0, 1)."""
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 2**32 < fraction


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(f"the Python standard library was not found at {root}")
    files = [p for p in root.rglob("*.py") if "site-packages" not in p.parts and "dist-packages" not in p.parts]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def stdlib_corpus() -> list[Document]:
    """Every readable UTF-8 `.py` file of the standard library, named by its relative path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for p in stdlib_files():
        text = _read(p)
        if text:
            docs.append(Document(p.relative_to(root).as_posix(), text))
    return docs


def _jsonl(path: Path, field: str, name: str) -> Iterator[Document]:
    """One document per line from the string `field` of each JSON object; a clear error naming the
    file and line for anything else (bad JSON, a bare string/number/null, a missing field)."""
    try:
        f = path.open(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"--data: cannot read {path}: {e.strerror or e}") from None
    with f:
        i = 0
        try:
            for i, line in enumerate(f):  # noqa: B007
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i + 1}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{i + 1}: expected a JSON object with a string field {field!r}, got "
                                     f"{type(row).__name__} {str(row)[:40]!r}")
                if field not in row or not isinstance(row[field], str):
                    raise ValueError(f"{path}:{i + 1}: no string field {field!r} (have {sorted(row)[:8]}); "
                                     "choose it with --text-field")
                yield Document(f"{name}:{i + 1}", row[field])
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}:{i + 2}: not UTF-8 text ({e.reason})") from None


def load_paths(paths: list[str], text_field: str = "text", log=print) -> list[Document]:  # noqa: ANN001
    """Text files, folders (recursively, files with a text suffix) and `.jsonl` files (one document
    per line, from `text_field`); a HuggingFace `datasets` name saved locally (`load_from_disk`).
    Documents are named by their path relative to the folder given (prefixed with its name), so the
    train/validation split does not depend on where the data lies."""
    docs: list[Document] = []
    skipped: list[str] = []
    for spec in paths:
        p = Path(spec)
        if p.is_dir() and (p / "dataset_info.json").exists():
            docs.extend(_hf_dataset(p, text_field))
        elif p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file() and q.suffix in TEXT_SUFFIXES):
                name = f"{p.name}/{f.relative_to(p).as_posix()}"
                docs.extend(_jsonl(f, text_field, name) if f.suffix == ".jsonl" else _one(f, name, skipped))
        elif p.is_file():
            docs.extend(_jsonl(p, text_field, p.name) if p.suffix == ".jsonl" else _one(p, p.name, skipped))
        else:
            raise FileNotFoundError(f"--data: {spec!r} is neither a file nor a folder")
    why = ""
    if skipped:
        why = (f"{len(skipped)} file(s) skipped as unreadable or not UTF-8 text, e.g. "
               + ", ".join(skipped[:3]) + ("..." if len(skipped) > 3 else ""))
    if not docs:
        raise ValueError(f"--data: no documents found in {paths}" + (f" ({why})" if why else ""))
    if why:
        log(f"warning: --data: {why}")
    return docs


def _one(path: Path, name: str, skipped: list[str]) -> list[Document]:
    text = _read(path)
    if text is None:
        skipped.append(str(path))
    return [Document(name, text)] if text else []


def _hf_dataset(path: Path, field: str) -> list[Document]:
    try:
        from datasets import load_from_disk
    except ImportError:
        raise ValueError(f"--data: {path} is a HuggingFace dataset; `pip install datasets` to read it") from None
    ds = load_from_disk(str(path))
    if hasattr(ds, "keys"):  # a DatasetDict: take the train split
        ds = ds["train"]
    return [Document(f"{path}:{i}", row[field]) for i, row in enumerate(ds)]


def split(docs: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    if not 0 < val_fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {val_fraction}")
    train = [d for d in docs if not is_validation(d.name, val_fraction)]
    val = [d for d in docs if is_validation(d.name, val_fraction)]
    if not train or not val:
        raise ValueError(f"the split of {len(docs)} documents left {len(train)} for training and {len(val)} "
                         "for validation; give more documents or change --val-fraction")
    return train, val

"""Where documents come from: folders, text files, jsonl (also .gz/.zst), parquet and `datasets`
folders, read as a stream of documents, never held whole.

A `--data` spec is `PATH` or `PATH:WEIGHT` (a mixture: each source is drawn with probability
weight / sum of weights). A source expands to *units*, the files (or one saved dataset) that one
preparation worker reads. Documents are named by their path relative to the folder given
(prefixed with its name), or `FILE:LINE` / `FILE:ROW`, so the train/validation split (a hash of the
name) does not depend on where the data lies and adding files never moves a document.

The embedded default is every `.py` file of this interpreter's standard library (outside
site-packages), named by its path relative to the library root.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst", ".json", ".c", ".h", ".js", ".html", ".csv", ".toml")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
PARQUET_SUFFIXES = (".parquet",)
STDLIB = "stdlib"


@dataclass(frozen=True)
class Document:
    name: str
    text: str

    @property
    def num_bytes(self) -> int:
        return len(self.text.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True)
class Unit:
    """One input file (or one saved `datasets` folder) of a source."""

    path: str
    name: str  # the documents' name prefix
    kind: str  # text | jsonl | parquet | hf
    size: int  # bytes on disk


@dataclass(frozen=True)
class Source:
    spec: str
    weight: float
    units: tuple[Unit, ...]

    @property
    def size(self) -> int:
        return sum(u.size for u in self.units)


def is_validation(name: str, fraction: float) -> bool:
    """Deterministic split: the first 8 hex digits of sha1(name) as a number in [0, 1)."""
    return int(hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8], 16) / 2**32 < fraction


def kind_of(path: Path) -> str | None:
    n = path.name.lower()
    if n.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if n.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if n.endswith(TEXT_SUFFIXES):
        return "text"
    return None


def parse_spec(spec: str) -> tuple[str, float]:
    """`PATH` or `PATH:WEIGHT` -> (path, weight); a path that itself ends in `:<number>` and exists
    is taken whole."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and not Path(spec).exists():
        try:
            w = float(tail)
        except ValueError:
            return spec, 1.0
        if not (math.isfinite(w) and w > 0):
            raise ValueError(f"--data: the weight in {spec!r} must be a positive number, got {tail!r}")
        return head, w
    return spec, 1.0


def resolve(specs: list[str], glob: str | None = None) -> list[Source]:
    """The sources of `--data` (the standard library when empty), each with its units in a fixed
    order. `glob` (e.g. "*.py") picks the files of folders; by default every text, jsonl and
    parquet file. Raises a ValueError naming the spec for anything that holds no input."""
    if not specs:
        root = Path(sysconfig.get_paths()["stdlib"])
        if not root.is_dir():
            raise FileNotFoundError(f"the Python standard library was not found at {root}")
        files = [p for p in root.rglob("*.py")
                 if p.is_file() and "site-packages" not in p.parts and "dist-packages" not in p.parts]
        units = tuple(Unit(str(p), p.relative_to(root).as_posix(), "text", p.stat().st_size)
                      for p in sorted(files, key=lambda p: p.relative_to(root).as_posix()))
        return [Source(STDLIB, 1.0, units)]
    out = []
    for spec in specs:
        path, weight = parse_spec(spec)
        p = Path(path)
        if p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()):
            units: tuple[Unit, ...] = (Unit(str(p), p.name, "hf", sum(f.stat().st_size for f in p.rglob("*")
                                                                         if f.is_file())),)
        elif p.is_dir():
            files = sorted((q for q in p.rglob(glob or "*") if q.is_file() and (kind_of(q) or glob)),
                           key=lambda q: q.relative_to(p).as_posix())
            units = tuple(Unit(str(f), f"{p.name}/{f.relative_to(p).as_posix()}", kind_of(f) or "text",
                               f.stat().st_size) for f in files)
            if not units:
                raise ValueError(f"--data: the folder {path!r} holds no input file"
                                 + (f" matching --glob {glob!r}" if glob else
                                    f" (text: {', '.join(TEXT_SUFFIXES)}; {', '.join(JSONL_SUFFIXES)}; .parquet)"))
        elif p.is_file():
            units = (Unit(str(p), p.name, kind_of(p) or "text", p.stat().st_size),)
        else:
            raise FileNotFoundError(f"--data: {path!r} is neither a file nor a folder")
        out.append(Source(spec, weight, units))
    return out


def content_hash(unit: Unit) -> str:
    """sha256 of the unit's bytes (of every file, for a saved dataset folder), streamed."""
    h = hashlib.sha256()
    files = sorted(Path(unit.path).rglob("*")) if unit.kind == "hf" else [Path(unit.path)]
    for f in files:
        if not f.is_file():
            continue
        h.update(f.name.encode() + b"\0")
        try:
            with f.open("rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
        except OSError as e:
            raise ValueError(f"--data: cannot read {f}: {e.strerror or e}") from None
    return h.hexdigest()


def read(unit: Unit, text_field: str = "text", skipped: list[str] | None = None) -> Iterator[Document]:
    """The unit's documents, streamed. A text file that is not UTF-8 (or unreadable) yields nothing
    and is appended to `skipped`; a jsonl or parquet row without a string `text_field` is a
    ValueError naming the file and line/row."""
    if unit.kind == "text":
        try:
            text = Path(unit.path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            if skipped is not None:
                skipped.append(unit.path)
            return
        if text:
            yield Document(unit.name, text)
    elif unit.kind == "jsonl":
        yield from _jsonl(Path(unit.path), text_field, unit.name)
    elif unit.kind == "parquet":
        yield from _parquet(Path(unit.path), text_field, unit.name)
    elif unit.kind == "hf":
        yield from _hf_dataset(Path(unit.path), text_field, unit.name)
    else:
        raise ValueError(f"unknown unit kind {unit.kind!r}")


def _open_text(path: Path) -> io.TextIOBase:
    n = path.name.lower()
    if n.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    if n.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise ValueError(f"--data: {path} is zstd-compressed; `pip install zstandard` to read it") from None
        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(path.open("rb")), encoding="utf-8")
    return path.open(encoding="utf-8")


def _jsonl(path: Path, field: str, name: str) -> Iterator[Document]:
    """One document per line from the string `field` of each JSON object; a clear error naming the
    file and line for anything else (bad JSON, a bare string/number/null, a missing field)."""
    try:
        f = _open_text(path)
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
        except (EOFError, gzip.BadGzipFile, OSError) as e:
            raise ValueError(f"{path}:{i + 2}: cannot decompress ({e})") from None


def _parquet(path: Path, field: str, name: str) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"--data: {path} is parquet; `pip install pyarrow` to read it") from None
    try:
        f = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 (pyarrow raises its own error types)
        raise ValueError(f"--data: {path}: not a readable parquet file ({e})") from None
    if field not in f.schema_arrow.names:
        raise ValueError(f"{path}: no column {field!r} (have {f.schema_arrow.names[:8]}); choose it with --text-field")
    row = 0
    for batch in f.iter_batches(columns=[field], batch_size=1024):
        for v in batch.column(0).to_pylist():
            row += 1
            if not isinstance(v, str):
                raise ValueError(f"{path}: row {row}: column {field!r} is {type(v).__name__}, not a string")
            yield Document(f"{name}:{row}", v)


def _hf_dataset(path: Path, field: str, name: str) -> Iterator[Document]:
    try:
        from datasets import load_from_disk
    except ImportError:
        raise ValueError(f"--data: {path} is a HuggingFace dataset; `pip install datasets` to read it") from None
    ds = load_from_disk(str(path))
    if hasattr(ds, "keys"):  # a DatasetDict: take the train split
        ds = ds["train"]
    if field not in ds.column_names:
        raise ValueError(f"{path}: no column {field!r} (have {ds.column_names[:8]}); choose it with --text-field")
    for i, batch in enumerate(ds.iter(batch_size=1024)):
        for j, v in enumerate(batch[field]):
            if not isinstance(v, str):
                raise ValueError(f"{path}: row {i * 1024 + j + 1}: column {field!r} is {type(v).__name__}, "
                                 "not a string")
            yield Document(f"{name}:{i * 1024 + j}", v)


def load_documents(specs: list[str], text_field: str = "text", glob: str | None = None) -> list[Document]:
    """Every document of the sources, in memory: for small inputs (`headway eval --data`)."""
    docs = [d for s in resolve(specs, glob) for u in s.units for d in read(u, text_field)]
    if not docs:
        raise ValueError(f"--data: no documents with text found in {specs}")
    return docs

"""`headway prepare`: sources -> tokenizer -> token shards, streamed, on every core.

1. Resolve the sources into units (files) and hash each unit's content (in worker processes).
2. Train the byte-level BPE on a bounded sample: the units in the order of a hash of their name
   (a spread over the corpus, the same on every machine) until `sample_bytes`, training documents
   only. It runs in a child process, so its memory leaves with it. The tokenizer is keyed by the
   sample's content and reused while that key holds.
3. Group consecutive units into tasks of about TASK_BYTES and tokenize the tasks in worker
   processes, each writing its own piece (see `shards`). A task is keyed by the tokenizer and its
   units' content: an unchanged task is never redone, an edited file redoes its task only.
4. Write the manifest (atomically, last): tokenizer hash, every source's units, sizes, content
   hashes, pieces and counts. Pieces no longer listed are deleted.

Every document is split into train/validation by a hash of its name (`sources.is_validation`).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headway.data.shards import PieceWriter, ShardError, ShardSet, sha256_file, token_dtype, verify_piece
from headway.data.sources import Source, Unit, content_hash, is_validation, read, resolve
from headway.data.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer, external_tokenizer_json, load_tokenizer

FORMAT = 1
TASK_BYTES = 2 << 20  # a task reads about this much (many tasks per worker: balanced)
ENCODE_CHARS = 4 << 20  # texts are encoded this many characters at a time
DEFAULT_SAMPLE_BYTES = 64 << 20  # the BPE is trained on at most this much text


@dataclass(frozen=True)
class Settings:
    tokenizer: str = "bpe"  # bpe | bytes | a path to an existing tokenizer (`external_tokenizer_json`)
    vocab_size: int = 8192
    val_fraction: float = 0.05
    text_field: str = "text"
    glob: str | None = None
    sample_bytes: int = DEFAULT_SAMPLE_BYTES


@dataclass
class Prepared:
    """A prepared data folder, opened: the tokenizer and, per source, its train/validation shards."""

    folder: Path
    manifest: dict
    tokenizer: Tokenizer
    train: list[ShardSet]
    val: list[ShardSet]
    weights: list[float]

    @property
    def name(self) -> str:
        return ", ".join(s["spec"] for s in self.manifest["sources"])

    def totals(self, split: str) -> dict:
        return {k: sum(s["totals"][split][k] for s in self.manifest["sources"]) for k in ("docs", "tokens", "bytes")}


def _progress(total: float, desc: str, enabled: bool):  # noqa: ANN202
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, dynamic_ncols=True,
                mininterval=0.5, disable=not enabled)


def _pool(workers: int) -> ProcessPoolExecutor:
    # fork: no re-import per worker; TOKENIZERS_PARALLELISM=false: one core per worker (no oversubscription)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"))


def _hash_units(units: list[Unit]) -> list[str]:
    return [content_hash(u) for u in units]


def _groups(units: list[Unit], size: int) -> Iterator[list[Unit]]:
    group: list[Unit] = []
    n = 0
    for u in units:
        if group and n + u.size > size:
            yield group
            group, n = [], 0
        group.append(u)
        n += u.size
    if group:
        yield group


def sample_units(sources: list[Source], sample_bytes: int) -> list[Unit]:
    """The units the BPE is trained on: in the order of sha1(name), until `sample_bytes` on disk."""
    units = sorted((u for s in sources for u in s.units), key=lambda u: hashlib.sha1(u.name.encode()).hexdigest())
    out, n = [], 0
    for u in units:
        if n >= sample_bytes:
            break
        out.append(u)
        n += u.size
    return out


def _train_bpe(units: list[Unit], s: Settings, path: str) -> None:
    """Child process: train the BPE on the sample's training documents, streamed, and save it."""
    def texts() -> Iterator[str]:
        n = 0
        for u in units:
            for d in read(u, s.text_field):
                if n >= s.sample_bytes:
                    return
                if not is_validation(d.name, s.val_fraction):
                    n += len(d.text)
                    yield d.text

    BPETokenizer.train(texts(), s.vocab_size, progress=False).tok.save(path)


_TOKENIZER: dict[str, Tokenizer] = {}


def _tokenize(folder: str, key: str, units: list[Unit], tok_path: str, dtype: str, s: Settings) -> dict:
    """Worker: one task's units -> one piece. Returns the piece's record (and what was skipped)."""
    tok = _TOKENIZER.get(tok_path)
    if tok is None:
        tok = _TOKENIZER[tok_path] = load_tokenizer(Path(tok_path).parent)
    w = PieceWriter(Path(folder), key, np.dtype(dtype))
    skipped: list[str] = []
    pending: list[tuple[str, str]] = []  # (split, text)
    size = 0

    def flush() -> None:
        for (split, text), ids in zip(pending, tok.encode_batch([t for _, t in pending])):
            w.add(split, ids, len(text.encode("utf-8", "surrogatepass")))
        pending.clear()

    for u in units:
        for d in read(u, s.text_field, skipped):
            pending.append(("val" if is_validation(d.name, s.val_fraction) else "train", d.text))
            size += len(d.text)
            if size >= ENCODE_CHARS:
                flush()
                size = 0
    flush()
    return {"key": key, **w.close(), "skipped": skipped}


def _key(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:32]


def prepare(specs: list[str], folder: Path, s: Settings = Settings(), workers: int = 0,
            tokenizer_from: Path | None = None, log: Callable[[str], None] = print,
            progress: bool = True) -> Prepared:
    """Prepare `specs` into `folder` (see the module docstring) and open the result.

    tokenizer_from: a folder holding the tokenizer.json to use instead of training one (a resumed
    run keeps its own). workers: processes (0: every core)."""
    workers = workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    sources = resolve(specs, s.glob)
    folder.mkdir(parents=True, exist_ok=True)
    pieces_dir = folder / "pieces"
    units = [u for src in sources for u in src.units]
    total_bytes = sum(u.size for u in units)
    with _pool(workers) as pool:
        bar = _progress(total_bytes, "hashing", progress)
        hashes: dict[str, str] = {}
        futures = {pool.submit(_hash_units, g): g for g in _groups(units, TASK_BYTES)}
        for f in as_completed(futures):
            for u, h in zip(futures[f], f.result()):
                hashes[u.path + "\0" + u.name] = h
            if bar is not None:
                bar.update(sum(u.size for u in futures[f]))
        if bar is not None:
            bar.close()
        uhash = lambda u: hashes[u.path + "\0" + u.name]  # noqa: E731

        # the tokenizer
        tok_path = folder / "tokenizer.json"
        if tokenizer_from is not None:
            tok_src = tokenizer_from / "tokenizer.json"
            if tok_src.resolve() != tok_path.resolve():
                tok_path.write_bytes(tok_src.read_bytes())
            tok_key = "from " + sha256_file(tok_path)
        elif s.tokenizer == "bytes":
            tok_key = "bytes"
            ByteTokenizer().save(folder)
        elif s.tokenizer != "bpe":  # an existing tokenizer, copied in whole
            text = external_tokenizer_json(s.tokenizer)
            if not tok_path.exists() or tok_path.read_text(encoding="utf-8") != text:
                tmp = folder / "tokenizer.json.tmp"
                tmp.write_text(text, encoding="utf-8")
                tmp.replace(tok_path)
            tok_key = "external " + sha256_file(tok_path)
        else:
            sample = sample_units(sources, s.sample_bytes)
            tok_key = _key({"bpe": s.vocab_size, "sample_bytes": s.sample_bytes, "val": s.val_fraction,
                            "field": s.text_field, "units": [(u.name, uhash(u)) for u in sample]})
            stamp = folder / "tokenizer.key"
            if not (tok_path.exists() and stamp.exists() and stamp.read_text() == tok_key):
                log(f"data: training a byte-level BPE of {s.vocab_size} tokens on up to {s.sample_bytes / 2**20:.0f} "
                    f"MiB of training text ({len(sample)} of {len(units)} files)")
                pool.submit(_train_bpe, sample, s, str(folder / "tokenizer.json.tmp")).result()
                (folder / "tokenizer.json.tmp").replace(tok_path)
                stamp.write_text(tok_key)
        tok = load_tokenizer(folder)
        tok_hash = sha256_file(tok_path)
        dtype = token_dtype(tok.base_size)

        # the pieces
        old = _read_manifest(folder) if (folder / "manifest.json").exists() else None
        old_pieces = {p["key"]: p for p in (old or {}).get("pieces", [])} if old else {}
        plan: list[tuple[int, str, list[Unit]]] = []
        for i, src in enumerate(sources):
            for g in _groups(list(src.units), TASK_BYTES):
                plan.append((i, _key({"format": FORMAT, "tokenizer": tok_hash, "val": s.val_fraction,
                                      "field": s.text_field, "dtype": dtype.name,
                                      "units": [(u.name, u.kind, uhash(u)) for u in g]}), g))
        records: dict[str, dict] = {}
        todo = []
        for _, key, g in plan:
            if key in old_pieces and key not in records:
                try:
                    verify_piece(pieces_dir, old_pieces[key])
                    records[key] = old_pieces[key]
                    continue
                except ShardError:
                    pass  # rebuild it
            todo.append((key, g))
        redo_bytes = sum(u.size for _, g in todo for u in g)
        if todo:
            log(f"data: tokenizing {redo_bytes / 2**20:.1f} MiB in {len(todo)} task(s) on {workers} process(es)"
                + (f" ({len(plan) - len(todo)} unchanged task(s) reused)" if len(todo) < len(plan) else ""))
        bar = _progress(redo_bytes, "tokenizing", progress and bool(todo))
        futures = {pool.submit(_tokenize, str(pieces_dir), key, g, str(tok_path), dtype.name, s): g
                   for key, g in todo}
        for f in as_completed(futures):
            rec = f.result()
            records[rec["key"]] = rec
            if bar is not None:
                bar.update(sum(u.size for u in futures[f]))
        if bar is not None:
            bar.close()

    skipped = [p for r in records.values() for p in r.get("skipped", [])]
    manifest = {"format": FORMAT, "tokenizer": {"kind": tok.kind, "base_size": tok.base_size, "sha256": tok_hash},
                "dtype": dtype.name, "settings": {"val_fraction": s.val_fraction, "text_field": s.text_field,
                                                  "glob": s.glob, "sample_bytes": s.sample_bytes},
                "sources": [], "pieces": [records[k] for k in dict.fromkeys(k for _, k, _ in plan)],
                "skipped": {"files": len(skipped), "examples": skipped[:3]}}
    for i, src in enumerate(sources):
        keys = [k for j, k, _ in plan if j == i]
        totals = {sp: {k: sum(records[p][sp][k] for p in keys) for k in ("docs", "tokens", "bytes")}
                  for sp in ("train", "val")}
        manifest["sources"].append({
            "spec": src.spec, "weight": src.weight, "units": len(src.units), "bytes_on_disk": src.size,
            "sha256": _key([(u.name, uhash(u)) for u in src.units]), "pieces": keys, "totals": totals})
    tmp = folder / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(folder / "manifest.json")
    listed = {n for r in manifest["pieces"] for sp in ("train", "val") for n in r[sp]["files"]}
    for f in pieces_dir.glob("*") if pieces_dir.is_dir() else []:
        if f.name not in listed:
            f.unlink(missing_ok=True)  # stale pieces and leftovers of an interrupted run
    if skipped:
        log(f"warning: --data: {skipped_note(manifest)}")
    dt = time.perf_counter() - t0
    if todo:
        mb = total_bytes / 2**20
        log(f"data: prepared {mb:.1f} MiB in {dt:.1f}s ({mb / max(dt, 1e-9):.1f} MiB/s) "
            f"into {folder}")
    return open_prepared(folder, verify=False)


def skipped_note(manifest: dict) -> str:
    """'N file(s) skipped as unreadable or not UTF-8 text, e.g. …' ('' when none was)."""
    sk = manifest.get("skipped", {})
    if not sk.get("files"):
        return ""
    return (f"{sk['files']} file(s) skipped as unreadable or not UTF-8 text, e.g. " + ", ".join(sk["examples"])
            + ("..." if sk["files"] > len(sk["examples"]) else ""))


def _read_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    try:
        m = json.loads(path.read_text())
    except FileNotFoundError:
        raise ShardError(f"{path} is missing: {folder} is not a prepared data folder (run `headway prepare`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(f"{path} is corrupt ({e}); run `headway prepare` again") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT or "sources" not in m or "pieces" not in m:
        raise ShardError(f"{path} is not a headway manifest of format {FORMAT}; run `headway prepare` again")
    return m


def is_prepared(path: Path) -> bool:
    return path.is_dir() and (path / "manifest.json").is_file()


def open_prepared(folder: Path, verify: bool = True) -> Prepared:
    """Open a prepared folder; with `verify`, every piece's size and sha256 are checked first
    (ShardError naming the file)."""
    m = _read_manifest(folder)
    tok_path = folder / "tokenizer.json"
    if not tok_path.is_file():
        raise ShardError(f"{tok_path} is missing; run `headway prepare` again")
    if sha256_file(tok_path) != m["tokenizer"]["sha256"]:
        raise ShardError(f"{tok_path} is not the tokenizer the shards were made with; run `headway prepare` again")
    pieces = {p["key"]: p for p in m["pieces"]}
    if verify:
        for p in m["pieces"]:
            verify_piece(folder / "pieces", p)
    dtype = np.dtype(m["dtype"])
    train = [ShardSet(folder / "pieces", [pieces[k] for k in s["pieces"]], "train", dtype) for s in m["sources"]]
    val = [ShardSet(folder / "pieces", [pieces[k] for k in s["pieces"]], "val", dtype) for s in m["sources"]]
    return Prepared(folder, m, load_tokenizer(folder), train, val, [float(s["weight"]) for s in m["sources"]])

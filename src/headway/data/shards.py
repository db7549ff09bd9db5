"""Token shards on disk: flat memory-mappable token files plus a document index (the layout of
nanoGPT's `train.bin` and Megatron's indexed datasets).

A *piece* is what one preparation task writes, per split:
    pieces/KEY.SPLIT.bin      the documents' token ids back to back, uint16 (V <= 65,536) or uint32
    pieces/KEY.SPLIT.idx.npy  (D+1, 2) int64: row d = (first token, first byte) of document d; the
                              last row holds the totals, so document d is bin[idx[d,0]:idx[d+1,0]]
                              and holds idx[d+1,1] - idx[d,1] bytes of UTF-8 text
Both are written under a temporary name and renamed, so a piece is either whole or absent; the
manifest records each file's size and sha256, checked when the piece is opened.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "val")


class ShardError(ValueError):
    """A shard or the manifest is missing, truncated or corrupt."""


def token_dtype(base_size: int) -> np.dtype:
    return np.dtype(np.uint16) if base_size <= 1 << 16 else np.dtype(np.uint32)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def piece_files(key: str, split: str) -> tuple[str, str]:
    return f"{key}.{split}.bin", f"{key}.{split}.idx.npy"


class PieceWriter:
    """Appends documents to one piece's files (streamed: only the index rows stay in memory)."""

    def __init__(self, folder: Path, key: str, dtype: np.dtype) -> None:
        self.folder, self.key, self.dtype = folder, key, np.dtype(dtype)
        folder.mkdir(parents=True, exist_ok=True)
        self.bins = {s: (folder / f"{piece_files(key, s)[0]}.tmp{os.getpid()}").open("wb") for s in SPLITS}
        self.rows: dict[str, list[tuple[int, int]]] = {s: [(0, 0)] for s in SPLITS}

    def add(self, split: str, ids: np.ndarray, num_bytes: int) -> None:
        if len(ids) and int(ids.max()) > np.iinfo(self.dtype).max:
            raise ValueError(f"token id {int(ids.max())} does not fit {self.dtype}")
        self.bins[split].write(np.ascontiguousarray(ids, dtype=self.dtype).tobytes())
        t, b = self.rows[split][-1]
        self.rows[split].append((t + len(ids), b + num_bytes))

    def close(self) -> dict:
        """Renames the files into place; returns the piece's manifest record."""
        rec: dict = {}
        for s in SPLITS:
            self.bins[s].close()
            bin_name, idx_name = piece_files(self.key, s)
            tmp_bin = self.folder / f"{bin_name}.tmp{os.getpid()}"
            idx = np.asarray(self.rows[s], dtype=np.int64)
            tmp_idx = self.folder / f"{idx_name}.tmp{os.getpid()}.npy"
            np.save(tmp_idx, idx)
            files = {}
            for tmp, name in ((tmp_bin, bin_name), (tmp_idx, idx_name)):
                files[name] = {"bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)}
                tmp.replace(self.folder / name)
            rec[s] = {"docs": len(idx) - 1, "tokens": int(idx[-1, 0]), "bytes": int(idx[-1, 1]), "files": files}
        return rec


def verify_piece(folder: Path, rec: dict, full: bool = True) -> None:
    """Every file of a piece present, of its recorded size and (full) sha256; ShardError naming it."""
    for s in SPLITS:
        for name, want in rec[s]["files"].items():
            path = folder / name
            if not path.is_file():
                raise ShardError(f"shard {path} is missing; run `headway prepare` again to rebuild it")
            size = path.stat().st_size
            if size != want["bytes"]:
                raise ShardError(f"shard {path} is truncated or altered: {size} bytes, the manifest says "
                                 f"{want['bytes']}; run `headway prepare` again to rebuild it")
            if full and sha256_file(path) != want["sha256"]:
                raise ShardError(f"shard {path} is corrupt (its sha256 differs from the manifest's); run "
                                 "`headway prepare` again to rebuild it")


@dataclass
class Piece:
    tokens: np.ndarray  # memmap (T,)
    index: np.ndarray  # (D+1, 2)


class ShardSet:
    """One split of one source: the documents of its pieces, in order, memory-mapped.

    Memory: the pieces' indexes (16 bytes per document) and the pages of tokens actually read."""

    def __init__(self, folder: Path, records: list[dict], split: str, dtype: np.dtype) -> None:
        self.pieces: list[Piece] = []
        for rec in records:
            r = rec[split]
            if r["docs"] == 0:
                continue
            bin_name, idx_name = piece_files(rec["key"], split)
            tokens = (np.memmap(folder / bin_name, dtype=dtype, mode="r") if r["tokens"]
                      else np.zeros(0, dtype=dtype))
            index = np.load(folder / idx_name, mmap_mode="r")
            if index.shape != (r["docs"] + 1, 2) or int(index[-1, 0]) != len(tokens):
                raise ShardError(f"shard {folder / idx_name} does not match {folder / bin_name}")
            self.pieces.append(Piece(tokens, index))
        counts = [len(p.index) - 1 for p in self.pieces]
        self.starts = np.cumsum([0] + counts).astype(np.int64)  # first document of each piece
        self.num_tokens = sum(int(p.index[-1, 0]) for p in self.pieces)
        self.num_bytes = sum(int(p.index[-1, 1]) for p in self.pieces)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _locate(self, i: int) -> tuple[Piece, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"document {i} of {len(self)}")
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.pieces[k], i - int(self.starts[k])

    def doc(self, i: int) -> np.ndarray:
        """Document i's token ids as int64 (a copy; the memmap stays read-only)."""
        p, j = self._locate(i)
        return np.asarray(p.tokens[int(p.index[j, 0]) : int(p.index[j + 1, 0])], dtype=np.int64)

    def doc_bytes(self, i: int) -> int:
        p, j = self._locate(i)
        return int(p.index[j + 1, 1] - p.index[j, 1])

    def first(self, max_tokens: int | None) -> tuple[list[np.ndarray], int]:
        """The first documents (in stored order) until at least `max_tokens` tokens (all: None),
        and their exact byte count: a validation subset with an exact bits-per-byte denominator."""
        docs, n, nbytes = [], 0, 0
        for i in range(len(self)):
            if max_tokens is not None and n >= max_tokens:
                break
            d = self.doc(i)
            if len(d):
                docs.append(d)
                n += len(d)
                nbytes += self.doc_bytes(i)
        return docs, nbytes

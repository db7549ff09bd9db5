"""Packing examples into fixed-length rows: concat-and-split, best-fit-decreasing, or one per row.

Documents are first cut into chunks the objective can turn into an example that fits a row
(`objective.max_tokens(S)`), so with best-fit-decreasing no example is ever split. Both
strategies stream with bounded memory (BFD holds at most `buffer_size` examples).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from headway.types import Example, Objective

STRATEGIES = ("bfd", "concat", "single")
MAX_CHAR_TOKENS = 8  # a character is at most 4 UTF-8 bytes, so a boundary lies within this many tokens


@dataclass
class PackStats:
    """Running totals: efficiency = non-pad tokens / all row tokens."""

    rows: int = 0
    tokens: int = 0
    pad_tokens: int = 0
    truncated_tokens: int = 0
    examples: int = 0

    @property
    def efficiency(self) -> float:
        total = self.tokens + self.pad_tokens
        return self.tokens / total if total else 0.0


Boundary = Callable[[np.ndarray, int], "bool | None"]


def chunks(doc: np.ndarray, limit: int, starts_char: np.ndarray | None = None,
           boundary: Boundary | None = None) -> Iterator[np.ndarray]:
    """Consecutive pieces of `doc` of at most `limit` tokens that together are the whole document.

    With `starts_char` (a tokenizer's table: does token i begin a UTF-8 character?) or `boundary`
    (`boundary(doc, i)`: may the document be cut before position i? e.g. an objective's
    `is_character_boundary`) every cut falls on a character boundary, so each piece decodes to
    exactly its own text: a cut inside a multi-byte character would decode to U+FFFD on both sides,
    and an objective that works on characters (FIM) would then alter the text. A piece is only
    shortened for this, never lengthened; `boundary` is asked about at most `MAX_CHAR_TOKENS` positions
    before each cut.
    """
    def ok(c: int) -> bool:
        if starts_char is not None:
            return bool(starts_char[doc[c]])
        said = boundary(doc, c) if boundary is not None else None
        return True if said is None else bool(said)  # None: the objective does not work on characters

    s, n = 0, len(doc)
    while s < n:
        e = min(s + limit, n)
        if e < n and (starts_char is not None or boundary is not None):
            c = e
            floor = s if starts_char is not None else max(s, e - MAX_CHAR_TOKENS)
            while c > floor and not ok(c):
                c -= 1
            e = c if c > floor else e  # no boundary within reach (not valid UTF-8 anyway): cut by length
        yield doc[s:e]
        s = e


def examples_from_documents(docs: Iterable[np.ndarray], objective: Objective, row_length: int,
                            rng: np.random.Generator, starts_char: np.ndarray | None = None) -> Iterator[Example]:
    """Cut each document into chunks of at most `objective.max_tokens(row_length)` tokens and apply the
    objective to each chunk (context-level FIM, T5-style chunking). Where the objective works on
    characters (it has an `is_character_boundary` that answers), every cut falls between characters,
    checked through its own codec, or through the tokenizer's `starts_char` table when one is given
    (faster; see `chunks`)."""
    if row_length < 2:
        raise ValueError(f"row_length must be >= 2, got {row_length}")
    limit = objective.max_tokens(row_length)
    if limit < 1:
        raise ValueError(f"objective {objective.name!r} cannot fit any document in rows of {row_length} tokens")
    boundary = getattr(objective, "is_character_boundary", None) if starts_char is None else None
    for doc in docs:
        for piece in chunks(np.asarray(doc, dtype=np.int64), limit, starts_char, boundary):
            yield objective(piece, rng)


def _piece(ex: Example, start: int, stop: int) -> Example:
    """Positions [start, stop) of an example as its own segment (prefix clipped to the piece; loss weights,
    when the example has them, cut with it: a weighted piece counts its own positions)."""
    prefix = min(max(ex.prefix_length - start, 0), stop - start)
    w = None if ex.loss_weights is None else ex.loss_weights[start:stop]
    return Example(ex.input_ids[start:stop], ex.labels[start:stop], prefix, w)


class Packer:
    """Turns a stream of examples into rows (lists of segments) of total length <= `row_length`."""

    def __init__(self, row_length: int, strategy: str = "bfd", buffer_size: int = 512) -> None:
        if row_length < 2:
            raise ValueError(f"Packer: `row_length` must be >= 2, got {row_length}")
        if strategy not in STRATEGIES:
            raise ValueError(f"Packer: `strategy` must be one of {STRATEGIES}, got {strategy!r}")
        if buffer_size < 1:
            raise ValueError(f"Packer: `buffer_size` must be >= 1, got {buffer_size}")
        self.S, self.strategy, self.buffer_size = row_length, strategy, buffer_size
        self.stats = PackStats()

    def _emit(self, row: list[Example]) -> list[Example]:
        n = sum(len(e) for e in row)
        self.stats.rows += 1
        self.stats.tokens += n
        self.stats.pad_tokens += self.S - n
        return row

    def _fit(self, ex: Example) -> Example:
        """An example whole, counted: one that is longer than a row is cut to its first `row_length`
        positions (the tokens cut counted as truncated)."""
        self.stats.examples += 1
        if len(ex) > self.S:
            self.stats.truncated_tokens += len(ex) - self.S
            ex = _piece(ex, 0, self.S)
        return ex

    def pack(self, examples: Iterable[Example]) -> Iterator[list[Example]]:
        if self.strategy == "single":
            return self._single(examples)
        return self._concat(examples) if self.strategy == "concat" else self._bfd(examples)

    def _single(self, examples: Iterable[Example]) -> Iterator[list[Example]]:
        """One example per row, then padding: for backbones that cannot keep packed documents apart."""
        for ex in examples:
            yield self._emit([self._fit(ex)])

    def _concat(self, examples: Iterable[Example]) -> Iterator[list[Example]]:
        row: list[Example] = []
        room = self.S
        for ex in examples:
            self.stats.examples += 1
            start = 0
            while start < len(ex):
                take = min(room, len(ex) - start)
                row.append(_piece(ex, start, start + take))
                start += take
                room -= take
                if room == 0:
                    yield self._emit(row)
                    row, room = [], self.S
        if row:
            yield self._emit(row)

    def _bfd(self, examples: Iterable[Example]) -> Iterator[list[Example]]:
        buf: list[Example] = []
        for ex in examples:
            buf.append(self._fit(ex))
            if len(buf) >= self.buffer_size:
                yield from self._flush(buf)
                buf = []
        if buf:
            yield from self._flush(buf)

    def _flush(self, buf: list[Example]) -> Iterator[list[Example]]:
        """Best-fit decreasing: longest first, each into the open row with the least room that fits."""
        rows: list[list[Example]] = []
        open_rows: list[tuple[int, int]] = []  # (room left, row) of the rows not yet full, sorted
        for ex in sorted(buf, key=len, reverse=True):
            n = len(ex)
            k = bisect.bisect_left(open_rows, (n, -1))  # least room that fits; the first such row on ties
            if k < len(open_rows):
                room, i = open_rows.pop(k)
                rows[i].append(ex)
            else:
                room, i = self.S, len(rows)
                rows.append([ex])
            if room > n:
                bisect.insort(open_rows, (room - n, i))
        for r in rows:
            yield self._emit(r)

"""Batches from documents held in memory: objective -> packing -> collation, epoch after epoch.

For a corpus that fits in memory (a notebook, a test, the quick-start). At scale, `headway prepare`
writes memory-mapped token shards and `headway.data.Loader` streams batches from them with workers
and an exact resume.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from headway.data.collate import collate
from headway.data.packing import Packer, examples_from_documents
from headway.types import Batch, Objective


def batches(docs: Sequence[np.ndarray | Sequence[int]], objective: Objective, row_length: int, batch_size: int,
            pad_id: int, rng: np.random.Generator | int = 0, *, strategy: str = "bfd", buffer_size: int = 512,
            starts_char: np.ndarray | None = None, epochs: int | None = None) -> Iterator[Batch]:
    """Yield `Batch`es of `batch_size` rows of `row_length` tokens from `docs` (each one document's
    base token ids), without end unless `epochs` is given.

    Every epoch visits the documents in a fresh random order, cuts each into chunks that fit a row
    (`objective.max_tokens(row_length)`), applies `objective`, and packs the examples with `Packer`
    (`strategy` "bfd": best-fit decreasing over `buffer_size` examples; "concat": concat-and-split).
    Rows are grouped into batches as they come, across epoch ends; a last partial batch is yielded
    when `epochs` ends the stream. `rng` (a `numpy.random.Generator` or a seed) drives the order and
    the objective, so the same seed gives the same batches. `pad_id` is `vocab.pad`.
    """
    if batch_size < 1:
        raise ValueError(f"batches: `batch_size` must be >= 1, got {batch_size}")
    if epochs is not None and epochs < 1:
        raise ValueError(f"batches: `epochs` must be >= 1 or None, got {epochs}")
    if len(docs) == 0:
        raise ValueError("batches: `docs` is empty")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    arrays = [np.asarray(d, dtype=np.int64) for d in docs]
    packer = Packer(row_length, strategy, buffer_size)
    rows: list = []
    epoch = 0
    while epochs is None or epoch < epochs:
        order = rng.permutation(len(arrays))
        before = packer.stats.rows
        examples = examples_from_documents((arrays[i] for i in order), objective, row_length, rng, starts_char)
        for row in packer.pack(examples):
            rows.append(row)
            if len(rows) == batch_size:
                yield collate(rows, row_length, pad_id)
                rows = []
        if packer.stats.rows == before:
            raise ValueError("batches: the documents are all empty; no row could be packed")
        epoch += 1
    if rows:
        yield collate(rows, row_length, pad_id)

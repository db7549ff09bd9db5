"""Rows of segments -> a `Batch` of tensors carrying the mask spec (docs/concepts.md; `Batch` is in `headway.types`)."""

from __future__ import annotations

import numpy as np
import torch

from headway.constants import IGNORE_INDEX
from headway.types import Batch, Example


def collate(rows: list[list[Example]], row_length: int, pad_id: int) -> Batch:
    """Lay rows of segments out as a Batch, padding with `pad_id` (inputs) and IGNORE_INDEX (labels).

    When some example carries `loss_weights` the batch gets (B, S) float32 weights — the example's own,
    1 on an unweighted example's targets, 0 elsewhere — and `row_items` (B,), each row's sum of
    `Example.num_items`; otherwise both stay None (the batch is what it always was)."""
    B, S = len(rows), row_length
    weighted = any(ex.loss_weights is not None for row in rows for ex in row)
    weights = np.zeros((B, S), dtype=np.float32) if weighted else None
    items = np.zeros(B, dtype=np.int64) if weighted else None
    D = max(1, max(len(r) for r in rows))
    ids = np.full((B, S), pad_id, dtype=np.int64)
    labels = np.full((B, S), IGNORE_INDEX, dtype=np.int64)
    pos = np.zeros((B, S), dtype=np.int64)
    doc = np.full((B, S), -1, dtype=np.int64)
    prefix = np.zeros((B, D), dtype=np.int64)
    for b, row in enumerate(rows):
        t = 0
        for d, ex in enumerate(row):
            n = len(ex)
            if t + n > S:
                raise ValueError(f"collate: row {b} holds {t + n} tokens, more than row_length={S}")
            ids[b, t : t + n] = ex.input_ids
            labels[b, t : t + n] = ex.labels
            pos[b, t : t + n] = np.arange(n)
            doc[b, t : t + n] = d
            prefix[b, d] = ex.prefix_length
            if weights is not None and items is not None:
                w = ex.loss_weights if ex.loss_weights is not None else (ex.labels != IGNORE_INDEX)
                weights[b, t : t + n] = w
                items[b] += ex.num_items
            t += n
    as_t = torch.from_numpy
    if weights is None or items is None:
        return Batch(as_t(ids), as_t(labels), as_t(pos), as_t(doc), as_t(prefix))
    return Batch(as_t(ids), as_t(labels), as_t(pos), as_t(doc), as_t(prefix), as_t(weights), as_t(items))

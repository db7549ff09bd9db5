"""Rows of segments -> a `Batch` of tensors carrying the mask spec (docs/concepts.md; `Batch` is in `headway.types`)."""

from __future__ import annotations

import numpy as np
import torch

from headway.constants import IGNORE_INDEX
from headway.types import Batch, Example


def collate(rows: list[list[Example]], row_length: int, pad_id: int) -> Batch:
    """Lay rows of segments out as a Batch, padding with `pad_id` (inputs) and IGNORE_INDEX (labels)."""
    B, S = len(rows), row_length
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
            t += n
    as_t = torch.from_numpy
    return Batch(as_t(ids), as_t(labels), as_t(pos), as_t(doc), as_t(prefix))

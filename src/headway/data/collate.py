"""Rows of segments -> a `Batch` of tensors carrying the mask spec (DESIGN.md)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from headway.constants import IGNORE_INDEX
from headway.objectives.base import Example


@dataclass
class Batch:
    """B rows of S positions.

    input_ids, labels, position_ids, document_ids: (B, S) int64. `document_ids` numbers the
    segments of each row 0, 1, ... (-1 on padding); `position_ids` restart at 0 in every segment;
    `prefix_lengths` (B, D) holds each segment's bidirectional prefix length.
    """

    input_ids: Tensor
    labels: Tensor
    position_ids: Tensor
    document_ids: Tensor
    prefix_lengths: Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)})

    @property
    def num_targets(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    @property
    def is_causal(self) -> bool:
        """True when no segment has a bidirectional prefix (a plain causal mask per document)."""
        return bool((self.prefix_lengths <= 1).all())

    @property
    def is_single_document(self) -> bool:
        return bool((self.document_ids.amax(dim=1) <= 0).all())


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

"""BERT-style MLM transform head and a classification head with a pooling mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headway.heads.lm_head import LMHead


class MLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder (an `LMHead`, usually tied to the input embedding)."""

    def __init__(self, hidden_size: int, decoder: LMHead) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size)
        self.decoder = decoder

    def transform(self, hidden: Tensor) -> Tensor:
        return self.norm(F.gelu(self.dense(hidden)))

    def forward(self, hidden: Tensor, labels: Tensor, **kw) -> Tensor:
        return self.decoder(self.transform(hidden), labels, **kw)

    def logits(self, hidden: Tensor, keep_last: int = 0) -> Tensor:
        return self.decoder.logits(self.transform(hidden), keep_last)


POOLINGS = ("mask", "mean", "last", "first")


class ClassificationHead(nn.Module):
    """dropout -> linear over pooled hidden states.

    pooling "mask": ``hidden[pooling_mask]`` (N_selected, H) -> (N_selected, C);
    "mean"/"first"/"last": one vector per row from the positions where `pooling_mask` is True
    (all positions when None) -> (B, C).
    """

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.0, pooling: str = "mask") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"ClassificationHead: `pooling` must be one of {POOLINGS}, got {pooling!r}")
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden_size, num_labels)
        self.pooling = pooling

    def forward(self, hidden: Tensor, pooling_mask: Tensor | None = None) -> Tensor:
        B, S, _ = hidden.shape
        mask = torch.ones(B, S, dtype=torch.bool, device=hidden.device) if pooling_mask is None else pooling_mask.bool()
        if mask.shape != (B, S):
            raise ValueError(f"ClassificationHead: `pooling_mask` must have shape {(B, S)}, got {tuple(mask.shape)}")
        if self.pooling == "mask":
            pooled = hidden[mask]
        else:
            if not mask.any(dim=1).all():
                raise ValueError("ClassificationHead: every row needs at least one pooled position")
            if self.pooling == "mean":
                m = mask.to(hidden.dtype)[..., None]
                pooled = (hidden * m).sum(1) / m.sum(1)
            else:
                ar = torch.arange(S, device=hidden.device).expand(B, S)
                idx = torch.where(mask, ar, -1 if self.pooling == "last" else S)
                pos = idx.amax(1) if self.pooling == "last" else idx.amin(1)
                pooled = hidden[torch.arange(B), pos]
        return self.proj(self.dropout(pooled))

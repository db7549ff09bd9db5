"""Attention masks from a batch's mask spec (`document_ids`, `position_ids`, `prefix_lengths`).

Position q may attend to k iff both are in the same segment and (k <= q or k is inside that
segment's bidirectional prefix). A padding position (document -1) attends only to itself so that
softmax never sees an empty row.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _prefix_of_each_position(document_ids: Tensor, prefix_lengths: Tensor) -> Tensor:
    """(B, S): the prefix length of the segment each position belongs to (0 on padding)."""
    idx = document_ids.clamp(min=0)
    return torch.where(document_ids >= 0, prefix_lengths.gather(1, idx), torch.zeros_like(idx))


def dense_mask(document_ids: Tensor, position_ids: Tensor, prefix_lengths: Tensor) -> Tensor:
    """(B, S, S) bool, True where query q (dim 1) may attend to key k (dim 2)."""
    S = document_ids.shape[1]
    ar = torch.arange(S, device=document_ids.device)
    causal = ar[None, :, None] >= ar[None, None, :]  # (1, S, S): k <= q
    in_prefix = position_ids < _prefix_of_each_position(document_ids, prefix_lengths)  # (B, S) over keys
    same = (document_ids[:, :, None] == document_ids[:, None, :]) & (document_ids[:, :, None] >= 0)
    pad_self = (document_ids[:, :, None] < 0) & (ar[None, :, None] == ar[None, None, :])
    return (same & (causal | in_prefix[:, None, :])) | pad_self


def sdpa_mask(batch) -> Tensor:  # noqa: ANN001 (a Batch)
    """(B, 1, S, S) bool mask for `F.scaled_dot_product_attention` (True = attend)."""
    return dense_mask(batch.document_ids, batch.position_ids, batch.prefix_lengths)[:, None]


def segment_starts(document_ids: Tensor) -> Tensor:
    """(B*S,) bool over the flattened batch: True where a segment starts (a new row, a new document,
    or a padding run, which counts as its own segment). The one definition of a segment."""
    B, S = document_ids.shape
    row = torch.arange(B, device=document_ids.device)[:, None]
    key = (row * (document_ids.amax() + 2) + document_ids + 1).reshape(-1)
    new = torch.ones_like(key, dtype=torch.bool)
    new[1:] = key[1:] != key[:-1]
    return new


def cu_seqlens(document_ids: Tensor) -> Tensor:
    """int32 cumulative segment lengths over the flattened batch (varlen / flash-attn style),
    padding runs included as their own segments so the offsets cover every position."""
    starts = segment_starts(document_ids).nonzero().squeeze(1)
    return torch.cat([starts, torch.tensor([document_ids.numel()], device=starts.device)]).to(torch.int32)


def flex_block_mask(batch, block_size: int = 128):  # noqa: ANN001, ANN201
    """A FlexAttention `BlockMask` for the batch (needs torch >= 2.5 with flex attention)."""
    from torch.nn.attention.flex_attention import create_block_mask

    doc, pos = batch.document_ids, batch.position_ids
    pre = _prefix_of_each_position(doc, batch.prefix_lengths)

    def mask_mod(b, h, q, k):  # noqa: ANN001, ANN202
        same = (doc[b, q] == doc[b, k]) & (doc[b, q] >= 0)
        return (same & ((k <= q) | (pos[b, k] < pre[b, k]))) | ((doc[b, q] < 0) & (q == k))

    B, S = doc.shape
    return create_block_mask(mask_mod, B, None, S, S, device=doc.device.type, BLOCK_SIZE=block_size)

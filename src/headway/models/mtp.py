"""Multi-token prediction (DeepSeek-V3, section 2.2; Gloeckle et al. 2024): K sequential modules
after the backbone that predict the tokens 2..K+1 ahead, through the shared embedding and the shared
fused head — never the (N, V) logits.

Depth k = 1..K at position t, from the previous depth's hidden state h^{k-1} (h^0: the backbone's
output) and the embedding e of the token k positions on:

    u^k_t = W_k [RMSNorm(h^{k-1}_t) ; RMSNorm(e(x_{t+k}))]       W_k: (H, 2H), no bias
    h^k   = Block_k(u^k)                                        one block over the row, the batch's mask
    ℓ^k_t = CE(head(RMSNorm(h^k_t)), y^k_t)                     the shared fused head

so depth k at t sees the inputs up to t + k and predicts y^k_t = labels[t + k], the token k + 1
ahead of t (`depth_labels`). The block is headway's transformer `Block` (RoPE, SDPA, the batch's
mask spec): with the transformer backbone the backbone's own configuration (activation, QK-norm,
zero-initialized projections); with any other backbone (the gated SSM, every `hf:` architecture) a
block of the same recipe at the backbone's width, so one construction works on every registered
backbone.

The loss (`MTP.loss`), with ℓ^0 the main head's token losses, n the main loss's denominator (its
number of targets, or `num_items_in_batch`: one normalization for every term) and λ = `weight`:

    L = (Σ_t ℓ^0_t + λ/K · Σ_k Σ_t ℓ^k_t) / n

i.e. the main loss plus λ times the mean over depths of each depth's summed loss over the same n
(a depth has a few targets fewer than the main head: none in a document's last k positions, so
this is each depth's mean times n_k / n). All K + 1 terms go through one call of the fused head
(`reduction="none"`, the valid rows of every depth side by side), so one dW buffer serves them.

Shapes: B rows, S positions, H hidden, V vocabulary, N = B·S tokens.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from headway.constants import IGNORE_INDEX
from headway.heads.lm_head import HeadBase
from headway.models.transformer import Block, KVCache, TransformerConfig, attention_layout, rope_table
from headway.types import Batch, Example, Objective

__all__ = ["MTP", "MTPDepth", "depth_labels", "shift_within_documents", "build_mtp", "mtp_heads", "check_objective",
           "batch_depth_labels", "example_depth_targets",
           "depth_loss"]


def depth_labels(labels: Tensor, document_ids: Tensor, position_ids: Tensor, prefix_lengths: Tensor,
                 k: int) -> Tensor:
    """Depth k's aligned targets (B, S) from the main aligned labels (B, S): y^k_t = labels[t + k]
    where labels[t], labels[t+1], ..., labels[t+k] are all targets (not IGNORE_INDEX), t and t + k
    lie in the same document (never padding, document id -1), and t is a left-to-right position
    (at or after the last position of its document's bidirectional prefix, so an MLM document
    packed beside CLM ones gives no depth target); IGNORE_INDEX everywhere else, including the last
    k positions of every document and of the row. k = 0 gives `labels` unchanged."""
    if k < 0:
        raise ValueError(f"depth_labels: `k` must be >= 0, got {k}")
    if k == 0:
        return labels
    B, S = labels.shape
    out = torch.full_like(labels, IGNORE_INDEX)
    if k >= S:
        return out
    real = labels != IGNORE_INDEX  # (B, S)
    ok = real[:, : S - k].clone()
    for j in range(1, k + 1):
        ok &= real[:, j : S - k + j]
    doc = document_ids
    ok &= (doc[:, : S - k] == doc[:, k:]) & (doc[:, : S - k] >= 0)
    prefix = prefix_lengths.gather(1, doc.clamp(min=0))  # (B, S): each position's document prefix
    ok &= position_ids[:, : S - k] >= prefix[:, : S - k] - 1
    out[:, : S - k] = torch.where(ok, labels[:, k:], torch.full_like(labels[:, k:], IGNORE_INDEX))
    return out


def batch_depth_labels(batch: Batch, k: int) -> Tensor:
    """`depth_labels` of a `Batch` (B, S)."""
    return depth_labels(batch.labels, batch.document_ids, batch.position_ids, batch.prefix_lengths, k)


def example_depth_targets(example: Example, objective: Objective, depth: int) -> list[np.ndarray]:
    """[(L,) targets of depth k for k = 1..`depth`] of one `Example` as its own document (what
    `headway show --mtp-depth K` draws); [] for depth 0. An MLM-only objective is refused."""
    check_objective(objective, depth)
    ids = torch.as_tensor(example.input_ids)[None]
    zeros = torch.zeros_like(ids)
    prefix = torch.tensor([[example.prefix_length]])
    labels = torch.as_tensor(example.labels)[None]
    pos = torch.arange(ids.shape[1])[None]
    return [depth_labels(labels, zeros, pos, prefix, k)[0].numpy() for k in range(1, depth + 1)]


def shift_within_documents(x: Tensor, document_ids: Tensor | None, k: int) -> Tensor:
    """(B, S, H) -> (B, S, H): row t holds x[t + k] when t + k is in the row and in t's document
    (any position of a row when `document_ids` is None), else zeros. What depth k combines with
    h^{k-1}_t: the embedding of the token k ahead, nothing from another document."""
    B, S, H = x.shape
    out = torch.zeros_like(x)
    if k >= S:
        return out
    keep = x[:, k:]
    if document_ids is not None:
        same = (document_ids[:, : S - k] == document_ids[:, k:]) & (document_ids[:, : S - k] >= 0)
        keep = keep * same[..., None].to(x.dtype)
    out[:, : S - k] = keep
    return out


class MTPDepth(nn.Module):
    """One depth: u = W [RMSNorm(h) ; RMSNorm(e)] (W: (H, 2H)), then one `Block`; `norm` is the
    RMSNorm the shared head reads the output through."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        H = config.hidden_size
        self.norm_h, self.norm_e = nn.RMSNorm(H), nn.RMSNorm(H)
        self.proj = nn.Linear(2 * H, H, bias=False)
        self.block = Block(config)
        self.norm = nn.RMSNorm(H)

    def forward(self, h: Tensor, e: Tensor, rot: tuple[Tensor, Tensor], mask: Tensor | None, causal: bool,
                cache: KVCache | None = None) -> Tensor:
        """h (B, S, H): h^{k-1}; e (B, S, H): embeddings of the tokens k ahead -> h^k (B, S, H), before `norm`."""
        u = self.proj(torch.cat([self.norm_h(h), self.norm_e(e)], dim=-1))  # (B, S, 2H) -> (B, S, H)
        return self.block(u, rot, mask, causal, cache, 0)


class MTP(nn.Module):
    """K `MTPDepth` modules and the weight λ of their mean loss (module docstring)."""

    def __init__(self, config: TransformerConfig, depth: int, weight: float = 0.3) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"MTP: `depth` must be an integer >= 1, got {depth!r}")
        self.config = config
        self.weight = float(weight)
        self.depths = nn.ModuleList(MTPDepth(config) for _ in range(depth))
        self.last_losses: Tensor | None = None  # (K+1,) main, then each depth: mean loss over its targets
        self.last_counts: Tensor | None = None  # (K+1,) the number of targets behind each of those means

    @property
    def num_depths(self) -> int:
        """K."""
        return len(self.depths)

    def rope(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """The rotary table of positions `pos` (B, S) at the blocks' head size."""
        c = self.config
        return rope_table(pos, c.hidden_size // c.num_heads, c.rope_theta)

    def hidden(self, h0: Tensor, x: Tensor, batch: Batch | None = None) -> list[Tensor]:
        """h0 (B, S, H): the backbone's output; x (B, S, H): the token embeddings of the row ->
        [RMSNorm(h^k) for k = 1..K], each (B, S, H): what the head reads at depth k."""
        B, S, _ = x.shape
        pos, mask, causal = attention_layout(B, S, x.device, batch)
        rot = self.rope(pos)
        docs = None if batch is None else batch.document_ids
        h, outs = h0, []
        for k, depth in enumerate(self.depths, start=1):
            h = depth(h, shift_within_documents(x, docs, k), rot, mask, causal)
            outs.append(depth.norm(h))
        return outs

    def loss(self, head: HeadBase, h0: Tensor, x: Tensor, batch: Batch,
             num_items_in_batch: Tensor | int | None = None, reduction: str = "mean") -> Tensor:
        """L (module docstring) for reduction "mean" (divided by n) or "sum" (not divided).

        h0 (B, S, H) the backbone's output, x (B, S, H) the token embeddings. The valid rows of every
        depth (main first) go side by side into one (M, H) call of the fused head, M <= (K+1)·N."""
        hs = [h0] + self.hidden(h0, x, batch)  # K+1 x (B, S, H)
        ys = [batch_depth_labels(batch, k) for k in range(self.num_depths + 1)]  # K+1 x (B, S)
        total, means = depth_loss(head, hs, ys, self.weight, num_items_in_batch, reduction)
        self.last_losses = means
        self.last_counts = torch.stack([(y != IGNORE_INDEX).sum() for y in ys])
        return total


def depth_loss(head: HeadBase, hidden: list[Tensor], labels: list[Tensor], weight: float,
               num_items_in_batch: Tensor | int | None = None, reduction: str = "mean") -> tuple[Tensor, Tensor]:
    """(L, the mean loss of each of the K+1 terms over its own targets, detached (K+1,)) for hidden
    states [h^0, .., h^K] (each (..., H)) and their aligned labels [y^0, .., y^K] (each (...)):

        L = (Σ_t ℓ^0_t + weight/K · Σ_k Σ_t ℓ^k_t) / n     n = num_items_in_batch, else the count of y^0's targets

    ("sum": not divided). The valid rows of every term go side by side into one (M, H) call of the
    fused head (reduction "none", so each row's weight enters its gradient): one dW for all K+1. A head
    whose loss needs the same number of tokens on every rank (`equal_tokens_on_every_rank`: the
    vocabulary-parallel head) gets every row of every term instead, (K+1)·N, the ignored ones scoring 0."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"MTP loss: `reduction` must be 'mean' or 'sum', got {reduction!r}")
    K = len(hidden) - 1
    keep = [y != IGNORE_INDEX for y in labels]
    counts = [int(m.sum()) for m in keep]
    dt = hidden[0].dtype
    if getattr(head, "equal_tokens_on_every_rank", False):  # a collective: the same rows on every rank
        rows = torch.cat([h.reshape(-1, h.shape[-1]).to(dt) for h in hidden])  # (M, H), M = (K+1)·N
        targets = torch.cat([y.reshape(-1) for y in labels])  # (M,)
        sizes = [y.numel() for y in labels]
    else:
        if sum(counts) == 0:  # no target anywhere: the head's own 0 with zero gradients
            zero = head(hidden[0], labels[0], num_items_in_batch=num_items_in_batch, reduction=reduction)
            return zero, torch.zeros(K + 1, device=zero.device)
        rows = torch.cat([h[m].to(dt) for h, m in zip(hidden, keep)])  # (M, H), M = Σ counts
        targets = torch.cat([y[m] for y, m in zip(labels, keep)])  # (M,)
        sizes = counts
    nll = head(rows, targets, reduction="none")  # (M,): one fused call, never (M, V) logits
    sums = torch.stack([part.sum() for part in nll.split(sizes)])  # (K+1,)
    means = sums.detach() / torch.tensor(counts, device=sums.device).clamp(min=1)
    total = sums[0] + (weight / max(K, 1)) * sums[1:].sum()
    if reduction == "sum":
        return total, means
    n = num_items_in_batch if num_items_in_batch is not None else max(counts[0], 1)
    return total / torch.as_tensor(n, device=total.device).to(total.dtype), means


def check_objective(objective: Objective, depth: int) -> None:
    """Refuse (ValueError naming `--mtp-depth` and the objective) multi-token prediction with an
    objective that never predicts left to right (MLM): its depths would have no target."""
    if depth and not objective.trains_left_to_right:
        raise ValueError(f"--mtp-depth {depth}: multi-token prediction extends left-to-right targets, and --objective "
                         f"{objective.name} (MLM) has none; use clm, fim, prefix_lm, span, ul2 or a mix with one of "
                         "them, or --mtp-depth 0")


def mtp_heads(hidden_size: int, wanted: int) -> int:
    """Attention heads for an MTP block of width H: `wanted` when H splits into that many heads of
    even size, else the largest count below it that does (1 for an even H); ValueError for an odd H."""
    for n in range(max(1, wanted), 0, -1):
        if hidden_size % n == 0 and (hidden_size // n) % 2 == 0:
            return n
    raise ValueError(f"MTP: a hidden size of {hidden_size} splits into no attention heads of even size")


def build_mtp(backbone: nn.Module, hidden_size: int, num_heads: int, depth: int, weight: float,
              recipe: dict[str, object]) -> MTP:
    """The MTP modules for `backbone`: its own `TransformerConfig` (one layer) when it has one (headway's
    transformer), else a block of the recipe (`recipe`: activation, qk_norm, zero_init) at width
    `hidden_size` with `mtp_heads(hidden_size, num_heads)` heads."""
    cfg = getattr(backbone, "config", None)
    if isinstance(cfg, TransformerConfig):
        c = TransformerConfig(**{**cfg.__dict__, "num_layers": 1})
    else:
        c = TransformerConfig(hidden_size=hidden_size, num_layers=1, num_heads=mtp_heads(hidden_size, num_heads),
                              **recipe)  # type: ignore[arg-type]
    return MTP(c, depth, weight)

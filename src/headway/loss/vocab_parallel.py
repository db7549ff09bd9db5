"""Vocabulary-parallel linear cross-entropy over `torch.distributed`: no rank holds the whole head.

Each rank holds a contiguous slice W_r (V_r, H) of the head weight, rows [start_r, start_r + V_r)
(uneven slices allowed), and the same hidden states and labels. Forward, chunk by chunk, computes
the local log-sum-exp, target logit and logit sum; ONE all-gather of those three (3, N) tensors
combines them (lse = logsumexp over ranks). Backward recomputes each chunk's local logits,
forms the local softmax with the global lse, and produces the local dW_r and bias grad without
any communication; dE needs one all-reduce (sum over ranks). Per-token losses equal the
single-process `linear_cross_entropy` on the concatenated weight, for every option.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from headway.constants import IGNORE_INDEX
from headway.loss.chunked import ChunkBuffers, acc_dtype, chunk_logits, default_chunk_size, grads_chunk
from headway.loss.validate import shift_labels


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, w: Tensor, b: Tensor | None, y: Tensor, start: int, V: int, eps: float,
                z_loss: float, softcap: float | None, chunk: int, group, gathered_tokens: bool) -> Tensor:  # noqa: ANN001
        acc = acc_dtype(h.dtype)
        N, Vr = h.shape[0], w.shape[0]
        local = (y >= start) & (y < start + Vr)
        y_loc = torch.where(local, y - start, torch.zeros_like(y))
        stats = torch.empty(3, N, dtype=acc, device=h.device)  # local lse, target logit, sum of logits
        b32 = None if b is None else b.to(acc)
        with torch.autocast(h.device.type, enabled=False), torch.no_grad():
            bufs = ChunkBuffers(min(chunk, N), h, w, False)
            for s in range(0, N, chunk):
                e = min(s + chunk, N)
                z, _ = chunk_logits(h[s:e], w, b32, softcap, bufs, False)
                stats[1, s:e] = torch.where(local[s:e], z.gather(1, y_loc[s:e, None]).squeeze(1), 0.0)
                if eps > 0:
                    stats[2, s:e] = z.sum(dim=1)
                m = z.amax(dim=1)
                stats[0, s:e] = m + z.sub_(m[:, None]).exp_().sum(dim=1).log_()  # local logsumexp, in place
                del z
            del bufs
        world = dist.get_world_size(group)
        parts = [torch.empty_like(stats) for _ in range(world)]
        dist.all_gather(parts, stats, group=group)  # the one collective of the forward
        gathered = torch.stack(parts)  # (world, 3, N)
        lse = torch.logsumexp(gathered[:, 0], dim=0)
        zy = gathered[:, 1].sum(0)
        loss = lse - zy
        if eps > 0:
            loss = (1 - eps) * loss + eps * (lse - gathered[:, 2].sum(0) / V)
        if z_loss > 0:
            loss = loss + z_loss * lse.square()
        ctx.save_for_backward(h, w, b, y_loc, local, lse)
        ctx.cfg = (eps, z_loss, softcap, chunk, group, V, gathered_tokens)
        return loss

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        h, w, b, y_loc, local, lse = ctx.saved_tensors
        eps, z_loss, softcap, chunk, group, V, gathered_tokens = ctx.cfg
        acc = acc_dtype(h.dtype)
        g = g.to(acc)
        if gathered_tokens:  # each rank's loss covers its own tokens: combine the per-token gradients
            g = g.contiguous()
            dist.all_reduce(g, group=group)
        N = h.shape[0]
        dh = torch.empty(h.shape, dtype=acc, device=h.device) if ctx.needs_input_grad[0] else None
        dw = torch.empty(w.shape, dtype=acc, device=w.device) if ctx.needs_input_grad[1] else None
        db = torch.empty(w.shape[0], dtype=acc, device=w.device) if b is not None and ctx.needs_input_grad[2] else None
        b32 = None if b is None else b.to(acc)
        coef = g * (1 + 2 * z_loss * lse) if z_loss > 0 else g  # (N,)
        with torch.autocast(h.device.type, enabled=False), torch.no_grad():
            bufs = ChunkBuffers(min(chunk, max(N, 1)), h, w, softcap is not None)
            for s in range(0, N, chunk):
                e = min(s + chunk, N)
                z, d = chunk_logits(h[s:e], w, b32, softcap, bufs, True)
                p = z.sub_(lse[s:e, None]).exp_().mul_(coef[s:e, None])  # this rank's share of the softmax
                rows = local[s:e].nonzero().squeeze(1)
                p.index_put_((rows, y_loc[s:e][rows]), -(1 - eps) * g[s:e][rows], accumulate=True)
                if eps > 0:
                    p.sub_((eps / V) * g[s:e, None])
                if d is not None:
                    p.mul_(d)
                grads_chunk(p, h[s:e], w, None if dh is None else dh[s:e], dw, db, s == 0,
                            ChunkBuffers.view(bufs.low, e - s))
                del z, p
            del bufs
        if N == 0:
            for t in (dh, dw, db):
                if t is not None:
                    t.zero_()
        if dh is not None:
            dist.all_reduce(dh, group=group)  # dE = sum over ranks of the local contributions
        cast = lambda t, like: None if t is None else t.to(like.dtype)  # noqa: E731
        return cast(dh, h), cast(dw, w), cast(db, w), None, None, None, None, None, None, None, None, None


class _GatherRows(torch.autograd.Function):
    """(N, H) on each rank -> (world * N, H), rank r's rows at [r * N, (r + 1) * N).

    Backward takes this rank's rows of the incoming gradient, which must be the same on every
    rank (it is: the vocab-parallel backward all-reduces dE)."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:  # noqa: ANN001
        ctx.rank, ctx.n, ctx.group = dist.get_rank(group), x.shape[0], group
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        return g[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n], None


def _gather_labels(y: Tensor, group) -> Tensor:  # noqa: ANN001
    parts = [torch.empty_like(y) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, y.contiguous(), group=group)
    return torch.cat(parts)


def vocab_parallel_linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    vocab_start: int | None = None,
    bias: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "mean",
    shift: bool = False,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    num_items_in_batch: Tensor | float | None = None,
    chunk_size: int | None = None,
    group=None,  # noqa: ANN001
    gather_tokens: bool = False,
) -> Tensor:
    """`linear_cross_entropy` with the head weight sharded by vocabulary rows across `group`.

    `weight` is this rank's (V_r, H) slice starting at global row `vocab_start` (default: the
    sum of the slice sizes of lower ranks), or a DTensor sharded on dim 0 (its local shard is used;
    its mesh gives the group).

    gather_tokens=False: `hidden`, `labels` and the options must be the same on every rank; the
    result is too, and equals `linear_cross_entropy(hidden, W, labels)` for the concatenated W.

    gather_tokens=True (data parallel + vocab-parallel head): each rank passes its OWN tokens (the
    same shape on every rank). They are all-gathered, scored against every rank's slice, and each
    rank gets the loss of its own tokens (reduced over them; pass the global target count as
    `num_items_in_batch` for a global mean). Gradients are those of the SUM over ranks of the
    returned losses: each rank's hidden gets its own rows, each slice of W its exact share.
    """
    if hasattr(weight, "to_local") and hasattr(weight, "placements"):  # a DTensor
        if group is None:
            group = weight.device_mesh.get_group()
        weight = weight.to_local()
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("vocab_parallel_linear_cross_entropy: torch.distributed is not initialized")
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"vocab_parallel_linear_cross_entropy: `weight` must be (V_r, {hidden.shape[-1]}), "
                         f"got {tuple(weight.shape)}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"vocab_parallel_linear_cross_entropy: `weight` dtype {weight.dtype} != hidden {hidden.dtype}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"vocab_parallel_linear_cross_entropy: `reduction` must be mean|sum|none, got {reduction!r}")
    sizes = torch.zeros(dist.get_world_size(group), dtype=torch.long, device=weight.device)
    sizes[dist.get_rank(group)] = weight.shape[0]
    dist.all_reduce(sizes, group=group)
    V = int(sizes.sum())
    start = int(sizes[: dist.get_rank(group)].sum()) if vocab_start is None else vocab_start
    lead = tuple(hidden.shape[:-1])
    y = (shift_labels(labels, ignore_index) if shift else labels).reshape(-1).long()
    flat = hidden.reshape(-1, hidden.shape[-1])
    if tuple(labels.shape) != lead:
        raise ValueError(f"vocab_parallel_linear_cross_entropy: `labels` shape {tuple(labels.shape)} must be "
                         f"hidden's leading shape {lead}")
    own = slice(0, y.shape[0])
    if gather_tokens:
        n = torch.tensor([y.shape[0]], device=weight.device)
        ns = [torch.empty_like(n) for _ in range(dist.get_world_size(group))]
        dist.all_gather(ns, n, group=group)
        if len({int(t) for t in ns}) != 1:
            raise ValueError("vocab_parallel_linear_cross_entropy: gather_tokens=True needs the same number of "
                             f"tokens on every rank, got {[int(t) for t in ns]}")
        r = dist.get_rank(group)
        own = slice(r * y.shape[0], (r + 1) * y.shape[0])
        flat, y = _GatherRows.apply(flat, group), _gather_labels(y, group)
    valid = y != ignore_index
    if bool(((y < 0) | (y >= V))[valid].any()):
        raise ValueError(f"vocab_parallel_linear_cross_entropy: `labels` must be in [0, {V}) or {ignore_index}")
    idx = valid.nonzero().squeeze(1)
    h = flat.index_select(0, idx)
    chunk = chunk_size or default_chunk_size(weight.shape[0], softcap is not None)
    per = _VocabParallelCE.apply(h, weight, bias, y[idx], start, V, float(label_smoothing), float(z_loss), softcap,
                                 chunk, group, gather_tokens)
    full = torch.zeros(y.shape[0], dtype=per.dtype, device=per.device).index_put((idx,), per)[own]
    if reduction == "none":
        return full.reshape(lead)
    total = full.sum()
    if reduction == "sum":
        return total
    denom = float(num_items_in_batch) if num_items_in_batch is not None else max(int(valid[own].sum()), 1)
    return total / denom

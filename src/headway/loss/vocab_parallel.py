"""Vocabulary-parallel linear cross-entropy over `torch.distributed`: no rank holds the whole head.

Each rank holds a contiguous slice W_r (V_r, H) of the head weight, rows [start_r, start_r + V_r)
(uneven slices allowed), and the same hidden states and labels. Forward runs the chunk driver of
`core.py` for the local log-sum-exp, target logit and logit sum; ONE all-gather of those (3, N)
statistics combines them (lse = logsumexp over ranks). Backward runs the driver again with the
global lse, producing the local dW_r and bias grad without any communication; dE needs one
all-reduce (sum over ranks). Per-token losses equal the single-process `linear_cross_entropy` on
the concatenated weight, for every option.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from headway.constants import IGNORE_INDEX
from headway.loss.core import (
    ChunkOpts,
    Stats,
    acc_dtype,
    default_chunk_size,
    mean_scale,
    new_grads,
    run_chunks,
    token_losses,
)
from headway.loss.validate import check_args


class _VocabParallelCE(torch.autograd.Function):
    """Per-token losses (N,) and the global lse (N,) against this rank's slice; the chunk driver of
    `core.py` runs once for statistics (forward) and once for gradients (backward)."""

    @staticmethod
    def forward(ctx, h: Tensor, w: Tensor, b: Tensor | None, y: Tensor, start: int, V: int, o: ChunkOpts,  # noqa: ANN001
                group, gathered_tokens: bool) -> tuple[Tensor, Tensor]:  # noqa: ANN001
        ctx.set_materialize_grads(False)
        acc = acc_dtype(h.dtype)
        on_slice = (y >= start) & (y < start + w.shape[0])
        y_loc = torch.where(on_slice, y - start, torch.zeros_like(y))
        with torch.autocast(h.device.type, enabled=False), torch.no_grad():
            st = run_chunks(h, w, None if b is None else b.to(acc), y_loc, o, V, on_slice)
        rows = [st.lse, st.zy] + ([st.zsum] if st.zsum is not None else [])
        parts = [torch.empty(len(rows), h.shape[0], dtype=acc, device=h.device)
                 for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, torch.stack(rows), group=group)  # the one collective of the forward
        gathered = torch.stack(parts)  # (world, 2 or 3, N)
        lse = torch.logsumexp(gathered[:, 0], dim=0)  # the hook: combine the slices' lse
        full = Stats(lse, gathered[:, 1].sum(0), gathered[:, 2].sum(0) if st.zsum is not None else None)
        ctx.save_for_backward(h, w, b, y_loc, on_slice, lse)
        ctx.cfg = (o, group, V, gathered_tokens)
        return token_losses(full, o, V), lse

    @staticmethod
    def backward(ctx, g: Tensor | None, g_lse: Tensor | None):  # type: ignore[override]  # noqa: ANN205
        h, w, b, y_loc, on_slice, lse = ctx.saved_tensors
        o, group, V, gathered_tokens = ctx.cfg
        acc = acc_dtype(h.dtype)
        g = torch.zeros(h.shape[0], dtype=acc, device=h.device) if g is None else g.to(acc)
        gl = None if g_lse is None else g_lse.to(acc)
        if gathered_tokens:  # each rank's loss covers its own tokens: combine the per-token gradients
            g = g.contiguous()
            dist.all_reduce(g, group=group)
            if gl is not None:
                gl = gl.contiguous()
                dist.all_reduce(gl, group=group)
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], b is not None and ctx.needs_input_grad[2])
        grads = new_grads(h, w, b, need, g, gl, lse)
        with torch.autocast(h.device.type, enabled=False), torch.no_grad():
            run_chunks(h, w, None if b is None else b.to(acc), y_loc, o, V, on_slice, grads)
        if grads.dh is not None:
            dist.all_reduce(grads.dh, group=group)  # dE = sum over ranks of the local contributions
        cast = lambda t, like: None if t is None else t.to(like.dtype)  # noqa: E731
        return cast(grads.dh, h), cast(grads.dw, w), cast(grads.db, w), None, None, None, None, None, None


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
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """`linear_cross_entropy` with the head weight sharded by vocabulary rows across `group`.

    `weight` is this rank's (V_r, H) slice starting at global row `vocab_start` (default: the
    sum of the slice sizes of lower ranks), or a DTensor sharded on dim 0 (its local shard is used;
    its mesh gives the group). Arguments are checked by the same code as `linear_cross_entropy`'s,
    the loss is normalized by the same function, and `return_lse` returns the global (differentiable)
    log-sum-exp of this rank's tokens.

    gather_tokens=False: `hidden`, `labels` and the options must be the same on every rank; the
    result is too, and equals `linear_cross_entropy(hidden, W, labels)` for the concatenated W.

    gather_tokens=True (data parallel + vocab-parallel head): each rank passes its OWN tokens (the
    same shape on every rank). They are all-gathered, scored against every rank's slice, and each
    rank gets the loss of its own tokens (reduced over them; pass the global target count as
    `num_items_in_batch` for a global mean). Gradients are those of the SUM over ranks of the
    returned losses: each rank's hidden gets its own rows, each slice of W its exact share.
    """
    fn = "vocab_parallel_linear_cross_entropy"
    if hasattr(weight, "to_local") and hasattr(weight, "placements"):  # a DTensor
        if group is None:
            group = weight.device_mesh.get_group()
        weight = weight.to_local()
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(f"{fn}: torch.distributed is not initialized")
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        got = getattr(weight, "shape", type(weight).__name__)
        raise ValueError(f"{fn}: `weight` must be this rank's 2-D (V_r, H) slice, got {got}")
    if weight.is_meta:
        raise ValueError(f"{fn}: `weight` must be a tensor with data (not on the meta device), got a meta tensor")
    sizes = torch.zeros(dist.get_world_size(group), dtype=torch.long, device=weight.device)
    sizes[dist.get_rank(group)] = weight.shape[0]
    dist.all_reduce(sizes, group=group)
    V = int(sizes.sum())
    start = int(sizes[: dist.get_rank(group)].sum()) if vocab_start is None else vocab_start
    if not 0 <= start <= V - weight.shape[0]:
        raise ValueError(f"{fn}: `vocab_start` must be in [0, {V - weight.shape[0]}], got {start}")
    a = check_args(hidden, weight, labels, bias=bias, ignore_index=ignore_index, reduction=reduction, shift=shift,
                   label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                   num_items_in_batch=num_items_in_batch, chunk_size=chunk_size, impl="chunked", vocab_size=V, fn=fn)
    flat, y = a.hidden, a.labels
    own = slice(0, y.shape[0])
    if gather_tokens:
        n = torch.tensor([y.shape[0]], device=weight.device)
        ns = [torch.empty_like(n) for _ in range(dist.get_world_size(group))]
        dist.all_gather(ns, n, group=group)
        if len({int(t) for t in ns}) != 1:
            raise ValueError(f"{fn}: gather_tokens=True needs the same number of tokens on every rank, got "
                             f"{[int(t) for t in ns]}")
        r = dist.get_rank(group)
        own = slice(r * y.shape[0], (r + 1) * y.shape[0])
        flat, y = _GatherRows.apply(flat, group), _gather_labels(y, group)
    valid = y != ignore_index
    idx = valid.nonzero().squeeze(1)
    o = ChunkOpts(a.label_smoothing, a.z_loss, a.softcap, a.chunk_size or default_chunk_size(
        weight.shape[0], a.softcap is not None, hidden=weight.shape[1], device=weight.device))
    per, lse_v = _VocabParallelCE.apply(flat.index_select(0, idx), weight, bias, y[idx], start, V, o, group,
                                        gather_tokens)
    full = torch.zeros(y.shape[0], dtype=per.dtype, device=per.device).index_put((idx,), per)[own]
    if reduction == "none":
        loss = full.reshape(a.lead_shape)
    elif reduction == "sum":
        loss = full.sum()
    else:
        loss = full.sum() * mean_scale(valid[own].sum(), a.num_items_in_batch, per.dtype)
    if return_lse:
        lse = torch.zeros(y.shape[0], dtype=lse_v.dtype, device=lse_v.device).index_put((idx,), lse_v)[own]
        return loss, lse.reshape(a.lead_shape)
    return loss

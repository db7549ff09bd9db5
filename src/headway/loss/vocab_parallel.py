"""Vocabulary-parallel linear cross-entropy over `torch.distributed`: no rank holds the whole head.

Each rank holds a contiguous slice W_r (V_r, H) of the head weight, rows [start_r, start_r + V_r)
(uneven slices allowed), and the same hidden states and labels. Forward runs the chunk driver of
`core.py` for the local log-sum-exp, target logit and logit sum; ONE all-gather of those (3, N)
statistics combines them (lse = logsumexp over ranks). Backward runs the driver again with the
global lse, producing the local dW_r and bias grad without any communication; dE needs one
all-reduce (sum over ranks). Per-token losses equal the single-process `linear_cross_entropy` on
the concatenated weight, for every option.

Before any other collective, every call runs one agreement step (`rank_agreement.py`): each rank checks its arguments
locally (raising nothing yet) and all-gathers one small int64 row (its error message if any, its
slice size, token count, label range, options, gradient needs). Every rank then reads the same
table and either raises the same `ValueError` or goes on, so all ranks always run the same
sequence of collectives and a bad batch leaves the process group usable.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import Tensor

from headway.constants import IGNORE_INDEX
from headway.loss.amp import cast
from headway.loss.core import (
    ChunkOpts,
    Stats,
    acc_dtype,
    default_chunk_size,
    new_grads,
    run_chunks,
    token_losses,
)
from headway.loss.options import LossOptions, merge_options
from headway.loss.rank_agreement import C as _C
from headway.loss.rank_agreement import agree, comm_device, local_check, verdict
from headway.loss.reduction import reduce_losses


class _VocabParallelCE(torch.autograd.Function):
    """Per-token losses (N,) and the global lse (N,) against this rank's slice; the chunk driver of
    `core.py` runs once for statistics (forward) and once for gradients (backward).

    `amp`: the autocast dtype (None: autocast off); the slice's weight and bias are cast to it here
    as autocast casts them (`headway.loss.amp`), and their gradients, summed over chunks in float32,
    come back in the caller's dtypes; `h` comes already cast. Autocast is off inside."""

    @staticmethod
    def forward(ctx, h: Tensor, w: Tensor, b: Tensor | None, y: Tensor, start: int, V: int, o: ChunkOpts,  # noqa: ANN001
                group, gathered_tokens: bool, any_lse: bool,  # noqa: ANN001
                amp: torch.dtype | None) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        acc = acc_dtype(h.dtype)
        on_slice = (y >= start) & (y < start + w.shape[0])
        y_loc = torch.where(on_slice, y - start, torch.zeros_like(y))
        with torch.autocast(h.device.type, enabled=False), torch.no_grad():
            wc, bc = cast(w, amp, h.device.type), cast(b, amp, h.device.type)
            st = run_chunks(h, wc, None if bc is None else bc.to(acc), y_loc, o, V, on_slice)
        rows = [st.lse, st.zy] + ([st.zsum] if st.zsum is not None else [])
        parts = [torch.empty(len(rows), h.shape[0], dtype=acc, device=h.device)
                 for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, torch.stack(rows), group=group)  # the one collective of the forward
        gathered = torch.stack(parts)  # (world, 2 or 3, N)
        lse = torch.logsumexp(gathered[:, 0], dim=0)  # the hook: combine the slices' lse
        full = Stats(lse, gathered[:, 1].sum(0), gathered[:, 2].sum(0) if st.zsum is not None else None)
        ctx.save_for_backward(h, w, b, y_loc, on_slice, lse)
        ctx.cfg = (o, group, V, gathered_tokens, any_lse, amp)
        return token_losses(full, o, V), lse

    @staticmethod
    def backward(ctx, g: Tensor | None, g_lse: Tensor | None):  # type: ignore[override]  # noqa: ANN205
        h, w, b, y_loc, on_slice, lse = ctx.saved_tensors
        o, group, V, gathered_tokens, any_lse, amp = ctx.cfg
        acc = acc_dtype(h.dtype)
        g = torch.zeros(h.shape[0], dtype=acc, device=h.device) if g is None else g.to(acc)
        gl = None if g_lse is None else g_lse.to(acc)
        if gathered_tokens:  # each rank's loss covers its own tokens: combine the per-token gradients
            if any_lse:  # one all-reduce of (g, gl) on every rank, whether or not its own lse got a gradient
                both = torch.stack([g, torch.zeros_like(g) if gl is None else gl])
                dist.all_reduce(both, group=group)
                g, gl = both[0], both[1]
            else:  # no rank returned its lse, so no rank has an lse gradient
                g = g.contiguous()
                dist.all_reduce(g, group=group)
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], b is not None and ctx.needs_input_grad[2])
        with torch.autocast(h.device.type, enabled=False), torch.no_grad():
            wc, bc = cast(w, amp, h.device.type), cast(b, amp, h.device.type)
            grads = new_grads(h, wc, bc, need, g, gl, lse)
            run_chunks(h, wc, None if bc is None else bc.to(acc), y_loc, o, V, on_slice, grads)
        if grads.dh is not None:  # every rank needs dE or none does (the agreement step checks it)
            dist.all_reduce(grads.dh, group=group)  # dE = sum over ranks of the local contributions
        to = lambda t, like: None if t is None else t.to(like.dtype)  # noqa: E731
        return to(grads.dh, h), to(grads.dw, w), to(grads.db, b), None, None, None, None, None, None, None, None


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
    options: LossOptions | None = None,
    loss_weights: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """`linear_cross_entropy` with the head weight sharded by vocabulary rows across `group`.

    `weight` is this rank's (V_r, H) slice starting at global row `vocab_start` (default: the
    sum of the slice sizes of lower ranks), or a DTensor sharded on dim 0 (its local shard is used;
    its mesh gives the group). Arguments are checked by the same code as `linear_cross_entropy`'s,
    the loss is normalized by the same function, and `return_lse` returns the global (differentiable)
    log-sum-exp of this rank's tokens. Dtypes and autocast follow `linear_cross_entropy`'s rules
    (under autocast the products run in the autocast dtype and each gradient keeps its tensor's dtype).

    gather_tokens=False: `hidden`, `labels` and the options must be the same on every rank; the
    result is too, and equals `linear_cross_entropy(hidden, W, labels)` for the concatenated W.

    gather_tokens=True (data parallel + vocab-parallel head): each rank passes its OWN tokens (the
    same shape on every rank). They are all-gathered, scored against every rank's slice, and each
    rank gets the loss of its own tokens (reduced over them; pass the global target count as
    `num_items_in_batch` for a global mean). Gradients are those of the SUM over ranks of the
    returned losses: each rank's hidden gets its own rows, each slice of W its exact share.

    Errors: every rank must call this function. If any rank's input is bad (anything
    `linear_cross_entropy` refuses, a label outside [0, V), slices that do not tile [0, V)) or a value
    that must agree differs across ranks (H, dtype, token count, bias given or not, `ignore_index`,
    `shift`, `label_smoothing`, `z_loss`, `softcap`, whether gradients are needed; with
    gather_tokens=False also `labels`, `reduction` and `num_items_in_batch`), EVERY rank raises the
    same `ValueError`, naming the argument, the expected and actual values and the ranks (of `group`)
    concerned, without waiting on a collective; the group stays usable for the next call. Slice sizes,
    `vocab_start` and `chunk_size` may differ across ranks, and so may `reduction`, `num_items_in_batch`
    and `return_lse` with gather_tokens=True. The check costs one all-gather of a few hundred bytes
    per rank.

    `options`: a `LossOptions`, as in `linear_cross_entropy` (a keyword set to another value than the
    option's raises ValueError naming both). This loss runs the chunk driver only: its `impl` must be
    "auto" or "chunked" (the others are refused, through the agreement step, on every rank).

    `loss_weights`: per-token weights of this rank's labels' shape, as in `linear_cross_entropy`
    (finite everywhere); they multiply this rank's own token losses before the reduction.
    """
    fn = "vocab_parallel_linear_cross_entropy"
    if hasattr(weight, "to_local") and hasattr(weight, "placements"):  # a DTensor
        if group is None:
            group = weight.device_mesh.get_group()
        weight = weight.to_local()
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(f"{fn}: torch.distributed is not initialized")
    opts: dict[str, object] = dict(ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
                                   softcap=softcap, chunk_size=chunk_size)
    impl, conflict = "auto", ""
    try:  # a keyword that disagrees with `options` is reported by every rank, as any bad argument is
        opts = merge_options(fn, options, **opts)
        impl = "auto" if options is None else options.impl
    except ValueError as e:
        conflict = str(e)
    ignore_index = opts["ignore_index"]  # type: ignore[assignment]
    kw: dict[str, object] = dict(bias=bias, reduction=reduction, shift=shift, num_items_in_batch=num_items_in_batch,
                                 **opts)
    if loss_weights is not None:
        kw["loss_weights"] = loss_weights
    error, a, y, cols = local_check(fn, hidden, weight, labels, vocab_start, gather_tokens, return_lse, kw, impl)
    error = conflict or error
    table, msgs = agree(group, comm_device(group), cols, y, cols.get("ignore_index", 0), error)
    error = verdict(fn, table, msgs)  # the same on every rank
    if error:
        raise ValueError(error)
    assert a is not None and y is not None
    rank = dist.get_rank(group)
    sizes = [row[_C["rows"]] for row in table]
    V = sum(sizes)
    start = sum(sizes[:rank]) if vocab_start is None else vocab_start
    # under autocast: hidden cast here (before any gather), weight and bias inside the Function
    flat = cast(a.hidden, a.amp, a.hidden.device.type)
    own = slice(0, y.shape[0])
    if gather_tokens:
        own = slice(rank * y.shape[0], (rank + 1) * y.shape[0])
        flat, y = _GatherRows.apply(flat, group), _gather_labels(y, group)
    valid = y != ignore_index
    idx = valid.nonzero().squeeze(1)
    o = ChunkOpts(a.label_smoothing, a.z_loss, a.softcap, a.chunk_size or default_chunk_size(
        weight.shape[0], a.softcap is not None, hidden=weight.shape[1], device=weight.device))
    with torch.autocast(flat.device.type, enabled=False) if a.amp is not None else contextlib.nullcontext():
        per, lse_v = _VocabParallelCE.apply(flat.index_select(0, idx), weight, bias, y[idx], start, V, o, group,
                                            gather_tokens, any(row[_C["lse"]] for row in table), a.amp)
    full = torch.zeros(y.shape[0], dtype=per.dtype, device=per.device).index_put((idx,), per)[own]
    if a.loss_weights is not None:
        full = full * torch.where(valid[own], a.loss_weights.to(full.dtype), 0.0)
    loss = reduce_losses(full, valid[own].sum(), reduction, a.num_items_in_batch, per.dtype, a.lead_shape)
    if return_lse:
        lse = torch.zeros(y.shape[0], dtype=lse_v.dtype, device=lse_v.device).index_put((idx,), lse_v)[own]
        return loss, lse.reshape(a.lead_shape)
    return loss

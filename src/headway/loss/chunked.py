"""Chunked, memory-budgeted linear cross-entropy: never materializes the (N, V) logits.

Tokens are processed in chunks of `chunk_size` rows; each chunk's float32 logits (n, V) live
only while that chunk is processed. For reductions "mean"/"sum" the gradients of hidden, weight
and bias are computed in the same pass as the loss (three matrix products in all: logits, dE, dW,
the floor), already scaled by the reduction, so backward only rescales them in place when the
incoming gradient is not 1. For reduction "none" backward recomputes the logits chunk by chunk
with the per-token incoming gradient.

Per valid token t, with z = softcap(h_t @ W.T + b) in float32, p = softmax(z), lse = logsumexp(z):

    loss_t  = (1 - eps) * (lse - z[y_t]) + eps * (lse - mean(z)) + z_loss * lse**2
    dloss_t/dz = p * (1 + 2 * z_loss * lse) - (1 - eps) * onehot(y_t) - eps / V
    (times 1 - (z / c)**2 through a softcap c)

Ignored tokens are dropped before any matrix product, so they cost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from headway.loss.matmul import mm_nt, use_onednn

DEFAULT_BUDGET_BYTES = 64 * 2**20


@dataclass(frozen=True)
class ChunkOpts:
    label_smoothing: float
    z_loss: float
    softcap: float | None
    chunk_size: int


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation / softmax dtype: float32 for 16-bit and float32 inputs, float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def default_chunk_size(V: int, softcap: bool, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> int:
    """Rows per chunk so the float32 chunk logits (plus the softcap buffer) fit the budget."""
    per_row = 4 * V * (2 if softcap else 1)
    return max(1, budget_bytes // per_row)


class ChunkBuffers:
    """The chunk's logits buffers, allocated once per call and reused by every chunk.

    A fresh 64 MiB tensor per chunk costs a page fault per 4 KiB page on CPU (about 15 ms per
    chunk here, ~7% of the whole loss at V=128256), so the chunks share one float32 buffer
    (rows, V), plus one in the input dtype for 16-bit inputs (their matmul output and the dlogits
    cast back for dE and dW), plus one for the softcap derivative when used.
    """

    def __init__(self, rows: int, h: Tensor, w: Tensor, softcap: bool) -> None:
        acc, V = acc_dtype(h.dtype), w.shape[0]
        # with oneDNN the logits product allocates its own output: that becomes the chunk's buffer
        self.z = None if use_onednn(h) else torch.empty((rows, V), dtype=acc, device=h.device)
        self.low = None if h.dtype == acc else torch.empty((rows, V), dtype=h.dtype, device=h.device)
        self.deriv = torch.empty((rows, V), dtype=acc, device=h.device) if softcap else None

    @staticmethod
    def view(buf: Tensor | None, n: int) -> Tensor | None:
        return None if buf is None else buf[:n]


def chunk_logits(h: Tensor, w: Tensor, b: Tensor | None, softcap: float | None, bufs: ChunkBuffers,
                 want_deriv: bool) -> tuple[Tensor, Tensor | None]:
    """(z, d): the chunk's (n, V) logits softcap(h @ w.T + b) in float32 (float64 for float64
    inputs), in the reused buffer (or oneDNN's own output); d = 1 - tanh^2 when asked (softcap only)."""
    n = h.shape[0]
    low = ChunkBuffers.view(bufs.low, n)
    if bufs.z is None:
        z = mm_nt(h, w)
    elif low is None:
        z = torch.mm(h, w.t(), out=bufs.z[:n])
    else:
        z = bufs.z[:n].copy_(torch.mm(h, w.t(), out=low))
    if b is not None:
        z.add_(b)
    d = None
    if softcap is not None:
        z.div_(softcap).tanh_()
        if want_deriv:
            d = torch.square(z, out=bufs.deriv[:n]).neg_().add_(1.0)
        z.mul_(softcap)
    return z, d


def _chunk(h: Tensor, y: Tensor, w: Tensor, b: Tensor | None, o: ChunkOpts,
           row_scale: Tensor | None, want_grad: bool, bufs: ChunkBuffers) -> tuple[Tensor, Tensor, Tensor | None]:
    """One chunk: (loss (n,), lse (n,), dlogits (n, V) float32 or None).

    dlogits already includes `row_scale` (n,) (or scalar); it overwrites the chunk's logits buffer.
    """
    z, deriv = chunk_logits(h, w, b, o.softcap, bufs, want_grad)  # (n, V)
    zy = z.gather(1, y[:, None]).squeeze(1)  # (n,)
    zmean = z.mean(dim=1) if o.label_smoothing > 0 else None
    m = z.amax(dim=1)  # (n,)
    p = z.sub_(m[:, None]).exp_()  # in place: the logits buffer becomes exp(z - m)
    s = p.sum(dim=1)
    lse = m + torch.log(s)
    eps = o.label_smoothing
    loss = lse - zy
    if eps > 0:
        loss = (1 - eps) * loss + eps * (lse - zmean)
    if o.z_loss > 0:
        loss = loss + o.z_loss * lse.square()
    if not want_grad:
        return loss, lse, None
    coef = 1.0 / s  # softmax normalization, folded with the z-loss factor and the row scale
    if o.z_loss > 0:
        coef = coef * (1.0 + 2.0 * o.z_loss * lse)
    rs = row_scale if row_scale is not None else torch.ones((), dtype=z.dtype, device=h.device)
    rs_rows = rs.expand_as(lse)  # (n,)
    p.mul_((coef * rs_rows)[:, None])
    p.scatter_add_(1, y[:, None], (-(1.0 - eps) * rs_rows)[:, None].to(p.dtype))
    if eps > 0:
        p.sub_((eps / p.shape[1]) * rs_rows[:, None])
    if deriv is not None:
        p.mul_(deriv)
    return loss, lse, p


def grads_chunk(dz: Tensor, h: Tensor, w: Tensor, dh_out: Tensor | None, dw: Tensor | None,
                 db: Tensor | None, first: bool, low: Tensor | None) -> None:
    """Accumulate one chunk's dE (written to dh_out), dW and db from its dlogits dz (n, V) float32.

    The first chunk writes dW and db instead of adding to them, so they need no zero-filling
    (at V=128256, H=1024 that saves a 512 MiB write and read).
    """
    dzc = dz if low is None else low.copy_(dz)  # dlogits in the input dtype for the two products
    if dh_out is not None:
        if use_onednn(dzc):
            dh_out.copy_(mm_nt(dzc, w.t()))
        elif dh_out.dtype == w.dtype:
            torch.mm(dzc, w, out=dh_out)
        else:
            dh_out.copy_(torch.mm(dzc, w))
    if dw is not None:
        if dw.dtype == h.dtype:
            if first:
                torch.mm(dzc.t(), h, out=dw)
            else:
                dw.addmm_(dzc.t(), h)
        elif first:
            dw.copy_(torch.mm(dzc.t(), h))
        else:
            dw.add_(torch.mm(dzc.t(), h))
    if db is not None:
        if first:
            torch.sum(dz, dim=0, out=db)
        else:
            db.add_(dz.sum(dim=0))


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """hidden (N, H), weight (V, H), bias (V,)|None, labels (N,) all valid -> (out, lse (N,)).

    out is the scaled sum of token losses (scalar) when `per_token` is False, else the (N,) losses.
    """

    @staticmethod
    def forward(ctx, h: Tensor, w: Tensor, b: Tensor | None, y: Tensor, o: ChunkOpts,
                scale: Tensor, per_token: bool) -> tuple[Tensor, Tensor]:
        with torch.autocast(h.device.type, enabled=False):  # dtypes are chosen here, not by autocast
            return ChunkedLinearCrossEntropy._forward(ctx, h, w, b, y, o, scale, per_token)

    @staticmethod
    def _forward(ctx, h: Tensor, w: Tensor, b: Tensor | None, y: Tensor, o: ChunkOpts,  # noqa: ANN001
                 scale: Tensor, per_token: bool) -> tuple[Tensor, Tensor]:
        N, V = h.shape[0], w.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = b is not None and ctx.needs_input_grad[2]
        want_grad = (need_h or need_w or need_b) and not per_token
        acc = acc_dtype(h.dtype)
        losses = torch.empty(N, dtype=acc, device=h.device)
        lse = torch.empty(N, dtype=acc, device=h.device)
        b32 = None if b is None else b.to(acc)
        dh = torch.empty_like(h) if want_grad and need_h else None
        dw = torch.empty(w.shape, dtype=acc, device=w.device) if want_grad and need_w else None
        db = torch.empty(V, dtype=acc, device=w.device) if want_grad and need_b else None
        bufs = ChunkBuffers(min(o.chunk_size, N), h, w, o.softcap is not None)
        for s in range(0, N, o.chunk_size):
            e = min(s + o.chunk_size, N)
            l_c, lse_c, dz = _chunk(h[s:e], y[s:e], w, b32, o, scale if want_grad else None, want_grad, bufs)
            losses[s:e] = l_c
            lse[s:e] = lse_c
            if dz is not None:
                grads_chunk(dz, h[s:e], w, None if dh is None else dh[s:e], dw, db, s == 0,
                            ChunkBuffers.view(bufs.low, e - s))
            del dz  # free this chunk's logits before the next chunk allocates its own
        del bufs
        if N == 0:  # no valid token: no chunk wrote the gradients
            for t in (dh, dw, db):
                if t is not None:
                    t.zero_()
        ctx.per_token, ctx.o, ctx.has_b = per_token, o, b is not None
        ctx.mark_non_differentiable(lse)
        if per_token:
            ctx.save_for_backward(h, w, b, y, scale)
            return losses, lse
        if dw is not None and dw.dtype != w.dtype:
            dw = dw.to(w.dtype)
        if db is not None and db.dtype != w.dtype:
            db = db.to(w.dtype)
        ctx.save_for_backward(h, w, b, y, scale, dh, dw, db)
        return losses.sum() * scale, lse

    @staticmethod
    def backward(ctx, g: Tensor, _g_lse: Tensor | None):  # type: ignore[override]
        with torch.autocast(g.device.type, enabled=False):
            return ChunkedLinearCrossEntropy._backward(ctx, g)

    @staticmethod
    def _backward(ctx, g: Tensor):  # noqa: ANN001, ANN205
        h, w, b, y, scale, *pre = ctx.saved_tensors
        if not ctx.per_token and not getattr(ctx, "used", False):
            ctx.used = True  # the precomputed grads may now be owned by .grad; a 2nd backward recomputes
            # grads were computed for an incoming gradient of 1; rescale in place (no copy) otherwise
            if g.device.type != "cpu" or float(g) != 1.0:
                for t in pre:
                    if t is not None:
                        t.mul_(g.to(t.dtype))
            dh, dw, db = pre
            return dh, dw, db if ctx.has_b else None, None, None, None, None
        o: ChunkOpts = ctx.o
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = ctx.has_b and ctx.needs_input_grad[2]
        acc = acc_dtype(h.dtype)
        b32 = None if b is None else b.to(acc)
        dh = torch.empty_like(h) if need_h else None
        dw = torch.empty(w.shape, dtype=acc, device=w.device) if need_w else None
        db = torch.empty(w.shape[0], dtype=acc, device=w.device) if need_b else None
        row_g = g.to(acc) if ctx.per_token else (g.to(acc) * scale).expand(h.shape[0])
        bufs = ChunkBuffers(min(o.chunk_size, h.shape[0]), h, w, o.softcap is not None)
        for s in range(0, h.shape[0], o.chunk_size):
            e = min(s + o.chunk_size, h.shape[0])
            _, _, dz = _chunk(h[s:e], y[s:e], w, b32, o, row_g[s:e], True, bufs)
            grads_chunk(dz, h[s:e], w, None if dh is None else dh[s:e], dw, db, s == 0,
                        ChunkBuffers.view(bufs.low, e - s))
            del dz  # free this chunk's logits before the next chunk allocates its own
        del bufs
        if h.shape[0] == 0:
            for t in (dw, db):
                if t is not None:
                    t.zero_()
        dw = None if dw is None else dw.to(w.dtype)
        db = None if db is None else db.to(w.dtype)
        return dh, dw, db, None, None, None, None

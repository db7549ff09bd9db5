"""Chunked, memory-budgeted linear cross-entropy in one process: an autograd Function over the
chunk driver of `core.py`; it never materializes the (N, V) logits.

For reductions "mean"/"sum", when autograd records the call, the gradients of hidden, weight and
bias are computed in the same pass as the loss (three matrix products in all: logits, dE, dW, the
floor), already scaled by the reduction, so backward only rescales them in place when the
incoming gradient is not 1. Backward recomputes chunk by chunk instead for reduction "none" (a
per-token incoming gradient), when the returned lse is used (its gradient is the softmax), and on
a second backward. Under `torch.no_grad()` no gradient is computed at all.

Per-token loss weights w (N,) enter as the weight of each token's loss in the one gradient formula
of `core.py`: g_t = s·w_t (s: the reduction's factor) for "mean"/"sum", g_t = ĝ_t·w_t for "none"
(ĝ: the incoming per-token gradient); the output is s·Σ w_t·ℓ_t, or w_t·ℓ_t per token.
"""

from __future__ import annotations

import torch
from torch import Tensor

from headway.loss.amp import cast
from headway.loss.core import ChunkOpts, Grads, Stats, acc_dtype, new_grads, run_chunks, scale_precomputed, token_losses


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """hidden (N, H), weight (V, H), bias (V,)|None, labels (N,) all valid -> (out, lse (N,)).

    out is the scaled sum of token losses (scalar) when `per_token` is False, else the (N,) losses;
    lse is differentiable (d lse / d logits = softmax). `grad_now`: compute the gradients in the
    forward pass (the caller decides: autograd is recording and an input requires grad). `amp`:
    the autocast dtype (None: autocast off); weight and bias are cast to it here as autocast would
    cast them (`headway.loss.amp`), and their gradients, summed over chunks in float32, are returned
    in the caller's dtypes (an fp32 weight's gradient is not rounded to `amp` once more). `hidden`
    comes already cast. Everything inside runs with autocast disabled: the dtypes are chosen here.
    `tw` (N,) or None: per-token loss weights (the module docstring); it gets a gradient (the token
    losses times the reduction's factor and the incoming gradient) when it requires one.
    """

    @staticmethod
    def forward(ctx, h: Tensor, w: Tensor, b: Tensor | None, y: Tensor, o: ChunkOpts,  # noqa: ANN001
                scale: Tensor, per_token: bool, grad_now: bool, amp: torch.dtype | None,
                tw: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)  # an unused lse gets no gradient: None, not zeros
        acc = acc_dtype(h.dtype)
        tw_acc = None if tw is None else tw.detach().to(acc)  # (N,)
        with torch.autocast(h.device.type, enabled=False):
            wc, bc = cast(w, amp, h.device.type), cast(b, amp, h.device.type)
            need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], b is not None and ctx.needs_input_grad[2])
            b_acc = None if bc is None else bc.to(acc)
            g0 = scale if tw_acc is None else scale * tw_acc  # the weight of each token's loss: s, or s·w_t
            grads = new_grads(h, wc, bc, need, g0) if grad_now and not per_token and any(need) else None
            st: Stats = run_chunks(h, wc, b_acc, y, o, w.shape[0], None, grads)
            losses = token_losses(st, o, w.shape[0])
        ctx.per_token, ctx.o, ctx.has_b, ctx.amp = per_token, o, b is not None, amp
        ctx.tw_dtype = None if tw is None else tw.dtype
        pre = (None, None, None)
        if grads is not None:  # dW, db were accumulated in float32: hand them out in the caller's dtypes
            pre = (grads.dh, _as(grads.dw, w.dtype), None if b is None else _as(grads.db, b.dtype))
        ctx.precomputed = grads is not None
        # the caller's weight and bias, not their casts: a recomputing backward casts them again; the
        # token losses only when the weights want a gradient (d out / d w_t = s·ℓ_t)
        tw_grad = tw is not None and ctx.needs_input_grad[9]
        ctx.save_for_backward(h, w, b, y, scale, st.lse, tw_acc, losses if tw_grad else None, *pre)
        weighted = losses if tw_acc is None else losses * tw_acc
        if per_token:
            return weighted, st.lse
        return weighted.sum() * scale, st.lse

    @staticmethod
    def backward(ctx, g: Tensor | None, g_lse: Tensor | None):  # type: ignore[override]  # noqa: ANN001, ANN205
        h, w, b, y, scale, lse, tw, losses, *pre = ctx.saved_tensors
        nones = (None, None, None, None, None, None)
        d_tw = None
        if losses is not None and g is not None:  # d out / d w_t: ĝ·s·ℓ_t ("mean"/"sum") or ĝ_t·ℓ_t ("none")
            d_tw = (losses * g.to(losses.dtype) * (1.0 if ctx.per_token else scale)).to(ctx.tw_dtype)
        if ctx.precomputed and g_lse is None and g is not None:
            ctx.precomputed = False  # the grads may now be owned by .grad; a 2nd backward recomputes
            # grads were computed for an incoming gradient of 1; rescale in place (no copy) otherwise
            scale_precomputed(pre, g)
            dh, dw, db = pre
            return dh, dw, db if ctx.has_b else None, *nones, d_tw
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_b and ctx.needs_input_grad[2])
        if not any(need):  # only the weights want a gradient
            return None, None, None, *nones, d_tw
        with torch.autocast(h.device.type, enabled=False):
            wc, bc = cast(w, ctx.amp, h.device.type), cast(b, ctx.amp, h.device.type)
            acc = acc_dtype(h.dtype)
            if g is None:
                row_g = torch.zeros((), dtype=acc, device=h.device)
            else:
                row_g = g.to(acc) if ctx.per_token else g.to(acc) * scale
                if tw is not None:
                    row_g = row_g * tw  # (N,): the weight of each token's loss
            grads: Grads = new_grads(h, wc, bc, need, row_g, None if g_lse is None else g_lse.to(acc))
            b_acc = None if bc is None else bc.to(acc)
            run_chunks(h, wc, b_acc, y, ctx.o, w.shape[0], None, grads)
        return grads.dh, _as(grads.dw, w.dtype), None if b is None else _as(grads.db, b.dtype), *nones, d_tw


def _as(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return t if t is None or t.dtype == dtype else t.to(dtype)

"""Fused knowledge distillation: a student's loss against a frozen teacher's distribution, straight
from both models' hidden states, never the (N, V) logits of either.

For a valid token t (label y_t != ignore_index) with student logits z = s_t @ W_s.T (+ b_s) and
teacher logits ζ = τ_t @ W_t.T (+ b_t) over the same V words, each soft-capped by its own cap
(``c * tanh(z / c)``) when given, temperature T, weight α and mixing β:

    q = softmax(z / T)        (the student at temperature T)
    p = softmax(ζ / T)        (the teacher at temperature T)
    kind "kl":          D_t = KL(p ‖ q) = Σ_v p_v (log p_v - log q_v)                   (Hinton et al., 2015)
    kind "reverse_kl":  D_t = KL(q ‖ p) = Σ_v q_v (log q_v - log p_v)
    kind "jsd":         D_t = β KL(p ‖ m) + (1 - β) KL(q ‖ m),   m = β p + (1 - β) q   (GKD, Agarwal et al., 2024)
    ℓ_t = α T² D_t + (1 - α) CE_t,    CE_t = logsumexp(z) - z[y_t]   (temperature 1)

reduced as every headway loss: "mean" = Σ_t ℓ_t / (number of valid tokens, or `num_items_in_batch`;
0 without a valid token), "sum", or "none" (ℓ per token, 0 where ignored). The T² factor keeps the
distillation gradient's size independent of T (its gradient through z / T carries 1 / T, and the
softened distributions differ by O(1 / T)); it applies to every kind. With β → 0 the generalized
JSD tends to β·KL(p ‖ q), with β → 1 to (1 - β)·KL(q ‖ p): "kl" and "reverse_kl" are those limits
unscaled, so "jsd" takes β in (0, 1).

Gradients, with u = z / T (so ∂/∂z = (1/T) ∂/∂u), go to the student's hidden states, weight and bias:

    ∂KL(p ‖ q)/∂u = q - p
    ∂KL(q ‖ p)/∂u = q ⊙ (log q - log p - KL(q ‖ p))
    ∂JSD_β/∂u     = (1 - β) q ⊙ (log q - log m - KL(q ‖ m))
    ∂ℓ_t/∂z       = α T ∂D_t/∂u + (1 - α)(softmax(z) - onehot(y_t))     (times 1 - tanh² through a softcap)

The teacher gets none: its tensors are read under no_grad (they are detached here; pass a frozen
teacher's final hidden states). The computation is the cross-entropy's chunk driver
(`core.run_chunks`): per chunk of n tokens the student's (n, V) logits, and the teacher's (n, V)
logits with three (n, V) work buffers (`DistillTerm`), exist for that chunk only; the gradients
are accumulated into dE, dW, db chunk by chunk, in the forward pass for "mean"/"sum" (recomputed
in backward for "none"), exactly as `linear_cross_entropy` does.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from headway.constants import DISTILL_KINDS, IGNORE_INDEX
from headway.eager import eager_under_compile
from headway.loss.amp import cast
from headway.loss.core import (
    ChunkBuffers,
    ChunkOpts,
    Grads,
    acc_dtype,
    chunk_logits,
    default_chunk_size,
    new_grads,
    run_chunks,
    scale_precomputed,
    token_losses,
)
from headway.loss.reduction import ValidRows, loss_scale, reduce_losses
from headway.loss.validate import LossArgs, check_args

__all__ = ["distillation_loss", "DistillOpts", "DISTILL_KINDS"]



@dataclass(frozen=True)
class DistillOpts:
    """The distillation's own settings (module docstring): α, T, the divergence, β and the teacher's
    soft-cap (None: none)."""

    alpha: float = 0.5
    temperature: float = 2.0
    kind: str = "kl"
    beta: float = 0.5
    teacher_softcap: float | None = None

    def __post_init__(self) -> None:
        check_distill(self.alpha, self.temperature, self.kind, self.beta, self.teacher_softcap)


def check_distill(alpha: object, temperature: object, kind: object, beta: object, teacher_softcap: object,
                  fn: str = "distillation_loss") -> None:
    """A ValueError naming the argument, what it must be and what it got."""
    def ok(x: object, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> bool:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            return False
        return (x > lo if lo_open else x >= lo) and (x < hi if hi_open else x <= hi)

    if not ok(alpha, 0.0, 1.0):
        raise ValueError(f"{fn}: `alpha` must be a number in [0, 1], got {alpha!r}")
    if not ok(temperature, 0.0, math.inf, lo_open=True, hi_open=True):
        raise ValueError(f"{fn}: `temperature` must be a finite number > 0, got {temperature!r}")
    if kind not in DISTILL_KINDS:
        raise ValueError(f"{fn}: `kind` must be one of {' | '.join(DISTILL_KINDS)}, got {kind!r}")
    if not ok(beta, 0.0, 1.0, lo_open=True, hi_open=True):
        raise ValueError(f"{fn}: `beta` must be a number in (0, 1) (its limits 0 and 1 are kind='kl' and "
                         f"kind='reverse_kl'), got {beta!r}")
    if teacher_softcap is not None and not ok(teacher_softcap, 0.0, math.inf, lo_open=True, hi_open=True):
        raise ValueError(f"{fn}: `teacher_softcap` must be None or a finite number > 0, got {teacher_softcap!r}")


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Σ_v a[:, v] b[:, v] (n,) through a batched product: no (n, V) temporary."""
    return torch.matmul(a[:, None, :], b[:, :, None]).view(-1)


class DistillTerm:
    """The distillation term of `run_chunks` (`core.ChunkTerm`): for each chunk, the teacher's
    logits from its hidden states (no grad), the divergence D_t into `values[s:e]`, and, with token
    weights `g`, the gradient α T g_t ∂D_t/∂u with respect to the student's logits.

    th (N, Ht), tw (V, Ht), tb (V,) or None: the teacher's hidden states, weight and bias (in the
    accumulation dtype's precision or lower); g: () or (N,) token weights, None for values only."""

    def __init__(self, th: Tensor, tw: Tensor, tb: Tensor | None, d: DistillOpts, rows: int, acc: torch.dtype,
                 g: Tensor | None) -> None:
        self.th, self.tw, self.tb, self.d, self.acc, self.g = th, tw, tb, d, acc, g
        N, V = th.shape[0], tw.shape[0]
        self.values = torch.zeros(N, dtype=acc, device=th.device)  # D_t
        rows = max(1, min(rows, N))
        self.tbufs = ChunkBuffers.get(rows, th, tw, False, tag="distill-teacher")  # no softcap derivative
        dev = th.device
        self.a = ChunkBuffers.scratch("distill-a", rows, V, acc, dev)
        self.b = ChunkBuffers.scratch("distill-b", rows, V, acc, dev)
        self.c = ChunkBuffers.scratch("distill-c", rows, V, acc, dev) if d.kind == "jsd" else None

    def __call__(self, s: int, e: int, z: Tensor) -> Tensor | None:
        d, n, T = self.d, e - s, self.d.temperature
        with torch.no_grad():
            zt, _ = chunk_logits(self.th[s:e], self.tw, self.tb, d.teacher_softcap, self.tbufs, False)  # (n, V)
            if zt.dtype != self.acc:
                zt = zt.to(self.acc)
            if T != 1.0:
                zt.div_(T)
            lp = torch._log_softmax(zt, 1, False, out=zt)  # log p, in place
            lq = torch.div(z, T, out=self.a[:n]) if T != 1.0 else self.a[:n].copy_(z)
            lq = torch._log_softmax(lq, 1, False, out=lq)  # log q
            b = self.b[:n]
            if d.kind == "kl":
                torch.exp(lp, out=b)  # p
                self.values[s:e] = _rowdot(b, lp) - _rowdot(b, lq)
                grad = lq.exp_().sub_(b)  # q - p
            elif d.kind == "reverse_kl":
                torch.exp(lq, out=b)  # q
                diff = lq.sub_(lp)  # log q - log p
                kl = _rowdot(b, diff)
                self.values[s:e] = kl
                grad = diff.sub_(kl[:, None]).mul_(b)
            else:
                assert self.c is not None
                beta = d.beta
                lm = torch.add(lp, math.log(beta), out=self.c[:n])
                lq.add_(math.log1p(-beta))
                torch.logaddexp(lm, lq, out=lm)  # log m = log(β p + (1 - β) q)
                lq.sub_(math.log1p(-beta))
                torch.exp(lp, out=b)  # p
                to_teacher = _rowdot(b, lp) - _rowdot(b, lm)  # KL(p ‖ m)
                torch.exp(lq, out=b)  # q
                diff = lq.sub_(lm)  # log q - log m
                to_student = _rowdot(b, diff)  # KL(q ‖ m)
                self.values[s:e] = beta * to_teacher + (1 - beta) * to_student
                grad = diff.sub_(to_student[:, None]).mul_(b).mul_(1 - beta)
            if self.g is None:
                return None
            w = self.g.expand(self.values.shape[0])[s:e] * (d.alpha * T)
            return grad.mul_(w[:, None])


class ChunkedDistillation(torch.autograd.Function):
    """hidden (N, H), weight (V, H), bias (V,)|None, teacher hidden (N, Ht), teacher weight (V, Ht),
    teacher bias (V,)|None, labels (N,) all valid -> the scaled sum of ℓ_t (scalar), or ℓ (N,) when
    `per_token`. Gradients reach hidden, weight and bias only; as `ChunkedLinearCrossEntropy`, they
    are computed in the forward pass when `grad_now` (reductions "mean"/"sum"), else in backward."""

    @staticmethod
    def forward(ctx, h: Tensor, w: Tensor, b: Tensor | None, th: Tensor, tw: Tensor,  # noqa: ANN001
                tb: Tensor | None, y: Tensor, o: ChunkOpts, d: DistillOpts, scale: Tensor, per_token: bool,
                grad_now: bool, amp: torch.dtype | None) -> Tensor:
        with torch.autocast(h.device.type, enabled=False):
            wc, bc = cast(w, amp, h.device.type), cast(b, amp, h.device.type)
            need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], b is not None and ctx.needs_input_grad[2])
            grads = None
            if grad_now and not per_token and any(need):
                grads = new_grads(h, wc, bc, need, scale * (1 - d.alpha))
            losses = _losses(h, wc, bc, th, tw, tb, y, o, d, grads, None if grads is None else scale)
        ctx.o, ctx.d, ctx.per_token, ctx.has_b, ctx.amp = o, d, per_token, b is not None, amp
        pre = (None, None, None)
        if grads is not None:
            pre = (grads.dh, _as(grads.dw, w.dtype), None if b is None else _as(grads.db, b.dtype))
        ctx.precomputed = grads is not None
        ctx.save_for_backward(h, w, b, th, tw, tb, y, scale, *pre)
        return losses if per_token else losses.sum() * scale

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]  # noqa: ANN001, ANN205
        h, w, b, th, tw, tb, y, scale, *pre = ctx.saved_tensors
        nones = (None,) * 10
        if ctx.precomputed:
            ctx.precomputed = False  # the grads may now be owned by .grad; a 2nd backward recomputes
            scale_precomputed(pre, g)
            return pre[0], pre[1], pre[2] if ctx.has_b else None, *nones
        with torch.autocast(h.device.type, enabled=False):
            wc, bc = cast(w, ctx.amp, h.device.type), cast(b, ctx.amp, h.device.type)
            acc = acc_dtype(h.dtype)
            row_g = g.to(acc) if ctx.per_token else g.to(acc) * scale
            need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_b and ctx.needs_input_grad[2])
            grads: Grads = new_grads(h, wc, bc, need, row_g * (1 - ctx.d.alpha))
            _losses(h, wc, bc, th, tw, tb, y, ctx.o, ctx.d, grads, row_g)
        return grads.dh, _as(grads.dw, w.dtype), None if b is None else _as(grads.db, b.dtype), *nones


def _losses(h: Tensor, w: Tensor, b: Tensor | None, th: Tensor, tw: Tensor, tb: Tensor | None, y: Tensor,
            o: ChunkOpts, d: DistillOpts, grads: Grads | None, g: Tensor | None) -> Tensor:
    """ℓ_t (N,) through `run_chunks` with the distillation term; with `grads` (whose token weights
    carry the 1 - α of the cross-entropy) and `g` (the token weights), the gradients too."""
    acc = acc_dtype(h.dtype)
    tb_acc = None if tb is None else tb.to(acc_dtype(th.dtype))
    term = DistillTerm(th, tw, tb_acc, d, o.chunk_size, acc, g)
    st = run_chunks(h, w, None if b is None else b.to(acc), y, o, w.shape[0], None, grads, term)
    ce = token_losses(st, o, w.shape[0])
    return (1 - d.alpha) * ce + (d.alpha * d.temperature**2) * term.values


def _as(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _check_teacher(a: LossArgs, th: Tensor, tw: Tensor, tb: Tensor | None) -> None:
    """The teacher's tensors against the student's: a ValueError naming the argument."""
    fn = "distillation_loss"
    for name, t in (("teacher_hidden", th), ("teacher_weight", tw)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(f"{fn}: `{name}` must be a floating-point torch.Tensor, got "
                             f"{getattr(t, 'dtype', type(t).__name__)}")
    V = a.weight.shape[0]
    if tw.dim() != 2 or tw.shape[0] != V:
        raise ValueError(f"{fn}: `teacher_weight` must be (V, Ht) with the student's V={V} rows (the same "
                         f"vocabulary), got {tuple(tw.shape)}")
    if tuple(th.shape[:-1]) != a.lead_shape or th.shape[-1] != tw.shape[1]:
        raise ValueError(f"{fn}: `teacher_hidden` must be {(*a.lead_shape, tw.shape[1])} (the student's tokens, "
                         f"the teacher weight's hidden size), got {tuple(th.shape)}")
    if th.dtype != tw.dtype and a.amp is None:
        raise ValueError(f"{fn}: `teacher_weight` must have teacher_hidden's dtype {th.dtype}, got {tw.dtype}")
    if tb is not None and (not isinstance(tb, Tensor) or tuple(tb.shape) != (V,)):
        raise ValueError(f"{fn}: `teacher_bias` must be a tensor of shape ({V},), got "
                         f"{getattr(tb, 'shape', type(tb).__name__)}")
    if th.device != a.hidden.device or tw.device != a.hidden.device:
        raise ValueError(f"{fn}: the teacher's tensors must be on the student's device {a.hidden.device}, got "
                         f"{th.device} and {tw.device}")


@eager_under_compile  # a hand-scheduled kernel, as the chunked cross-entropy
def distillation_loss(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    labels: Tensor,
    *,
    alpha: float = 0.5,
    temperature: float = 2.0,
    kind: str = "kl",
    beta: float = 0.5,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    softcap: float | None = None,
    teacher_softcap: float | None = None,
    reduction: str = "mean",
    num_items_in_batch: Tensor | float | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """α·T²·D(teacher_T, student_T) + (1 - α)·CE(student, labels) per valid token, reduced, from the
    student's and the teacher's hidden states without the (N, V) logits of either (module docstring:
    the math, the three divergences and their gradients).

    Args:
        student_hidden: (..., H) float; student_weight: (V, H), its dtype (student_bias (V,) too).
        teacher_hidden: (..., Ht) float, the same leading shape (the teacher's final hidden states
            for the same tokens); teacher_weight: (V, Ht), its dtype, the same V (the same
            vocabulary); teacher_bias: (V,) or None. The teacher's tensors get no gradient (they are
            detached: the teacher is frozen).
        labels: (...) integer, aligned (``labels[t]`` is the target of position t). A token whose
            label is `ignore_index` adds nothing, to either term, and is not counted by the mean.
        alpha: α in [0, 1], the distillation term's share (1: distillation only; 0: cross-entropy).
        temperature: T > 0, both distributions' temperature in the distillation term (the
            cross-entropy stays at temperature 1).
        kind: "kl" (forward KL(teacher ‖ student), the default), "reverse_kl" (KL(student ‖ teacher))
            or "jsd" (the generalized Jensen-Shannon divergence with mixing `beta` in (0, 1)).
        softcap / teacher_softcap: each model's logit soft-cap (``c * tanh(z / c)``), None for none,
            applied before the temperature.
        reduction, num_items_in_batch: as `linear_cross_entropy`'s ("mean" divides by the count of
            valid tokens or by `num_items_in_batch`; "sum"; "none" gives ℓ per token, 0 where ignored).
        chunk_size: tokens per chunk (default: the chunk's five float32 (n, V) buffers within about
            the cross-entropy's budget).

    Dtypes: the products run in the inputs' dtypes; the softmaxes, the divergence and the loss are
    float32 (float64 for float64 student inputs). Under ``torch.autocast`` both models' products run
    in the autocast dtype as `linear_cross_entropy`'s do, and the student weight's gradient comes back
    in its own dtype. A batch without a valid label gives loss 0 and zero gradients.
    """
    d = DistillOpts(alpha, temperature, kind, beta, teacher_softcap)
    a = check_args(student_hidden, student_weight, labels, bias=student_bias, ignore_index=ignore_index,
                   reduction=reduction, shift=False, label_smoothing=0.0, z_loss=0.0, softcap=softcap,
                   num_items_in_batch=num_items_in_batch, chunk_size=chunk_size, impl="chunked",
                   fn="distillation_loss")
    _check_teacher(a, teacher_hidden, teacher_weight, teacher_bias)
    dev = a.hidden.device.type
    with torch.no_grad():
        th = cast(teacher_hidden.detach(), a.amp, dev).reshape(-1, teacher_hidden.shape[-1])  # (N, Ht)
        tw = cast(teacher_weight.detach(), a.amp, dev)  # (V, Ht)
        tb = None if teacher_bias is None else cast(teacher_bias.detach(), a.amp, dev)
    with torch.autocast(dev, enabled=False):
        return _run(dataclasses.replace(a, hidden=cast(a.hidden, a.amp, dev)), th, tw, tb, d)


def _run(a: LossArgs, th: Tensor, tw: Tensor, tb: Tensor | None, d: DistillOpts) -> Tensor:
    """The chunked Function over the valid rows; ℓ scattered back for "none"."""
    rows = ValidRows(a.labels, a.ignore_index)
    n_valid = rows.count
    h, y, th = rows.take(a.hidden), rows.take(a.labels), rows.take(th)  # (n, H), (n,), (n, Ht)
    V = a.weight.shape[0]
    soft = a.softcap is not None or d.teacher_softcap is not None
    chunk = a.chunk_size or max(1, default_chunk_size(V, soft, hidden=max(a.weight.shape[1], tw.shape[1]),
                                                      device=a.weight.device) // 3)
    o = ChunkOpts(0.0, 0.0, a.softcap, chunk)
    per_token = a.reduction == "none"
    acc = acc_dtype(h.dtype)
    scale = loss_scale(a.reduction, n_valid, a.num_items_in_batch, acc)
    grad_now = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (h, a.weight, a.bias))
    out = ChunkedDistillation.apply(h, a.weight, a.bias, th, tw, tb, y, o, d, scale, per_token, grad_now, a.amp)
    if per_token:
        return reduce_losses(rows.put(out), n_valid, "none", None, acc, a.lead_shape)
    return out

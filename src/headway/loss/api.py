"""`linear_cross_entropy` and `token_logprobs`: the public loss API (contract in docs/concepts.md and docs/loss.md)."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from headway.constants import IGNORE_INDEX
from headway.eager import eager_under_compile
from headway.loss import backends
from headway.loss.amp import cast
from headway.loss.chunked import ChunkedLinearCrossEntropy
from headway.loss.core import ChunkOpts, acc_dtype, default_chunk_size
from headway.loss.options import LossOptions, merge_options
from headway.loss.reduction import ValidRows, loss_scale, reduce_losses
from headway.loss.reference import reference_token_losses
from headway.loss.validate import LossArgs, check_args


def _reduce(losses: Tensor, a: LossArgs) -> Tensor:
    """Per-token losses (N,) (or their sum) reduced as `a` asks: `reduction.reduce_losses`; per-token
    weights (`a.loss_weights`) multiply each token's loss first (0 where ignored stays 0)."""
    if a.loss_weights is not None:  # (N,); an ignored position's weight is never read
        losses = losses * torch.where(a.labels != a.ignore_index, a.loss_weights.to(losses.dtype), 0.0)
    return reduce_losses(losses, (a.labels != a.ignore_index).sum(), a.reduction, a.num_items_in_batch,
                         acc_dtype(a.hidden.dtype), a.lead_shape)


@eager_under_compile  # a hand-scheduled kernel with buffers kept across calls: torch.compile runs it as is
def _chunked(a: LossArgs) -> tuple[Tensor, Tensor]:
    """Loss (reduced) and lse (N,) through the chunked autograd Function, ignored rows dropped."""
    rows = ValidRows(a.labels, a.ignore_index)
    n_valid = rows.count
    h, y = rows.take(a.hidden), rows.take(a.labels)
    tw = None if a.loss_weights is None else rows.take(a.loss_weights)
    chunk = a.chunk_size or default_chunk_size(a.weight.shape[0], a.softcap is not None, hidden=a.weight.shape[1],
                                               device=a.weight.device, dtype=h.dtype)
    o = ChunkOpts(a.label_smoothing, a.z_loss, a.softcap, chunk)
    per_token = a.reduction == "none"
    # the reduction's factor goes into the Function: the gradients it computes in the forward carry it
    scale = loss_scale(a.reduction, n_valid, a.num_items_in_batch, acc_dtype(h.dtype))
    # gradients only when autograd records this call (never under no_grad / inference_mode)
    grad_now = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (h, a.weight, a.bias))
    # under autocast weight and bias are cast inside the Function: their float32 sums over chunks reach
    # them without another rounding to the autocast dtype
    out, lse = ChunkedLinearCrossEntropy.apply(h, a.weight, a.bias, y, o, scale, per_token, grad_now, a.amp, tw)
    lse = rows.put(lse)
    if per_token:
        out = rows.put(out).reshape(a.lead_shape)
    return out, lse


def _cast_all(a: LossArgs) -> LossArgs:
    """`a` with weight and bias cast as autocast casts them for `F.linear` (hidden already is)."""
    dev = a.hidden.device.type
    return dataclasses.replace(a, weight=cast(a.weight, a.amp, dev), bias=cast(a.bias, a.amp, dev))


def _dispatch(a: LossArgs) -> tuple[Tensor, Tensor | None]:
    """Loss (reduced) and lse (N,) (None from cce/liger), with autocast's casts applied (`amp.py`)."""
    if a.amp is None:
        return _run(a)
    # the products run in the autocast dtype once the inputs are cast; autocast must not cast again
    with torch.autocast(a.hidden.device.type, enabled=False):
        return _run(dataclasses.replace(a, hidden=cast(a.hidden, a.amp, a.hidden.device.type)))


def _run(a: LossArgs) -> tuple[Tensor, Tensor | None]:
    if a.impl == "reference":
        per_token, lse = reference_token_losses(_cast_all(a))
        return _reduce(per_token, a), lse
    use_cce = a.impl == "cce" or (a.impl == "auto" and backends.available("cce") and backends.cce_supports(a))
    if use_cce:
        if not backends.cce_supports(a):
            raise ValueError("linear_cross_entropy: impl='cce' needs CUDA bf16/fp16 inputs, no bias, "
                             "label_smoothing=0 and z_loss=0")
        return _reduce(backends.cce_token_losses(_cast_all(a)), a), None
    use_liger = a.impl == "liger" or (a.impl == "auto" and backends.available("liger") and backends.liger_supports(a))
    if use_liger:
        if not backends.liger_supports(a):
            raise ValueError("linear_cross_entropy: impl='liger' needs CUDA inputs, reduction 'mean' or 'sum' and no "
                             "loss_weights (it returns the summed loss only)")
        return _reduce(backends.liger_sum(_cast_all(a)), a), None  # the summed loss, reduced
    return _chunked(a)


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "mean",
    shift: bool = False,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    num_items_in_batch: Tensor | float | None = None,
    chunk_size: int | None = None,
    impl: str = "auto",
    return_lse: bool = False,
    options: LossOptions | None = None,
    loss_weights: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Cross-entropy of `hidden @ weight.T + bias` against `labels`, without the (N, V) logits.

    Equals ``F.cross_entropy((hidden @ weight.T + bias).float().flatten(0, -2), labels.flatten(),
    ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)`` when
    z_loss=0 and softcap=None; with them each valid token's loss gains ``z_loss * lse**2`` and the
    logits become ``softcap * tanh(logits / softcap)`` before the softmax.

    Args:
        hidden: (..., H) float. weight: (V, H), the same dtype as hidden (bias too), except under
            autocast (below). labels: (...) integer, aligned (``labels[t]`` is the target of
            position t) unless ``shift=True`` (HF-style: position t predicts ``labels[t+1]``).
        reduction: "mean" (sum over valid tokens / their count, or / ``num_items_in_batch``),
            "sum", or "none" (per-token loss of shape (...), 0 where ignored).
        loss_weights: optional (...) floating-point per-token weights w of the labels' shape (0 where
            ignored by convention; ignored positions are never read). Each valid token's loss ℓ_t
            becomes w_t·ℓ_t: "sum" = Σ w_t·ℓ_t, "mean" = Σ w_t·ℓ_t / (the count of valid tokens, or
            ``num_items_in_batch``), "none" = w_t·ℓ_t per token. The gradients of hidden, weight and
            bias carry the weights (and w gets dloss/dw_t = ℓ_t times the reduction's factor when it
            requires grad). Shifted with the labels when ``shift=True``. Weights are data, not an
            option: `LossOptions` has none. Masked diffusion (`headway.objectives.MaskedDiffusion`)
            weights its masked tokens by 1/t. Not available with impl="liger".
        chunk_size: tokens per chunk; default keeps the chunk's float32 logits within 64 MiB (on CPU
            with a small hidden size, within cache: see `core.default_chunk_size`).
        impl: "auto" (chunked; on CUDA Cut-Cross-Entropy or Liger when installed and the options
            allow), "chunked", "reference" (materializing oracle), "cce", "liger".
        return_lse: also return the float32 log-sum-exp of shape (...) (0 where ignored on
            every path; not available from the cce/liger backends). It is differentiable, so
            ``loss + c * (lse**2).mean()`` trains with the z-loss gradient.
        options: a `LossOptions` holding ignore_index, label_smoothing, z_loss, softcap, chunk_size
            and impl in one object (what a head carries); the call then runs with its values. A
            keyword left at its default defers to it; one set to another value than the option's
            raises ValueError naming both.

    A batch without a valid label gives loss 0 and zero gradients.

    Dtypes: the logits are the product rounded to the inputs' dtype (as ``F.linear`` returns it);
    the softmax statistics, the loss and the lse are float32 (float64 for float64 inputs).
    Inside ``torch.autocast`` enabled for hidden's device type, the loss follows autocast's rules
    as ``F.linear`` does: hidden, weight and bias are cast to ``torch.get_autocast_dtype(device)``
    when floating point and not float64, the products run in that dtype, and the gradients reach
    the tensors passed in their own dtypes (an fp32 weight gets an fp32 gradient, accumulated in
    float32). So ``linear_cross_entropy(h, w, y)`` under autocast equals
    ``F.cross_entropy(F.linear(h, w).float(), y)`` under the same autocast, to the rounding of the
    product in the autocast dtype. Outside autocast, a dtype mismatch raises ValueError.
    """
    opts = merge_options("linear_cross_entropy", options, ignore_index=ignore_index, label_smoothing=label_smoothing,
                         z_loss=z_loss, softcap=softcap, chunk_size=chunk_size, impl=impl)
    a = check_args(hidden, weight, labels, bias=bias, reduction=reduction, shift=shift,
                   num_items_in_batch=num_items_in_batch, loss_weights=loss_weights, **opts)
    if return_lse and a.impl in ("cce", "liger"):
        raise ValueError(f"linear_cross_entropy: return_lse=True is not available with impl={a.impl!r}")
    if return_lse and a.impl == "auto":
        a.impl = "chunked"
    loss, lse = _dispatch(a)
    if return_lse:
        assert lse is not None
        return loss, lse.reshape(a.lead_shape)
    return loss


def token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    shift: bool = False,
    softcap: float | None = None,
    chunk_size: int | None = None,
    impl: str = "auto",
    options: LossOptions | None = None,
) -> Tensor:
    """Per-token log-probabilities log p(labels[t] | hidden[t]) of shape (...), 0 where ignored.

    Equals ``log_softmax(z).gather(-1, labels)`` for z = hidden @ weight.T + bias (soft-capped,
    ``softcap * tanh(z / softcap)``, when softcap is given), in float32 (float64 for float64
    inputs); differentiable. Dtype and autocast rules as `linear_cross_entropy`'s.

    options: a `LossOptions` (conflicts with the keywords as in `linear_cross_entropy`); its
    ignore_index, softcap, chunk_size and impl are used. Its label_smoothing and z_loss are terms of
    a training loss, not of a log-probability, and are not applied, so a head's options can score text.
    """
    opts = merge_options("token_logprobs", options, ignore_index=ignore_index, softcap=softcap,
                         chunk_size=chunk_size, impl=impl)
    nll = linear_cross_entropy(hidden, weight, labels, bias=bias, reduction="none", shift=shift, **opts)
    assert isinstance(nll, Tensor)
    return -nll

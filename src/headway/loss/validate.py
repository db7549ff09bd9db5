"""Argument checking and flattening for `linear_cross_entropy`: every bad input gets a clear error."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

from headway.constants import IGNORE_INDEX, LOSS_IMPLS
from headway.loss.amp import autocast_dtype, cast_dtype

REDUCTIONS = ("mean", "sum", "none")
IMPLS = LOSS_IMPLS


@dataclass
class LossArgs:
    """Flattened, checked arguments. hidden (N, H), weight (V, H), labels (N,) aligned.

    `amp`: the autocast dtype when autocast is enabled for hidden's device type (the products then
    run in it; `headway.loss.amp.cast` casts the tensors autocast would cast), else None. The
    tensors here are the caller's, not yet cast."""

    hidden: Tensor
    weight: Tensor
    labels: Tensor
    bias: Tensor | None
    ignore_index: int
    reduction: str
    label_smoothing: float
    z_loss: float
    softcap: float | None
    num_items_in_batch: Tensor | float | None
    chunk_size: int | None
    impl: str
    lead_shape: tuple[int, ...]
    amp: torch.dtype | None = None
    loss_weights: Tensor | None = None  # (N,) float per-token weights, aligned with `labels` (None: all 1)


def _fail(arg: str, expected: str, actual: object) -> ValueError:
    return ValueError(f"linear_cross_entropy: `{arg}` must be {expected}, got {actual}")


def check_options(*, label_smoothing: object, z_loss: object, softcap: object, chunk_size: object, impl: object,
                  ignore_index: object = IGNORE_INDEX, fn: str = "linear_cross_entropy") -> None:
    """The checks of the loss options (`headway.loss.LossOptions`' fields): a ValueError naming the
    option, what it must be and what it got. `fn` names the caller in the message."""
    try:
        if impl not in IMPLS:
            raise _fail("impl", f"one of {IMPLS}", repr(impl))
        if not (_finite(label_smoothing) and 0.0 <= float(label_smoothing) <= 1.0):  # type: ignore[arg-type]
            raise _fail("label_smoothing", "a number in [0, 1]", label_smoothing)
        if not (_finite(z_loss) and float(z_loss) >= 0):  # type: ignore[arg-type]
            raise _fail("z_loss", "a finite number >= 0", z_loss)
        if softcap is not None and not (_finite(softcap) and float(softcap) > 0):  # type: ignore[arg-type]
            raise _fail("softcap", "None (no capping) or a finite number > 0", softcap)
        if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool)
                                       or chunk_size <= 0):
            raise _fail("chunk_size", "None or a positive int", chunk_size)
        if not isinstance(ignore_index, numbers.Integral) or isinstance(ignore_index, bool):
            raise _fail("ignore_index", "an int (the label value that is not a target)", repr(ignore_index))
    except ValueError as e:
        raise ValueError(str(e).replace("linear_cross_entropy:", f"{fn}:", 1)) from None


def shift_labels(labels: Tensor, ignore_index: int) -> Tensor:
    """HF-style unshifted labels (..., S) -> aligned labels: out[..., t] = labels[..., t+1], last ignored."""
    pad = torch.full_like(labels[..., :1], ignore_index)
    return torch.cat([labels[..., 1:], pad], dim=-1)


def check_args(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    bias: Tensor | None,
    ignore_index: int,
    reduction: str,
    shift: bool,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    num_items_in_batch: Tensor | float | None,
    chunk_size: int | None,
    impl: str,
    vocab_size: int | None = None,
    fn: str = "linear_cross_entropy",
    loss_weights: Tensor | None = None,
) -> LossArgs:
    """Validate every argument and return them flattened to (N, H) / (N,).

    `vocab_size`: the whole vocabulary when `weight` is one rank's slice of it (vocab-parallel);
    labels are checked against it. `fn` names the caller in the messages. `loss_weights`: per-token
    weights of the labels' shape (shifted with them when `shift`), flattened to (N,)."""
    try:
        a = _check(hidden, weight, labels, bias, ignore_index, reduction, shift, label_smoothing, z_loss, softcap,
                   num_items_in_batch, chunk_size, impl, vocab_size)
        if loss_weights is not None:
            a.loss_weights = _check_weights(loss_weights, labels, a, shift)
        return a
    except ValueError as e:
        raise ValueError(str(e).replace("linear_cross_entropy:", f"{fn}:", 1)) from None


def _check_weights(w: object, labels: Tensor, a: LossArgs, shift: bool) -> Tensor:
    """Per-token loss weights (...) -> (N,), aligned with `a.labels`: a floating-point tensor of the labels'
    shape on their device, finite where the label is valid (ignored positions are never read)."""
    if not isinstance(w, Tensor):
        raise _fail("loss_weights", "None or a torch.Tensor", type(w).__name__)
    if not w.is_floating_point():
        raise _fail("loss_weights", "a floating-point tensor (one weight per token)", w.dtype)
    if tuple(w.shape) != tuple(labels.shape):
        raise _fail("loss_weights", f"shape {tuple(labels.shape)} (the labels' shape)", tuple(w.shape))
    if w.device != labels.device:
        raise _fail("loss_weights", f"on the labels' device {labels.device}", w.device)
    if shift:  # position t predicts labels[t + 1]: its weight moves with its label (the last position has none)
        w = torch.cat([w[..., 1:], torch.zeros_like(w[..., :1])], dim=-1)
    w = w.reshape(-1)
    if not torch.compiler.is_compiling():
        valid = a.labels != a.ignore_index
        if not bool(torch.isfinite(w[valid]).all()):
            raise _fail("loss_weights", "finite where the label is a target", "a non-finite weight")
    return w


def _finite(x: object) -> bool:
    try:
        return math.isfinite(float(x))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _amp_note(amp: torch.dtype | None, device_type: str) -> str:
    if amp is None:
        return ""
    return f"; under {device_type} autocast to {amp}, floating-point tensors are cast to it, float64 ones are not"


def _dtype_after(t: Tensor, amp: torch.dtype | None, device_type: str) -> str:
    dt = cast_dtype(t, amp, device_type)
    return str(t.dtype) if dt == t.dtype else f"{t.dtype} (cast to {dt})"


def _check(hidden, weight, labels, bias, ignore_index, reduction, shift, label_smoothing, z_loss,  # noqa: ANN001, C901
           softcap, num_items_in_batch, chunk_size, impl, vocab_size) -> LossArgs:  # noqa: ANN001
    for name, t in (("hidden", hidden), ("weight", weight), ("labels", labels)):
        if not isinstance(t, Tensor):
            raise _fail(name, "a torch.Tensor", type(t).__name__)
    if not hidden.is_floating_point():
        raise _fail("hidden", "a floating-point tensor", hidden.dtype)
    for name, t in (("hidden", hidden), ("weight", weight)):
        if t.is_meta:
            raise _fail(name, "a tensor with data (not on the meta device; materialize the model first, e.g. "
                        "after FSDP/ZeRO-3 initialization)", "a meta tensor")
    if weight.dim() != 2:
        raise _fail("weight", "2-D (V, H)", tuple(weight.shape))
    if weight.shape[0] == 0:
        raise _fail("weight", "at least one row (V >= 1)", tuple(weight.shape))
    if hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise _fail("hidden", f"shape (..., {weight.shape[1]}) to match weight (V, H)={tuple(weight.shape)}",
                    tuple(hidden.shape))
    amp = autocast_dtype(hidden.device.type)
    dev = hidden.device.type
    h_dt = cast_dtype(hidden, amp, dev)
    if cast_dtype(weight, amp, dev) != h_dt:
        raise _fail("weight", f"dtype {h_dt} (same as hidden{_amp_note(amp, dev)})", _dtype_after(weight, amp, dev))
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise _fail("labels", "an integer tensor (class indices)", labels.dtype)
    if tuple(labels.shape) != tuple(hidden.shape[:-1]):
        raise _fail("labels", f"shape {tuple(hidden.shape[:-1])} (hidden without its last dim)",
                    tuple(labels.shape))
    V = weight.shape[0] if vocab_size is None else vocab_size
    if bias is not None:
        if not isinstance(bias, Tensor) or tuple(bias.shape) != (weight.shape[0],):
            raise _fail("bias", f"a tensor of shape ({weight.shape[0]},)", getattr(bias, "shape", type(bias).__name__))
        if cast_dtype(bias, amp, dev) != h_dt:
            raise _fail("bias", f"dtype {h_dt} (same as hidden{_amp_note(amp, dev)})", _dtype_after(bias, amp, dev))
    if reduction not in REDUCTIONS:
        raise _fail("reduction", f"one of {REDUCTIONS}", repr(reduction))
    check_options(label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, chunk_size=chunk_size, impl=impl,
                  ignore_index=ignore_index)
    if num_items_in_batch is not None:
        if reduction != "mean":
            raise _fail("num_items_in_batch", 'None unless reduction="mean"', num_items_in_batch)
        if isinstance(num_items_in_batch, Tensor) and num_items_in_batch.numel() != 1:
            raise _fail("num_items_in_batch", "a number or a one-element tensor", tuple(num_items_in_batch.shape))
        if not torch.compiler.is_compiling():
            n = float(num_items_in_batch)
            if not (math.isfinite(n) and n > 0):
                raise _fail("num_items_in_batch", "a finite number > 0", n)
    if shift:
        if labels.dim() < 1:
            raise _fail("labels", "at least 1-D when shift=True", tuple(labels.shape))
        labels = shift_labels(labels, ignore_index)
    lead = tuple(hidden.shape[:-1])
    y = labels.reshape(-1).long()
    if not torch.compiler.is_compiling():
        bad = (y != ignore_index) & ((y < 0) | (y >= V))
        if bool(bad.any()):
            first = y[bad][0].item()
            raise _fail("labels", f"in [0, {V}) or ignore_index={ignore_index}", f"a label {first}")
    return LossArgs(
        hidden=hidden.reshape(-1, hidden.shape[-1]), weight=weight, labels=y, bias=bias,
        ignore_index=ignore_index, reduction=reduction, label_smoothing=float(label_smoothing),
        z_loss=float(z_loss), softcap=None if softcap is None else float(softcap),
        num_items_in_batch=num_items_in_batch, chunk_size=chunk_size, impl=impl, lead_shape=lead, amp=amp,
    )

"""The one reduction of every loss path: "mean", "sum" or "none" over the token losses.

For token losses ℓ_t (0 where the label is ignore_index) and n = the number of valid tokens:

    "none":  ℓ reshaped to the labels' shape (...)
    "sum":   Σ_t ℓ_t
    "mean":  Σ_t ℓ_t · s,   s = 1 / num_items_in_batch when given (the global count over ranks and
             accumulation steps), else 1 / max(n, 1)  (no valid token: 0, never NaN)

`reduce_losses` applies it; `loss_scale` is the factor s alone, for the chunked loss, whose
gradients (computed in the forward pass) carry the same factor. `ValidRows` drops the ignored
tokens before a chunked Function runs and puts its per-token results back in place (0 where ignored).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["reduce_losses", "loss_scale", "mean_scale", "ValidRows"]


def mean_scale(n_valid: Tensor, num_items_in_batch: Tensor | float | None, dtype: torch.dtype) -> Tensor:
    """The one normalization of reduction="mean": 1 / num_items_in_batch, else 1 / max(n_valid, 1)
    (no valid token: loss 0 and zero gradients, never NaN)."""
    if num_items_in_batch is not None:
        return 1.0 / torch.as_tensor(num_items_in_batch, device=n_valid.device).to(dtype)
    return 1.0 / n_valid.clamp(min=1).to(dtype)


def loss_scale(reduction: str, n_valid: Tensor, num_items_in_batch: Tensor | float | None,
               dtype: torch.dtype) -> Tensor:
    """The factor s the summed token losses are multiplied by: `mean_scale` for "mean", 1 for "sum"
    and "none" (a 0-d tensor of `dtype` on n_valid's device)."""
    if reduction == "mean":
        return mean_scale(n_valid, num_items_in_batch, dtype)
    return torch.ones((), dtype=dtype, device=n_valid.device)


def reduce_losses(losses: Tensor, n_valid: Tensor, reduction: str, num_items_in_batch: Tensor | float | None,
                  dtype: torch.dtype, lead_shape: tuple[int, ...]) -> Tensor:
    """Reduce token losses as `reduction` asks (module docstring).

    losses: the per-token losses (N,), 0 where ignored, or their sum (a 0-d tensor) from a backend
    that never returns them one by one (then `reduction` must not be "none"). n_valid: the number of
    valid tokens (0-d integer tensor). dtype: the accumulation dtype of the mean's factor (float32,
    float64 for float64 inputs). lead_shape: the labels' shape, for "none"."""
    if reduction == "none":
        if losses.dim() == 0:
            raise ValueError("reduce_losses: reduction='none' needs the per-token losses, got their sum")
        return losses.reshape(lead_shape)
    total = losses if losses.dim() == 0 else losses.sum()
    if reduction == "sum":
        return total
    return total * mean_scale(n_valid, num_items_in_batch, dtype)


class ValidRows:
    """The rows (tokens) of flat labels (N,) whose label is not `ignore_index`, for a computation that
    runs on those rows alone: `count` is their number (a 0-d integer tensor), `take` keeps them of an
    (N, ...) tensor, `put` returns a (count,) result to its rows of an (N,) tensor, 0 where ignored.
    When every row is valid (`idx` None) both return their argument itself."""

    def __init__(self, labels: Tensor, ignore_index: int) -> None:
        valid = labels != ignore_index
        self.total = labels.shape[0]
        self.count = valid.sum()
        self.idx: Tensor | None = None  # (count,) the valid rows' positions, None when they are all the rows
        if int(self.count) != self.total:
            self.idx = valid.nonzero().squeeze(1)

    def take(self, t: Tensor) -> Tensor:
        """The valid rows of `t` (N, ...): (count, ...)."""
        return t if self.idx is None else t.index_select(0, self.idx)

    def put(self, t: Tensor) -> Tensor:
        """`t` (count,) at its rows of a zero (N,) tensor of its dtype and device."""
        if self.idx is None:
            return t
        return torch.zeros(self.total, dtype=t.dtype, device=t.device).index_copy(0, self.idx, t)

"""The one reduction of every loss path: "mean", "sum" or "none" over the token losses.

For token losses ℓ_t (0 where the label is ignore_index) and n = the number of valid tokens:

    "none":  ℓ reshaped to the labels' shape (...)
    "sum":   Σ_t ℓ_t
    "mean":  Σ_t ℓ_t · s,   s = 1 / num_items_in_batch when given (the global count over ranks and
             accumulation steps), else 1 / max(n, 1)  (no valid token: 0, never NaN)

`reduce_losses` applies it; `loss_scale` is the factor s alone, for the chunked loss, whose
gradients (computed in the forward pass) carry the same factor.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["reduce_losses", "loss_scale", "mean_scale"]


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

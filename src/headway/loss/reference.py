"""The plain, materializing linear cross-entropy: the oracle every fused path is tested against.

It builds the full (N, V) float32 logits tensor, so it is simple and slow and memory-hungry on
purpose. Math, for hidden h (N, H), weight W (V, H), bias b (V,), labels y (N,):

    z = h @ W.T + b                      (N, V), computed in float32
    z = c * tanh(z / c)                  if softcap c
    lse = logsumexp(z)                   (N,)
    nll = lse - z[y]
    loss_t = (1 - eps) * nll + eps * (lse - mean(z)) + z_loss * lse**2     for valid t

With z_loss=0 and softcap=None this equals ``F.cross_entropy((h @ W.T + b).float(), y,
label_smoothing=eps, reduction=...)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from headway.loss.chunked import acc_dtype
from headway.loss.validate import LossArgs


def reference_token_losses(args: LossArgs) -> tuple[Tensor, Tensor]:
    """Per-token loss (N,) and log-sum-exp (N,) from materialized logits, both 0 where ignored."""
    h, w, y = args.hidden, args.weight, args.labels  # (N, H), (V, H), (N,)
    acc = acc_dtype(h.dtype)
    z = (h @ w.t()).to(acc)  # (N, V)
    if args.bias is not None:
        z = z + args.bias.to(acc)
    if args.softcap is not None:
        z = args.softcap * torch.tanh(z / args.softcap)
    lse = torch.logsumexp(z, dim=-1)  # (N,)
    valid = y != args.ignore_index
    safe_y = torch.where(valid, y, torch.zeros_like(y))
    nll = lse - z.gather(1, safe_y[:, None]).squeeze(1)
    loss = nll
    if args.label_smoothing > 0:
        eps = args.label_smoothing
        loss = (1 - eps) * nll + eps * (lse - z.mean(dim=-1))
    if args.z_loss > 0:
        loss = loss + args.z_loss * lse.square()
    zero = torch.zeros((), dtype=loss.dtype, device=loss.device)
    return torch.where(valid, loss, zero), torch.where(valid, lse, zero)

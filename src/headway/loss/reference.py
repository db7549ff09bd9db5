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


def reference_distillation(student_hidden: Tensor, student_weight: Tensor, teacher_hidden: Tensor,
                           teacher_weight: Tensor, labels: Tensor, *, alpha: float = 0.5, temperature: float = 2.0,
                           kind: str = "kl", beta: float = 0.5, student_bias: Tensor | None = None,
                           teacher_bias: Tensor | None = None, ignore_index: int = -100,
                           softcap: float | None = None, teacher_softcap: float | None = None,
                           reduction: str = "mean", num_items_in_batch: Tensor | float | None = None) -> Tensor:
    """The oracle of `headway.loss.distill.distillation_loss`: both models' full (N, V) logits in
    float64, the formulas of that module's docstring written out with plain tensor operations, and
    autograd for the gradients (the teacher's tensors detached).

        q = softmax(z / T), p = softmax(ζ / T), m = β p + (1 - β) q
        D = KL(p ‖ q) | KL(q ‖ p) | β KL(p ‖ m) + (1 - β) KL(q ‖ m)
        ℓ_t = α T² D_t + (1 - α) (logsumexp(z_t) - z_t[y_t])   for valid t, 0 otherwise
    """
    f64 = torch.float64
    lead = tuple(labels.shape)
    y = labels.reshape(-1)
    z = student_hidden.reshape(-1, student_hidden.shape[-1]).to(f64) @ student_weight.to(f64).t()  # (N, V)
    zt = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1]).to(f64) @ teacher_weight.detach().to(f64).t()
    if student_bias is not None:
        z = z + student_bias.to(f64)
    if teacher_bias is not None:
        zt = zt + teacher_bias.detach().to(f64)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    if teacher_softcap is not None:
        zt = teacher_softcap * torch.tanh(zt / teacher_softcap)
    T = temperature
    log_q, log_p = torch.log_softmax(z / T, dim=-1), torch.log_softmax(zt / T, dim=-1)
    q, p = log_q.exp(), log_p.exp()
    if kind == "kl":
        div = (p * (log_p - log_q)).sum(-1)
    elif kind == "reverse_kl":
        div = (q * (log_q - log_p)).sum(-1)
    elif kind == "jsd":
        log_m = torch.log(beta * p + (1 - beta) * q)
        div = beta * (p * (log_p - log_m)).sum(-1) + (1 - beta) * (q * (log_q - log_m)).sum(-1)
    else:
        raise ValueError(f"reference_distillation: unknown kind {kind!r}")
    valid = y != ignore_index
    safe_y = torch.where(valid, y, torch.zeros_like(y))
    ce = torch.logsumexp(z, dim=-1) - z.gather(1, safe_y[:, None]).squeeze(1)
    loss = torch.where(valid, alpha * T**2 * div + (1 - alpha) * ce, torch.zeros((), dtype=f64))
    if reduction == "none":
        return loss.reshape(lead)
    if reduction == "sum":
        return loss.sum()
    denom = float(num_items_in_batch) if num_items_in_batch is not None else max(int(valid.sum()), 1)
    return loss.sum() / denom

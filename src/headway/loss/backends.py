"""Optional CUDA backends: Cut-Cross-Entropy and Liger Kernel, used by impl="auto" when installed.

`available(name)` says whether a backend is installed, `*_supports(args)` whether it handles the
options; `api._dispatch` uses a backend only when both hold (impl="auto"), or raises when it was
asked for by name and cannot serve the call. CCE returns per-token losses, Liger the summed loss.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from headway.loss.validate import LossArgs


def available(name: str) -> bool:
    mod = {"cce": "cut_cross_entropy", "liger": "liger_kernel"}[name]
    return importlib.util.find_spec(mod) is not None


def cce_supports(a: LossArgs) -> bool:
    return (a.hidden.is_cuda and a.hidden.dtype in (torch.bfloat16, torch.float16)
            and a.bias is None and a.label_smoothing == 0 and a.z_loss == 0)


def cce_token_losses(a: LossArgs) -> Tensor:
    """Per-token NLL (N,) from Cut-Cross-Entropy's Triton kernel (0 where ignored)."""
    from cut_cross_entropy import linear_cross_entropy as cce

    return cce(a.hidden, a.weight, a.labels, ignore_index=a.ignore_index, softcap=a.softcap,
               reduction="none").float()


def liger_supports(a: LossArgs) -> bool:
    return a.hidden.is_cuda and a.reduction != "none" and a.loss_weights is None


def liger_sum(a: LossArgs) -> Tensor:
    """Summed token losses from Liger's fused linear cross-entropy."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy as liger

    return liger(a.hidden, a.weight, a.labels, bias=a.bias, ignore_index=a.ignore_index,
                 lse_square_scale=a.z_loss, label_smoothing=a.label_smoothing, reduction="sum",
                 softcap=a.softcap, accum_dtype=torch.float32).float()

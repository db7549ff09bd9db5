"""The loss's matrix products: `a @ b.T` through oneDNN for float32 on CPU, `torch.mm` otherwise.

On CPU, `torch.mm` on float32 calls MKL's sgemm. PyTorch also bundles oneDNN, whose JIT kernels
use AVX-512 on any CPU that has it; on the 2-core AMD EPYC our benchmarks run on, oneDNN's
float32 matmul (`torch.ops.mkldnn._linear_pointwise`, the op PyTorch's own compiler emits for CPU
linear layers) computes the logits (n x H @ H x V) and dE (n x V @ V x H) products 1.7-1.9x faster
than MKL, in the same float32 arithmetic (no reduced-precision modes). dW (V x n @ n x H, accumulated
in place) stays with MKL's addmm, which is as fast there. Set HEADWAY_ONEDNN=0 to use `torch.mm`
everywhere.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

_ENABLED = os.environ.get("HEADWAY_ONEDNN", "1") != "0"
_AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def set_onednn(enabled: bool) -> bool:
    """Turn the oneDNN path on or off (e.g. to benchmark against `torch.mm`); returns the old setting."""
    global _ENABLED
    old, _ENABLED = _ENABLED, enabled
    return old


def use_onednn(a: Tensor) -> bool:
    """Whether products with `a` go through oneDNN: float32 CPU tensors when it is available."""
    if not (_ENABLED and _AVAILABLE) or torch.compiler.is_compiling():  # compiled graphs keep torch.mm
        return False
    return a.dtype == torch.float32 and a.device.type == "cpu"


def mm_nt(a: Tensor, b: Tensor) -> Tensor:
    """a (n, K) @ b (M, K).T -> a new (n, M) tensor; `b` may be any strided view (e.g. w.t())."""
    if use_onednn(a):
        return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    return torch.mm(a, b.t())

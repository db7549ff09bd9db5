"""The loss's matrix products: `a @ b.T` through oneDNN for float32 on CPU, `torch.mm` otherwise.

On CPU, `torch.mm` on float32 calls MKL's sgemm. PyTorch also bundles oneDNN, whose JIT kernels
use AVX-512 on any CPU that has it; on the 2-core AMD EPYC our benchmarks run on, oneDNN's
float32 matmul (`torch.ops.mkldnn._linear_pointwise`, the op PyTorch's own compiler emits for CPU
linear layers) computes the logits (n x H @ H x V) and dE (n x V @ V x H) products 1.7-1.9x faster
than MKL, in the same float32 arithmetic (no reduced-precision modes). dW (V x n @ n x H, accumulated
in place) stays with MKL's addmm, which is as fast there.

The choice is scoped, not global: ``with onednn(False): ...`` uses `torch.mm` inside the block (in
this thread / task only); the default is on where the CPU has AVX-512 and off elsewhere (MKL is
faster there), and the environment variable HEADWAY_ONEDNN=0/1 overrides it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from torch import Tensor

from headway.cpu import has_avx512

_AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


# oneDNN wins where it can use AVX-512; on an AVX2-only AMD EPYC MKL was faster (238 vs 269 ms per default
# training step) and oneDNN's fresh output per product cost 1.9M page faults per 60 steps
_ENABLED: ContextVar[bool] = ContextVar("headway_onednn", default=os.environ.get(
    "HEADWAY_ONEDNN", "1" if has_avx512() else "0") != "0")


@contextlib.contextmanager
def onednn(enabled: bool) -> Iterator[None]:
    """Within the block, float32 CPU loss products go through oneDNN (True) or `torch.mm` (False)."""
    token = _ENABLED.set(bool(enabled))
    try:
        yield
    finally:
        _ENABLED.reset(token)


def use_onednn(a: Tensor) -> bool:
    """Whether products with `a` go through oneDNN: float32 CPU tensors when it is available."""
    if torch.compiler.is_compiling() or not (_AVAILABLE and _ENABLED.get()):  # compiled graphs keep torch.mm
        return False
    return a.dtype == torch.float32 and a.device.type == "cpu"


def mm_nt(a: Tensor, b: Tensor) -> Tensor:
    """a (n, K) @ b (M, K).T -> a new (n, M) tensor; `b` may be any strided view (e.g. w.t())."""
    if use_onednn(a):
        return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    return torch.mm(a, b.t())

"""Model FLOPs utilization: the useful work of a training step against what the machine's matrix
products reach, measured on the spot (not a datasheet number).

    flops per token = 6 · N + 12 · L · H · S          (PaLM, appendix B; nanoGPT's estimate_mfu)

N counts the weights used in matrix products: the backbone's `nn.Linear` weights and the LM head's
V × H (the embedding lookup does no products; a tied head is counted once, as a product; the gated
SSM's state-space parameters build its kernel once per sequence, not per token, and are left out). 12·L·H·S is
attention's QKᵀ and AV, forward and backward, for a row of S tokens (the convention counts the
whole S×S map; causal masks and packed documents do less). The gated SSM's FFT convolutions are
not counted (6·N only), so its MFU is an underestimate. Multi-token prediction's K depths add their
matrices, K head products and K attention layers per token. tests/train/test_flops.py checks the
formula against torch's FLOP counter on a real forward+backward.
"""

from __future__ import annotations

import time

import torch
from torch import nn


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """6·N + 12·L·H·S for a headway `LanguageModel` (see the module docstring)."""
    backbone = model.backbone
    mats = sum(m.weight.numel() for m in backbone.modules() if isinstance(m, nn.Linear))
    vocab, hidden = head_shape(model)
    flops = 6.0 * (mats + vocab * hidden)
    flops += 12.0 * int(getattr(backbone, "attention_layers", 0)) * hidden * seq_len
    mtp = getattr(model, "mtp", None)
    if mtp is not None:  # K depths: their matrices, K more head products, K more attention layers
        K = mtp.num_depths
        flops += 6.0 * (sum(m.weight.numel() for m in mtp.modules() if isinstance(m, nn.Linear)) + K * vocab * hidden)
        flops += 12.0 * K * hidden * seq_len
    return flops


def head_shape(model: nn.Module) -> tuple[int, int]:
    """(V, H) of the LM head's products: its own weight(s) when untied, else the embedding's."""
    head = model.head
    weights = [p for p in head.parameters() if p.dim() == 2]
    if weights:  # untied: its own (V, H) weight(s), possibly split
        return sum(w.shape[0] for w in weights), weights[0].shape[1]
    emb = [p for p in model.embedding.parameters() if p.dim() == 2]  # tied to the embedding
    return sum(w.shape[0] for w in emb), emb[0].shape[1]


def matmul_peak(dtype: torch.dtype, device: torch.device, size: int | None = None, reps: int = 10,
                enough_s: float = 0.01) -> float:
    """FLOP/s of the best of `reps` square matrix products (n³·2 FLOPs) in `dtype` on `device`, with the
    threads training uses: what this machine's products reach right now. n doubles from 128 up to
    `size` (2048 on CPU, 4096 on CUDA) and stops once one product takes `enough_s`, so a dtype the
    CPU only emulates (bf16 or fp16 without AVX512-BF16/AMX: ~1 GFLOP/s) costs a fraction of a second
    instead of ~17 s at 1024³, and native bf16 (a 1024³ product in ~5 ms on 2 cores, too short to
    time steadily) is timed at 2048³."""
    limit = size or (4096 if device.type == "cuda" else 2048)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(a: torch.Tensor, b: torch.Tensor) -> float:
        sync()
        t = time.perf_counter()
        a @ b
        sync()
        return time.perf_counter() - t

    n = min(128, limit)
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        a @ b  # warm up (thread pool, kernels)
        best = timed(a, b)
        if best >= enough_s or n >= limit:
            break
        n = min(2 * n, limit)
    for _ in range(reps - 1):
        best = min(best, timed(a, b))
    return 2.0 * n**3 / best

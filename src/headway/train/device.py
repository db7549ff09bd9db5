"""Where and in which precision a run trains: the device `--device` names, the precision
`--precision auto` resolves to on it, and the autocast context the forward passes run under.

CPU paths are chosen by features, not vendors: bf16 is the automatic choice on a CPU with native
bf16 products (AVX512-BF16 or AMX), and `HEADWAY_FAST_BF16=1/0` forces either reading.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

from headway.cpu import has_fast_bf16


def pick_device(name: str) -> torch.device:
    """The device of `--device`: "auto" is CUDA when available, else the CPU; "cuda" without a
    CUDA device is refused."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def resolve_precision(precision: str, device: torch.device) -> str:
    """`--precision` on `device`: "auto" becomes bf16 on a GPU that supports it and on a CPU with
    fast bf16 products, else fp32; any other value is kept."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if has_fast_bf16() else "fp32"


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype of a resolved precision's products: bf16, fp16, else float32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def autocast_for(precision: str, device: torch.device) -> AbstractContextManager:
    """The autocast context a resolved precision trains under on `device` (disabled for fp32)."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)

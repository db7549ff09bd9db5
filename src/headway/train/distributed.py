"""torch.distributed setup for `headway train` under torchrun: process group, DDP, helpers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 120  # a dead rank fails the job within this, instead of hanging it


def setup(device: torch.device) -> tuple[int, int]:
    """(rank, world). Initializes the default process group when launched by torchrun with
    WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA); otherwise a single process (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get("HEADWAY_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timeout)
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def all_sum(x: float | int, device: torch.device) -> float:
    """Sum of a number over all ranks (the number itself in a single process)."""
    return all_sums([x], device)[0]


def all_sums(xs: Sequence[float | int], device: torch.device) -> list[float]:
    """Element-wise sums of numbers over all ranks, in one collective (the numbers in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [float(x) for x in xs]
    t = torch.tensor([float(x) for x in xs], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [float(v) for v in t.tolist()]


def all_gather_object(obj: object) -> list:
    """Every rank's `obj`, in rank order ([obj] in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    """Every rank meets here before the group is destroyed, so no rank tears down its connections
    while a peer still has work in flight (gloo aborts the process otherwise)."""
    if dist.is_available() and dist.is_initialized():
        import gc

        gc.collect()  # drop finished collectives' work objects (gloo threads hold tensors) while Python is alive
        dist.barrier()
        dist.destroy_process_group()
        gc.collect()

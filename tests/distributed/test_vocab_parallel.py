"""Vocabulary-parallel loss in real gloo process groups equals the single-process loss."""

import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import headway as hw
from headway.loss.vocab_parallel import vocab_parallel_linear_cross_entropy

N, H, V = 29, 11, 1031
OPTS = [dict(), dict(label_smoothing=0.1, z_loss=1e-2, softcap=3.0), dict(reduction="sum"), dict(reduction="none"),
        dict(num_items_in_batch=50), dict(shift=True)]


def _inputs():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(N, H, dtype=torch.float64, generator=g)
    w = torch.randn(V, H, dtype=torch.float64, generator=g) * 0.5
    b = torch.randn(V, dtype=torch.float64, generator=g) * 0.5
    y = torch.randint(0, V, (N,), generator=g)
    y[::6] = hw.IGNORE_INDEX
    return h, w, b, y


def _worker(rank: int, world: int, sizes: list[int], init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    h, w, b, y = _inputs()
    start = sum(sizes[:rank])
    results = []
    for opts in OPTS:
        hh = h.clone().requires_grad_()
        ws = w[start : start + sizes[rank]].clone().requires_grad_()
        bs = b[start : start + sizes[rank]].clone().requires_grad_()
        loss = vocab_parallel_linear_cross_entropy(hh, ws, y, bias=bs, chunk_size=7, **opts)
        gout = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
        (loss * gout).sum().backward()
        results.append((loss.detach(), hh.grad, ws.grad, bs.grad))
    torch.save(results, Path(out) / f"{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("sizes", [[516, 515], [400, 331, 300]])
def test_vocab_parallel_equals_single_process(sizes):
    world = len(sizes)
    with tempfile.TemporaryDirectory() as d:
        init = f"file://{os.path.join(d, 'rendezvous')}"
        mp.spawn(_worker, args=(world, sizes, init, d), nprocs=world, join=True)
        per_rank = [torch.load(Path(d) / f"{r}.pt") for r in range(world)]
    h, w, b, y = _inputs()
    for i, opts in enumerate(OPTS):
        hh, ww, bb = (t.clone().requires_grad_() for t in (h, w, b))
        ref = hw.linear_cross_entropy(hh, ww, y, bias=bb, **opts)
        gout = torch.linspace(0.5, 1.5, ref.numel(), dtype=ref.dtype).reshape(ref.shape)
        (ref * gout).sum().backward()
        for r in range(world):
            loss, gh, gw, gb = per_rank[r][i]
            torch.testing.assert_close(loss, ref.detach(), rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(gh, hh.grad, rtol=1e-9, atol=1e-11)
            s = sum(sizes[:r])
            torch.testing.assert_close(gw, ww.grad[s : s + sizes[r]], rtol=1e-9, atol=1e-11)
            torch.testing.assert_close(gb, bb.grad[s : s + sizes[r]], rtol=1e-9, atol=1e-11)


def test_requires_an_initialized_process_group():
    h, w, _, y = _inputs()
    with pytest.raises(ValueError, match="not initialized"):
        vocab_parallel_linear_cross_entropy(h, w, y)

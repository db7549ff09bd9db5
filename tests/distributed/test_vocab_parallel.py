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
        loss, lse = vocab_parallel_linear_cross_entropy(hh, ws, y, bias=bs, chunk_size=7, return_lse=True, **opts)
        gout = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
        ((loss * gout).sum() + 0.3 * lse.square().sum()).backward()  # the lse is an output: its gradient too
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
        ref, ref_lse = hw.linear_cross_entropy(hh, ww, y, bias=bb, return_lse=True, **opts)
        gout = torch.linspace(0.5, 1.5, ref.numel(), dtype=ref.dtype).reshape(ref.shape)
        ((ref * gout).sum() + 0.3 * ref_lse.square().sum()).backward()
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


def _dp_worker(rank: int, world: int, init: str, out: str) -> None:
    """Data parallel + vocab-parallel head: rank r holds tokens [r*N, (r+1)*N) of a (world*N, H) batch
    and rows of W as a DTensor sharded on the vocabulary (uneven: torch.chunk sizes)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    h, w, b, y = _dp_inputs(world)
    results = []
    for opts in OPTS:
        hh = h[rank * N : (rank + 1) * N].clone().requires_grad_()
        wd = torch.nn.Parameter(distribute_tensor(w, mesh, [Shard(0)]))
        loss = vocab_parallel_linear_cross_entropy(hh, wd, y[rank * N : (rank + 1) * N], chunk_size=5,
                                                   gather_tokens=True, **opts)
        gout = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape) * (rank + 1)
        (loss * gout).sum().backward()
        results.append((loss.detach(), hh.grad, wd.grad.to_local(), wd.to_local().shape[0]))
    torch.save(results, Path(out) / f"{rank}.pt")
    dist.destroy_process_group()


def _dp_inputs(world: int):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(world * N, H, dtype=torch.float64, generator=g)
    w = torch.randn(V, H, dtype=torch.float64, generator=g) * 0.5
    y = torch.randint(0, V, (world * N,), generator=g)
    y[::5] = hw.IGNORE_INDEX
    return h, w, None, y


@pytest.mark.parametrize("world", [2, 3])
def test_gathered_tokens_and_dtensor_weight_equal_the_sum_of_per_rank_losses(world):
    """Each rank's loss is its own tokens' loss against the whole vocabulary, and the gradients are
    those of sum_r g_r * loss_r computed in one process on the unsharded weight."""
    with tempfile.TemporaryDirectory() as d:
        init = f"file://{os.path.join(d, 'rendezvous')}"
        mp.spawn(_dp_worker, args=(world, init, d), nprocs=world, join=True)
        per_rank = [torch.load(Path(d) / f"{r}.pt") for r in range(world)]
    h, w, _, y = _dp_inputs(world)
    for i, opts in enumerate(OPTS):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        total = 0
        for r in range(world):
            ref = hw.linear_cross_entropy(hh[r * N : (r + 1) * N], ww, y[r * N : (r + 1) * N], **opts)
            gout = torch.linspace(0.5, 1.5, ref.numel(), dtype=ref.dtype).reshape(ref.shape) * (r + 1)
            total = total + (ref * gout).sum()
            torch.testing.assert_close(per_rank[r][i][0], ref.detach(), rtol=1e-10, atol=1e-10)
        total.backward()
        start = 0
        for r in range(world):
            _, gh, gw, rows = per_rank[r][i]
            torch.testing.assert_close(gh, hh.grad[r * N : (r + 1) * N], rtol=1e-9, atol=1e-11)
            torch.testing.assert_close(gw, ww.grad[start : start + rows], rtol=1e-9, atol=1e-11)
            start += rows
        assert start == V


@pytest.fixture
def one_rank_group():
    with tempfile.TemporaryDirectory() as d:
        dist.init_process_group("gloo", init_method=f"file://{os.path.join(d, 'rdv')}", rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()


def test_vocab_parallel_rejects_exactly_what_linear_cross_entropy_rejects(one_rank_group):
    """One argument check serves both losses: every bad input of the single-process tests is refused
    by the vocab-parallel loss too, with the same argument named."""
    from tests.loss.test_linear_ce import BAD, make

    for override, match in BAD:
        if override.get("impl") is not None:
            continue  # the vocab-parallel loss has one implementation
        h, w, _, y = make()
        kw = dict(hidden=h, weight=w, labels=y)
        kw.update(override)
        args = (kw.pop("hidden"), kw.pop("weight"), kw.pop("labels"))
        with pytest.raises(ValueError, match=match):
            hw.linear_cross_entropy(*args, **kw)
        with pytest.raises(ValueError, match="vocab_parallel_linear_cross_entropy.*" + match):
            vocab_parallel_linear_cross_entropy(*args, **kw)

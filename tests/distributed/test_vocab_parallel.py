"""Vocabulary-parallel loss in real gloo process groups equals the single-process loss."""

import os
import tempfile
import time
from datetime import timedelta
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


# Bad input on some ranks: every rank raises the same ValueError at once and the group stays usable.

GLOO_TIMEOUT = timedelta(seconds=20)  # a rank left waiting in a collective fails the test here, not after 30 min
FAST_S = 10.0  # every rank must have raised well before that timeout
SIZES = {2: [516, 515], 3: [400, 331, 300]}


def _bad_call(case: str, rank: int, world: int) -> None:
    """A call whose input is bad on some rank(s); every rank makes it."""
    h, w, b, y = _inputs()
    sizes = SIZES[world]
    s = sum(sizes[:rank])
    ws, last, kw = w[s : s + sizes[rank]], rank == world - 1, dict(chunk_size=7)
    if case == "label_one_rank" and last:
        y[3] = V
    elif case == "label_every_rank":
        y[3] = -7
    elif case == "tokens_one_rank":
        kw["gather_tokens"] = True
        h, y = (h[:-1], y[:-1]) if last else (h, y)
    elif case == "hidden_size_one_rank":
        kw["gather_tokens"] = True
        h, ws = (torch.cat([h, h[:, :1]], 1), torch.cat([ws, ws[:, :1]], 1)) if last else (h, ws)
    elif case == "weight_1d_one_rank" and last:
        ws = ws.reshape(-1)
    elif case == "dtype_one_rank" and last:
        h, ws = h.float(), ws.float()
    elif case == "option_one_rank":
        kw["label_smoothing"] = 0.1 if last else 0.0
    elif case == "labels_one_rank" and last:
        y[4] = hw.IGNORE_INDEX
    elif case == "hidden_grad_one_rank":
        h, ws = h.requires_grad_(not last), ws.clone().requires_grad_()
    elif case == "vocab_start_overlap":
        kw["vocab_start"] = 0
    vocab_parallel_linear_cross_entropy(h, ws, y, **kw)


def _valid_calls(rank: int, world: int) -> dict[str, tuple[torch.Tensor, ...]]:
    """Same tokens on every rank (with bias and lse), then per-rank tokens where rank 0 alone uses its lse."""
    sizes = SIZES[world]
    s, n = sum(sizes[:rank]), sizes[rank]
    h, w, b, y = _inputs()
    hh, ws, bs = (t.clone().requires_grad_() for t in (h, w[s : s + n], b[s : s + n]))
    loss, lse = vocab_parallel_linear_cross_entropy(hh, ws, y, bias=bs, chunk_size=7, return_lse=True)
    (loss + 0.3 * lse.square().sum()).backward()
    out = dict(same=(loss.detach(), hh.grad, ws.grad, bs.grad))
    h, w, _, y = _dp_inputs(world)
    hh, ws = h[rank * N : (rank + 1) * N].clone().requires_grad_(), w[s : s + n].clone().requires_grad_()
    got = vocab_parallel_linear_cross_entropy(hh, ws, y[rank * N : (rank + 1) * N], chunk_size=5, gather_tokens=True,
                                              return_lse=rank == 0)
    loss, total = (got[0], got[0] + 0.3 * got[1].square().sum()) if rank == 0 else (got, got * (rank + 1))
    total.backward()
    out["own"] = (loss.detach(), hh.grad, ws.grad)
    return out


def _error_worker(rank: int, world: int, cases: list[str], init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world, timeout=GLOO_TIMEOUT)
    rec: dict[str, object] = {"errors": {}, "valid": None}
    for case in cases:
        t = time.monotonic()
        try:
            _bad_call(case, rank, world)
            err = ("no error", "")
        except Exception as e:
            err = (type(e).__name__, str(e))
        rec["errors"][case] = (*err, time.monotonic() - t)
    try:
        rec["valid"] = _valid_calls(rank, world)
    except Exception as e:
        rec["valid"] = f"{type(e).__name__}: {e}"
    torch.save(rec, Path(out) / f"{rank}.pt")
    dist.destroy_process_group()


def _run_error_cases(world: int, cases: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_error_worker, args=(world, cases, f"file://{os.path.join(d, 'rdv')}", d), nprocs=world, join=True)
        return [torch.load(Path(d) / f"{r}.pt") for r in range(world)]


def _assert_one_error_everywhere(records: list[dict], case: str, parts: list[str]) -> None:
    got = [rec["errors"][case] for rec in records]
    assert [kind for kind, _, _ in got] == ["ValueError"] * len(got), got
    assert len({msg for _, msg, _ in got}) == 1, got  # the same message on every rank
    msg = got[0][1]
    assert msg.startswith("vocab_parallel_linear_cross_entropy: "), msg
    for part in parts:
        assert part in msg, (part, msg)
    assert max(sec for _, _, sec in got) < FAST_S, got


def _assert_valid_calls_match_one_process(records: list[dict], world: int) -> None:
    """The calls after the errors give the single-process losses and gradients."""
    assert all(isinstance(rec["valid"], dict) for rec in records), [rec["valid"] for rec in records]
    tol = dict(rtol=1e-9, atol=1e-11)  # float64
    sizes = SIZES[world]
    h, w, b, y = _inputs()
    hh, ww, bb = (t.clone().requires_grad_() for t in (h, w, b))
    ref, lse = hw.linear_cross_entropy(hh, ww, y, bias=bb, return_lse=True)
    (ref + 0.3 * lse.square().sum()).backward()
    for r, rec in enumerate(records):
        s, n = sum(sizes[:r]), sizes[r]
        for got, want in zip(rec["valid"]["same"], (ref.detach(), hh.grad, ww.grad[s : s + n], bb.grad[s : s + n])):
            torch.testing.assert_close(got, want, **tol)
    h, w, _, y = _dp_inputs(world)
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    refs, total = [], 0
    for r in range(world):
        ref, lse = hw.linear_cross_entropy(hh[r * N : (r + 1) * N], ww, y[r * N : (r + 1) * N], return_lse=True)
        refs.append(ref.detach())
        total = total + (ref + 0.3 * lse.square().sum() if r == 0 else ref * (r + 1))
    total.backward()
    for r, rec in enumerate(records):
        s, n = sum(sizes[:r]), sizes[r]
        want = (refs[r], hh.grad[r * N : (r + 1) * N], ww.grad[s : s + n])
        for got, exp in zip(rec["valid"]["own"], want):
            torch.testing.assert_close(got, exp, **tol)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("case", ["label_one_rank", "label_every_rank", "tokens_one_rank"])
def test_bad_input_raises_the_same_error_on_every_rank_and_the_group_stays_usable(world, case):
    """A bad label on one rank or on all, or (gather_tokens=True) one rank with fewer tokens: every rank
    raises the same ValueError within seconds, naming the argument, the values and the ranks; then the
    same group computes the single-process loss and gradients."""
    records = _run_error_cases(world, [case])
    bad, every = f"rank {world - 1})", "ranks " + ", ".join(map(str, range(world)))
    parts = {"label_one_rank": [f"`labels` must be in [0, {V}) or ignore_index=-100, got a label {V}", bad],
             "label_every_rank": ["`labels` must be in", "got a label -7", every],
             "tokens_one_rank": ["number of tokens", f"expected {N}", f"got {N - 1} on rank {world - 1}"]}[case]
    _assert_one_error_everywhere(records, case, parts)
    _assert_valid_calls_match_one_process(records, world)


@pytest.mark.parametrize("world", [2, 3])
def test_every_input_that_would_split_the_ranks_is_refused_on_every_rank(world):
    """Inputs that would make the ranks run different collectives (a local error on one rank, a hidden
    size, dtype, option, token set or gradient need that differs, overlapping slices) are refused by
    every rank with the same error, one after another on the same group, which then still works."""
    last = f"on rank {world - 1}"
    cases = {
        "hidden_size_one_rank": ["hidden size", f"expected {H}", f"got {H + 1} {last}"],
        "weight_1d_one_rank": ["`weight` must be this rank's 2-D (V_r, H) slice", last],
        "dtype_one_rank": ["dtype", "expected torch.float64", f"got torch.float32 {last}"],
        "option_one_rank": ["`label_smoothing`", "expected 0.0", f"got 0.1 {last}"],
        "labels_one_rank": ["labels other than ignore_index", last],
        "hidden_grad_one_rank": ["`hidden` needs a gradient", "expected True", f"got False {last}"],
        "vocab_start_overlap": ["`vocab_start` must lay the ranks' slices side by side",
                                f"[0, {SIZES[world][1]}) on rank 1"],
    }
    records = _run_error_cases(world, list(cases))
    for case, parts in cases.items():
        _assert_one_error_everywhere(records, case, parts)
    _assert_valid_calls_match_one_process(records, world)

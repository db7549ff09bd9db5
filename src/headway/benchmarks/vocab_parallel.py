"""Per-rank memory of the LM head under data parallelism: replicated vs vocabulary-parallel.

Spawns `world` real gloo processes on this machine. Each rank holds its own N tokens (data
parallel) and either the whole (V, H) head ("replicated": `linear_cross_entropy`, as under DDP) or
its V / world rows ("vocab-parallel": `vocab_parallel_linear_cross_entropy(gather_tokens=True)`).
Each rank runs one forward+backward of the loss and one AdamW step on the head, and reports its
peak RSS above the RSS before its head existed: the head's weight, gradient and two Adam moments
plus the loss's working memory, in MiB. Also checks that both give the same loss.

    python bench/vocab_parallel.py                       # V=128256, H=1024, N=1024 per rank, world 1, 2, 4
    python bench/vocab_parallel.py --vocab 50257 --world 2
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import headway as hw
from headway.benchmarks.linear_ce import rss_now, rss_peak
from headway.loss.vocab_parallel import vocab_parallel_linear_cross_entropy


def _step(h: torch.Tensor, w: torch.nn.Parameter, y: torch.Tensor, mode: str) -> torch.Tensor:
    """One loss forward+backward and AdamW step on the head; returns this rank's loss."""
    n_total = torch.tensor([float(h.shape[0])])
    dist.all_reduce(n_total)
    if mode == "replicated":
        loss = hw.linear_cross_entropy(h, w, y, reduction="sum") / n_total
    else:
        loss = vocab_parallel_linear_cross_entropy(h, w, y, reduction="sum", gather_tokens=True) / n_total
    loss.backward()
    torch.optim.AdamW([w], lr=1e-3).step()
    return loss.detach()


def _rank(rank: int, world: int, V: int, H: int, N: int, mode: str, init: str, out: str) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    g = torch.Generator().manual_seed(rank)
    # warm-up on a small head: library buffers and thread pools are set up before measuring
    _step(torch.randn(64, H, generator=g).requires_grad_(), torch.nn.Parameter(torch.randn(100, H)),
          torch.randint(0, 100, (64,), generator=g), mode)
    h = torch.randn(N, H, generator=g).requires_grad_()
    y = torch.randint(0, V, (N,), generator=g)
    rows = [len(c) for c in torch.arange(V).chunk(world)]
    start = sum(rows[:rank])
    full = torch.randn(V, H, generator=torch.Generator().manual_seed(123)) * H**-0.5  # the same head everywhere
    w = torch.nn.Parameter(full if mode == "replicated" else full[start : start + rows[rank]].clone())
    del full
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # peak RSS := current RSS; the weight is counted below
    base = rss_now() - w.numel() * w.element_size()
    loss = _step(h, w, y, mode)
    peak = (rss_peak() - base) / 2**20
    total = loss.clone()
    dist.all_reduce(total)
    torch.save({"peak": peak, "loss": float(total), "rows": w.shape[0]}, os.path.join(out, f"{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def measure(world: int, V: int, H: int, N: int, mode: str) -> tuple[float, float, int]:
    """(max per-rank peak MiB, global loss, rows per rank on rank 0)."""
    with tempfile.TemporaryDirectory() as d:
        init = f"file://{os.path.join(d, 'rendezvous')}"
        mp.spawn(_rank, args=(world, V, H, N, mode, init, d), nprocs=world, join=True)
        res = [torch.load(os.path.join(d, f"{r}.pt")) for r in range(world)]
    return max(r["peak"] for r in res), res[0]["loss"], res[0]["rows"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench/vocab_parallel.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=128256, help="vocabulary size V (default: Llama-3's 128256)")
    p.add_argument("--hidden", type=int, default=1024, help="hidden size H")
    p.add_argument("--tokens", type=int, default=1024, help="tokens per rank N")
    p.add_argument("--world", type=int, nargs="+", default=[1, 2, 4], help="process counts to measure")
    a = p.parse_args(argv)
    V, H, N = a.vocab, a.hidden, a.tokens
    head_mib = 4 * V * H * 4 / 2**20
    print(f"# LM head per-rank memory, float32 CPU ranks (gloo), V={V} H={H}, {N} tokens per rank; "
          f"the full head's weight+grad+2 Adam moments = {head_mib:.0f} MiB")
    print("| ranks | replicated head: peak MiB per rank | vocab-parallel: peak MiB per rank | rows per rank | "
          "ratio | same loss |")
    print("|---:|---:|---:|---:|---:|---|")
    for world in a.world:
        rep, l_rep, _ = measure(world, V, H, N, "replicated")
        vp, l_vp, rows = measure(world, V, H, N, "vocab_parallel")
        same = abs(l_rep - l_vp) <= 1e-4 * abs(l_rep)
        print(f"| {world} | {rep:.0f} | {vp:.0f} | {rows} | {vp / rep:.2f} | {'yes' if same else 'NO'} "
              f"({l_rep:.5f} vs {l_vp:.5f}) |", flush=True)


if __name__ == "__main__":
    main()

"""Training step of a small transformer at a large vocabulary: fused head vs materializing head.

Each (head, batch) runs in a fresh subprocess that reports its time per step and its peak memory
(RSS above the process after model and optimizer exist, or CUDA max allocated). Then, for a fixed
memory budget, the largest batch (doubling) each head can train within it.

    python bench/train_head.py            # V=128256, H=256, S=256 on CPU
    python bench/train_head.py --quick
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from headway.models import build_model
from headway.types import Batch, Vocab


def _step_fn(model, head: str):  # noqa: ANN001, ANN202
    def fused(b: Batch) -> torch.Tensor:
        return model(b)

    def materialized(b: Batch) -> torch.Tensor:  # what HF heads do: logits, .float(), cross-entropy
        h = model.hidden(b.input_ids, b)
        logits = (h @ model.head.weight.t()).float()
        return F.cross_entropy(logits.flatten(0, 1), b.labels.flatten())

    return fused if head == "fused" else materialized


def child(head: str, batch: int, seq: int, vocab: int, size: str, steps: int, device: str) -> dict:
    torch.manual_seed(0)
    v = Vocab(vocab - 110, num_sentinels=100)
    model = build_model(v, "transformer", size, activation="gelu", qk_norm=False, zero_init=False).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    fn = _step_fn(model, head)

    def make() -> Batch:
        ids = torch.randint(0, v.base_size, (batch, seq), device=device)
        pos = torch.arange(seq, device=device).expand(batch, seq)
        z = torch.zeros(batch, seq, dtype=torch.long, device=device)
        return Batch(ids, torch.roll(ids, -1, 1), pos, z, torch.zeros(batch, 1, dtype=torch.long, device=device))

    def step() -> None:
        loss = fn(make())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)

    step()  # allocate optimizer state and gradients first
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        from headway.benchmarks.linear_ce import rss_now, rss_peak

        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = rss_now()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = rss_peak() - base
    dt = (time.perf_counter() - t) / steps
    return {"seconds_per_step": dt, "tokens_per_second": batch * seq / dt, "peak_mib": peak / 2**20}


def run_child(args: list[str], timeout: float = 1800) -> dict | None:
    r = subprocess.run([sys.executable, "-m", "headway.benchmarks.train_head", "--_child", *args],
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        return None  # out of memory (killed) or failed
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=128256, help="vocabulary size (default: Llama-3's 128256)")
    p.add_argument("--seq", type=int, default=256, help="sequence length")
    p.add_argument("--size", default="256x2", help="model size preset or HxL")
    p.add_argument("--batch", type=int, default=4, help="batch for the side-by-side row")
    p.add_argument("--budget-mib", type=float, default=4096, help="memory budget for the largest-batch search")
    p.add_argument("--max-batch", type=int, default=64, help="stop doubling here")
    p.add_argument("--steps", type=int, default=2, help="timed steps per run")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="V=32000, S=128 and a 1 GiB budget")
    p.add_argument("--_child", nargs=2, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.vocab, a.seq, a.budget_mib, a.max_batch = 32000, 128, 1024, 16
    common = ["--vocab", str(a.vocab), "--seq", str(a.seq), "--size", a.size, "--steps", str(a.steps),
              "--device", a.device]
    if a._child:
        head, batch = a._child[0], int(a._child[1])
        print(json.dumps(child(head, batch, a.seq, a.vocab, a.size, a.steps, a.device)))
        return
    dev = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# training step, transformer {a.size}, V={a.vocab}, S={a.seq}, float32, {dev}")
    print("| head | batch | tokens/s | peak memory above model+optimizer (MiB) |")
    print("|---|---:|---:|---:|")
    rows = {}
    for head in ("fused", "materialized"):
        r = run_child([head, str(a.batch), *common])
        rows[head] = r
        if r:
            print(f"| {head} | {a.batch} | {r['tokens_per_second']:,.0f} | {r['peak_mib']:,.0f} |")
        else:
            print(f"| {head} | {a.batch} | failed | - |")
    print(f"\nlargest batch (doubling up to {a.max_batch}) within {a.budget_mib:,.0f} MiB:")
    print("| head | largest batch | tokens/s there | peak (MiB) |")
    print("|---|---:|---:|---:|")
    for head in ("fused", "materialized"):
        best, b = None, 1
        while b <= a.max_batch:
            r = run_child([head, str(b), *common])
            if r is None or r["peak_mib"] > a.budget_mib:
                break
            best = (b, r)
            b *= 2
        if best:
            print(f"| {head} | {best[0]} | {best[1]['tokens_per_second']:,.0f} | {best[1]['peak_mib']:,.0f} |")
        else:
            print(f"| {head} | none fits | - | - |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

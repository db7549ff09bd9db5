"""Fused distillation loss against the naive full-logit version: time and peak memory of forward + backward.

Both compute α·T²·D(teacher_T ‖ student_T) + (1 - α)·CE on the same inputs: student hidden (N, H),
weight (V, H); teacher hidden (N, Ht), weight (V, Ht). The naive version materializes both models'
(N, V) logits (the student's with autograd) and uses `F.kl_div` / `F.cross_entropy`; headway's
`distillation_loss` holds one chunk of each at a time. Time: median of `--repeats` runs on fresh
random inputs (the methods take turns), float32, CPU. Memory: each method in a fresh subprocess, peak
RSS minus the RSS once the inputs exist, minus the gradients dE and dW every method must hold (the
floor), for the first call (headway then makes the chunk buffers it keeps for later calls) and the
second (what each training step adds). The time floor is
the four matrix products alone (student and teacher logits, dE, dW). Error: |loss - the float64
full-logit reference of the same inputs|.

    python bench/distill.py                                  # N=2048, H=256, Ht=512, V=8192 (under a minute on 2 cores)
    python bench/distill.py --shape 4096,768,1024,50257      # another shape: N,H,Ht,V
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import headway as hw
from headway.benchmarks.linear_ce import rss_now, rss_peak
from headway.loss.reference import reference_distillation

ALPHA, T, BETA = 0.5, 2.0, 0.5
Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@torch.no_grad()
def _floor(h, w, th, tw, y, kind):  # noqa: ANN001, ANN202
    z = h @ w.t()  # (N, V) student logits
    zt = th @ tw.t()  # (N, V) teacher logits
    dh = z @ w  # (N, H) as dE
    dw = zt.t() @ h  # (V, H) as dW
    return dh[0, 0] + dw[0, 0]


def _naive(h, w, th, tw, y, kind):  # noqa: ANN001, ANN202
    z = h @ w.t()  # (N, V), kept for backward
    with torch.no_grad():
        log_p = torch.log_softmax((th @ tw.t()) / T, dim=-1)  # (N, V) the teacher
    log_q = torch.log_softmax(z / T, dim=-1)
    valid = y != hw.IGNORE_INDEX
    if kind == "kl":
        div = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    else:  # jsd
        log_m = torch.logsumexp(torch.stack([log_p + torch.log(torch.tensor(BETA)),
                                             log_q + torch.log(torch.tensor(1 - BETA))]), dim=0)
        div = (BETA * F.kl_div(log_m, log_p, reduction="none", log_target=True).sum(-1)
               + (1 - BETA) * F.kl_div(log_m, log_q, reduction="none", log_target=True).sum(-1))
    ce = F.cross_entropy(z, y, reduction="none")
    return ((ALPHA * T**2 * div + (1 - ALPHA) * ce) * valid).sum() / valid.sum().clamp(min=1)


def _headway(h, w, th, tw, y, kind):  # noqa: ANN001, ANN202
    return hw.distillation_loss(h, w, th, tw, y, alpha=ALPHA, temperature=T, kind=kind, beta=BETA)


METHODS: dict[str, Callable] = {"floor (4 matmuls)": _floor, "naive (full logits)": _naive, "headway": _headway}


def inputs(N: int, H: int, Ht: int, V: int, seed: int) -> Inputs:
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(N, H, generator=g) / H**0.25).requires_grad_()
    w = (torch.randn(V, H, generator=g) / H**0.25).requires_grad_()
    th = torch.randn(N, Ht, generator=g) / Ht**0.25
    tw = torch.randn(V, Ht, generator=g) / Ht**0.25
    y = torch.randint(0, V, (N,), generator=g)
    y[::10] = hw.IGNORE_INDEX
    return h, w, th, tw, y


def run_once(fn: Callable, x: Inputs, kind: str) -> None:
    loss = fn(*x, kind)
    if loss.requires_grad:
        loss.backward()
    x[0].grad = x[1].grad = None


def time_methods(shape: tuple[int, ...], kind: str, repeats: int) -> dict[str, float]:
    """Median seconds per method; the methods take turns on each fresh input (fair under a drifting load)."""
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    for r in range(repeats + 1):  # the first round warms up
        x = inputs(*shape, seed=r)
        for name, fn in METHODS.items():
            t = time.perf_counter()
            run_once(fn, x, kind)
            if r:
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}




def memory_child(name: str, shape: tuple[int, ...], kind: str) -> tuple[float, float]:
    """MiB above the floor (inputs + dE + dW) at the peak of the first forward + backward (which makes
    the buffers headway keeps for later calls) and of the second (a training step's)."""
    fn = METHODS[name]
    x = inputs(*shape, seed=0)
    grads = (x[0].numel() + x[1].numel()) * x[0].element_size()
    out = []
    for _ in range(2):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        base = rss_now()
        run_once(fn, x, kind)
        out.append((rss_peak() - base - (grads if not out else 0)) / 2**20)  # the 2nd run reuses the grads' pages
    return out[0], out[1]


def measure_memory(name: str, shape: tuple[int, ...], kind: str) -> tuple[float, float]:
    cmd = [sys.executable, __file__, "--_memory-child", name, "--kind", kind, "--shape", ",".join(map(str, shape)),
           "--threads", str(torch.get_num_threads())]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        return float("nan"), float("nan")
    return tuple(json.loads(out.stdout.strip().splitlines()[-1])["extra_mib"])


def loss_error(fn: Callable, shape: tuple[int, ...], kind: str) -> float:
    x = inputs(*shape, seed=0)
    with torch.no_grad():
        exact = float(reference_distillation(*x, alpha=ALPHA, temperature=T, kind=kind, beta=BETA))
    return abs(float(fn(*x, kind).detach()) - exact)


def cpu_name() -> str:
    """The CPU's model name and its AVX-512 features, from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return "CPU"
    name = next((x.split(":", 1)[1].strip() for x in info.splitlines() if x.startswith("model name")), "CPU")
    flags = next((x for x in info.splitlines() if x.startswith("flags")), "")
    return name + "".join(f" {f}" for f in ("avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="2048,256,512,8192", help="N,H,Ht,V")
    p.add_argument("--kind", action="append", default=None, help="kl | jsd (repeatable; default both)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per method (median reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, every core)")
    p.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    shape = tuple(int(v) for v in a.shape.split(","))
    kinds = a.kind or ["kl", "jsd"]
    if a.memory_child:
        print(json.dumps({"extra_mib": list(memory_child(a.memory_child, shape, kinds[0]))}))
        return
    N, H, Ht, V = shape
    print(f"# distillation loss fwd+bwd, float32, {cpu_name()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, median of {a.repeats}; alpha={ALPHA} T={T} beta={BETA}")
    for kind in kinds:
        print(f"\nN={N} H={H} Ht={Ht} V={V}, kind={kind}")
        print("| method | time (ms) | floor speed % | extra memory above floor, first call / later calls (MiB) | "
              "loss error vs float64 |")
        print("|---|---:|---:|---:|---:|")
        times = time_methods(shape, kind, a.repeats)
        floor = times["floor (4 matmuls)"]
        for name, fn in METHODS.items():
            t = times[name]
            if name.startswith("floor"):
                print(f"| {name} | {1000 * t:.0f} | 100% | - | - |")
                continue
            (first, later), err = measure_memory(name, shape, kind), loss_error(fn, shape, kind)
            print(f"| {name} | {1000 * t:.0f} | {100 * floor / t:.0f}% | {first:.0f} / {later:.0f} | {err:.1e} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()

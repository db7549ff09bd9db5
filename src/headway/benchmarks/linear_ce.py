"""Fused linear cross-entropy: headway against its peers, side by side in one process.

Time: median of `--repeats` forward+backward runs on fresh random inputs (float32 on CPU, bf16 on
CUDA). Memory: each method runs in a fresh subprocess; CPU reports peak RSS minus the RSS once the
inputs exist, CUDA `torch.cuda.max_memory_allocated` minus the inputs. Both are shown above the
floor (inputs + dE + dW, which any method must hold). The time floor is the three matrix products
alone (logits, dE, dW) in the benchmark's dtype, measured in the same run. Error: |loss - the
float64 loss of the same inputs|.

    python bench/linear_ce.py --dtype bfloat16 --shape 4096,768,50257   # the bf16 section

    python bench/linear_ce.py            # the full CPU table (several minutes on 2 cores)
    python bench/linear_ce.py --quick    # CI-sized
    headway bench [--quick]              # the same, from the installed package
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import headway as hw

Fn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def _floor(h, w, y):
    z = h @ w.t()  # (N, V) logits
    dh = z @ w  # (N, H) as dE
    dw = z.t() @ h  # (V, H) as dW
    return dh[0, 0] + dw[0, 0]


def _naive(h, w, y):
    return F.cross_entropy((h @ w.t()).float(), y)


def _hf(h, w, y):
    from transformers.loss.loss_utils import ForCausalLMLoss

    return ForCausalLMLoss(h @ w.t(), None, vocab_size=w.shape[0], shift_labels=y)


def _torch_chunked(h, w, y):
    return F.linear_cross_entropy(h, w, y, options=torch.nn.LinearCrossEntropyOptions())


def _cce(impl: str) -> Fn:
    def f(h, w, y):
        from cut_cross_entropy import linear_cross_entropy

        return linear_cross_entropy(h, w, y, impl=impl)

    return f


def _liger(h, w, y):
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return liger_fused_linear_cross_entropy(h, w, y)


def _headway(h, w, y):
    return hw.linear_cross_entropy(h, w, y, impl="chunked")


def _headway_mm(h, w, y):
    """headway with every product through torch.mm (what the peers and the floor use)."""
    from headway.loss.matmul import onednn

    with onednn(False):
        loss = hw.linear_cross_entropy(h, w, y, impl="chunked")
        loss.backward()  # fwd+bwd both run here (the grads are computed in forward); keep the switch on
    return loss.detach()


def _headway_passes(h, w, y):
    """headway with the earlier softmax: separate max, exp, sum and scale passes over each chunk."""
    from headway.loss.core import separate_passes

    with separate_passes():
        loss = hw.linear_cross_entropy(h, w, y, impl="chunked")
        loss.backward()
    return loss.detach()


def methods(device: str) -> dict[str, Fn]:
    m: dict[str, Fn] = {"floor (3 matmuls)": _floor, "naive": _naive}
    if importlib.util.find_spec("transformers"):
        m["hf ForCausalLMLoss"] = _hf
    if hasattr(F, "linear_cross_entropy") and hasattr(torch.nn, "LinearCrossEntropyOptions"):
        m["torch F.linear_cross_entropy"] = _torch_chunked
    if importlib.util.find_spec("cut_cross_entropy"):
        m["cce torch_compile"] = _cce("torch_compile")
        if device == "cuda":
            m["cce"] = _cce("cce")
    if device == "cuda" and importlib.util.find_spec("liger_kernel"):
        m["liger"] = _liger
    if device == "cpu":
        m["headway, torch.mm products"] = _headway_mm
        m["headway, separate softmax passes"] = _headway_passes
    m["headway"] = _headway
    return m


def inputs(N: int, H: int, V: int, dtype: torch.dtype, device: str, seed: int):
    g = torch.Generator(device=device).manual_seed(seed)
    h = (torch.randn(N, H, device=device, generator=g) / H**0.25).to(dtype).requires_grad_()
    w = (torch.randn(V, H, device=device, generator=g) / H**0.25).to(dtype).requires_grad_()
    y = torch.randint(0, V, (N,), device=device, generator=g)
    return h, w, y


def run_once(fn: Fn, h, w, y) -> None:
    loss = fn(h, w, y)
    if loss.requires_grad:
        loss.backward()
    h.grad = w.grad = None


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_method(fn: Fn, shape, dtype, device, repeats: int) -> float:
    h, w, y = inputs(*shape, dtype, device, seed=0)
    run_once(fn, h, w, y)  # warm-up (and compilation)
    times = []
    for r in range(repeats):
        h, w, y = inputs(*shape, dtype, device, seed=r + 1)
        _sync(device)
        t = time.perf_counter()
        run_once(fn, h, w, y)
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def rss_now() -> int:
    """This process's resident set size now, in bytes (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_peak() -> int:
    """This process's peak resident set size so far (VmHWM), in bytes (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found")


def memory_child(name: str, shape, dtype, device) -> float:
    """Peak extra bytes of one forward+backward above the floor (inputs + dE + dW), in MiB."""
    fn = methods(device)[name]
    h, w, y = inputs(*shape, dtype, device, seed=0)
    run_once(fn, h, w, y)  # compile / warm caches first; then measure a second run
    grads_bytes = (h.numel() + w.numel()) * h.element_size()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run_once(fn, h, w, y)
        peak = torch.cuda.max_memory_allocated() - base
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        base = rss_now()
        run_once(fn, h, w, y)
        peak = rss_peak() - base
    return (peak - grads_bytes) / 2**20


def measure_memory(name: str, shape, dtype_name: str, device: str) -> float:
    cmd = [sys.executable, "-m", "headway.benchmarks.linear_ce", "--_memory-child", name, "--device", device,
           "--dtype", dtype_name, "--shape", ",".join(map(str, shape))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        return float("nan")
    return json.loads(out.stdout.strip().splitlines()[-1])["extra_mib"]


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def errors(fn: Fn, shape, dtype, device) -> tuple[float, float]:
    """The method's errors on the seed-0 inputs against float64 arithmetic on the very same (rounded)
    inputs, so only the method's own arithmetic counts: (|loss - loss64| / loss64, the largest of
    ‖dE - dE64‖ / ‖dE64‖ and ‖dW - dW64‖ / ‖dW64‖); the gradient error is nan for a method without
    gradients (the floor)."""
    h, w, y = inputs(*shape, dtype, device, seed=0)
    h64 = h.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    exact = F.cross_entropy(h64 @ w64.t(), y)
    exact.backward()
    loss = fn(h, w, y)
    if loss.requires_grad:
        loss.backward()
    loss_err = abs(float(loss.detach().double()) - exact.item()) / abs(exact.item())
    if h.grad is None or w.grad is None:
        return loss_err, float("nan")
    rel = [float((g.double() - g64).norm() / g64.norm()) for g, g64 in ((h.grad, h64.grad), (w.grad, w64.grad))]
    return loss_err, max(rel)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="headway bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes and 3 repeats (for CI / a first look)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help=(
        "default: float32, then bfloat16 where the products are native (a CPU with AVX512-BF16 or AMX; "
        "HEADWAY_FAST_BF16=1/0 forces the reading); bfloat16 on CUDA"))
    p.add_argument("--shape", action="append", default=None, help="N,H,V (repeatable)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per method (median reported)")
    p.add_argument("--skip-memory", action="store_true", help="time only")
    p.add_argument("--only", default=None, help="comma-separated method names to run")
    p.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.memory_child:
        shape = tuple(int(x) for x in a.shape[0].split(","))
        dtype = DTYPES[a.dtype or "float32"]
        print(json.dumps({"extra_mib": memory_child(a.memory_child, shape, dtype, a.device)}))
        return
    if a.dtype:
        dtype_names = [a.dtype]
    elif a.device == "cuda":
        dtype_names = ["bfloat16"]
    else:
        from headway.cpu import has_fast_bf16

        dtype_names = ["float32", "bfloat16"] if has_fast_bf16() else ["float32"]
    if a.shape:
        shapes = [tuple(int(x) for x in s.split(",")) for s in a.shape]
    elif a.quick:
        shapes = [(512, 256, 8191)]
    else:
        shapes = [(4096, 768, 50257), (1024, 1024, 128256)]
        if a.device == "cuda":
            shapes.append((8192, 2304, 256000))
    repeats = a.repeats or (3 if a.quick or a.device == "cpu" else 10)
    ms = methods(a.device)
    if a.only:
        keep = set(a.only.split(","))
        ms = {k: v for k, v in ms.items() if k in keep or k.startswith("floor")}
    dev = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    for dtype_name in dtype_names:
        section(ms, shapes, dtype_name, a, repeats, dev)


def section(ms: dict[str, Fn], shapes: list, dtype_name: str, a: argparse.Namespace, repeats: int, dev: str) -> None:
    """One dtype's table for every shape: time, share of the floor's speed, speedup, memory, errors."""
    dtype = DTYPES[dtype_name]
    print(f"\n# linear cross-entropy fwd+bwd, {dtype_name}, {dev}, torch {torch.__version__}, median of {repeats}")
    for shape in shapes:
        N, H, V = shape
        times: dict[str, float] = {}
        mem: dict[str, float] = {}
        err: dict[str, tuple[float, float]] = {}
        for name, fn in ms.items():
            try:
                times[name] = time_method(fn, shape, dtype, a.device, repeats)
            except Exception as e:  # a peer that cannot run this configuration
                print(f"  {name}: failed ({type(e).__name__}: {str(e)[:120]})", file=sys.stderr)
                continue
            if not name.startswith("floor"):
                err[name] = errors(fn, shape, dtype, a.device)
                if not a.skip_memory:
                    mem[name] = measure_memory(name, shape, dtype_name, a.device)
        floor = times.get("floor (3 matmuls)")
        ours = times.get("headway")
        print(f"\nN={N} H={H} V={V}")
        print("| method | time (ms) | floor speed % | headway speedup | extra memory above floor (MiB) | "
              "loss rel. error vs float64 | gradient rel. error vs float64 |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, t in times.items():
            fl = f"{100 * floor / t:.0f}%" if floor else "-"
            sp = f"{t / ours:.2f}x" if ours else "-"
            mm = f"{mem[name]:.0f}" if name in mem else "-"
            er = " | ".join(f"{e:.1e}" for e in err[name]) if name in err else "- | -"
            print(f"| {name} | {1000 * t:.0f} | {fl} | {sp} | {mm} | {er} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

"""The default run as a speedrun, measured on this machine (python bench/speedrun.py).

throughput: the old default (the float32 baseline of 2026-11-24: loss products through oneDNN, 64 MiB loss chunks,
    AdamW + GELU) and the new default, built in one process on the same batches, timed in
    alternating blocks of steps (same machine, same minute): tokens/s, bytes/s and MFU.
recipes: `headway train` at equal wall time (--time-budget) for each flag set and seed, on the
    prepared standard library; validation bits per byte (whole split), steps, tokens/s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# the float32 baseline's recipe: AdamW, GELU, tied head, lr 3e-3
OLD = {"lr": 3e-3, "optimizer": "adamw", "activation": "gelu", "qk_norm": False, "zero_init": False, "size": "tiny"}
OLD_FLAGS = ["--lr", "3e-3", "--optimizer", "adamw", "--activation", "gelu", "--no-qk-norm", "--no-zero-init",
             "--size", "tiny"]
ALL4 = ["--qk-norm", "--zero-init", "--optimizer", "muon", "--activation", "relu2"]

RECIPES = {  # each row: the flags on top of the defaults; "speedrun default" = 64x2 (--size tiny)
    # (docs/benchmarks/2026-11-24-speedrun-recipe.md and 2026-11-24-newton-schulz-fp32.md)
    "float32 baseline recipe": OLD_FLAGS,
    "+ ReLU²": OLD_FLAGS + ["--activation", "relu2"],
    "+ QK-norm + zero-init projections": OLD_FLAGS + ["--qk-norm", "--zero-init"],
    "+ Muon": OLD_FLAGS + ["--optimizer", "muon"],
    "all four": OLD_FLAGS + ALL4,
    "all four, lr 1.5e-3": OLD_FLAGS + ALL4 + ["--lr", "1.5e-3"],
    "all four, lr 6e-3 (speedrun default)": ["--size", "tiny"],
    "all four, lr 1.2e-2": ["--lr", "1.2e-2", "--size", "tiny"],
    "speedrun default + untied head": ["--tensor-parallel-head", "--size", "tiny"],
    "speedrun default, 96x3": ["--size", "96x3"],
    "speedrun default, weight decay 0": ["--weight-decay", "0", "--size", "tiny"],
    # the float32 Newton-Schulz screen (FIM line splits); vocabulary rows: prepare with --vocab-size, pass --data
    "speedrun default, cosine to 0": ["--min-lr-ratio", "0", "--size", "tiny"],
    "speedrun default, min lr ratio 0.3": ["--min-lr-ratio", "0.3", "--size", "tiny"],
    "speedrun default, batch 8": ["--batch-size", "8", "--size", "tiny"],
    "speedrun default, batch 32": ["--batch-size", "32", "--size", "tiny"],
    "speedrun default, 512-token rows, batch 8": ["--seq-len", "512", "--batch-size", "8", "--size", "tiny"],
    "64x3 (the current default)": [],
}


@contextlib.contextmanager
def old_loss() -> Iterator[None]:
    """The float32 baseline's loss on CPU: oneDNN products, chunks up to the 64 MiB budget, separate softmax passes."""
    import headway.loss.core as core
    from headway.loss.matmul import onednn

    cache = core.CPU_CACHE_BYTES
    core.CPU_CACHE_BYTES = core.DEFAULT_BUDGET_BYTES
    try:
        with onednn(True), core.separate_passes():
            yield
    finally:
        core.CPU_CACHE_BYTES = cache


def throughput(tmp: Path, new_flags: dict, blocks: int, steps: int) -> None:
    from headway.train.config import TrainConfig
    from headway.train.flops import head_shape
    from headway.train.loop import build, train_step
    from headway.train.optim import lr_at
    from headway.train.signals import Stopper

    print(f"\n## throughput: old vs new default (and new with --compile), {blocks} alternating blocks of {steps} "
          "steps, same batches")
    runs, batches = {}, None
    variants = {"old": OLD, "new": new_flags, "new --compile": {**new_flags, "compile": True}}
    with Stopper() as st:
        for name, kw in variants.items():
            cfg = TrainConfig(out=str(tmp / name), steps=10**6, infill_lines=0, **kw)
            runs[name] = build(cfg, None, None, True, lambda *_: None, st)
        batches = [next(runs["new"].loader) for _ in range(steps)]
        bytes_per_token = runs["new"].data.prepared.totals("train")["bytes"] / runs["new"].data.prepared.totals(
            "train")["tokens"]
        times: dict[str, list[float]] = {n: [] for n in variants}
        for b in range(blocks + 1):  # block 0 warms up (and compiles)
            for name in list(variants)[:: 1 if b % 2 else -1]:
                run = runs[name]
                ctx = old_loss() if name == "old" else contextlib.nullcontext()
                with ctx:
                    it = iter(batches)
                    t = time.perf_counter()
                    for i in range(steps):
                        train_step(run, it, lr_at(i, 10**6, run.cfg))
                    if b:
                        times[name].append((time.perf_counter() - t) / steps)
    tok = {n: runs[n].cfg.batch_size * runs[n].cfg.seq_len for n in runs}
    for name in variants:
        per = min(times[name])
        s = runs[name].summary
        rate = tok[name] / per
        print(f"{name}: {per * 1000:6.1f} ms/step, {rate:8,.0f} tokens/s, {rate * bytes_per_token:9,.0f} bytes/s, "
              f"MFU {rate * s.flops_per_token / s.matmul_peak:.1%} ({s.flops_per_token / 1e6:.2f} MFLOP/token, "
              f"matmul peak {s.matmul_peak / 1e9:.0f} GFLOP/s)")
    for name in list(variants)[1:]:
        print(f"{name} / old tokens/s: {min(times['old']) / min(times[name]):.2f}x")
    new = runs["new"]
    V, H = head_shape(new.model)
    need = 2 * tok["old"] / min(times["old"]) * new.summary.flops_per_token / new.summary.matmul_peak
    print(f"2x old's tokens/s on the new model would need MFU {need:.0%}; the LM head's products are "
          f"{6 * V * H / new.summary.flops_per_token:.0%} of its FLOPs")


def recipes(tmp: Path, budget: int, seeds: list[int], names: list[str] | None) -> None:
    print(f"\n## recipes at equal wall time: --time-budget {budget}, seeds {seeds}")
    data = tmp / "data"
    subprocess.run([sys.executable, "-m", "headway", "prepare", "--quiet", "--out", str(data)], check=True,
                   capture_output=True)
    for name, flags in RECIPES.items():
        if names and name not in names:
            continue
        rows = []
        for seed in seeds:
            out = tmp / f"r{seed}"
            r = subprocess.run([sys.executable, "-m", "headway", "train", "--data", str(data), "--out", str(out),
                                "--overwrite", "--time-budget", str(budget), "--infill-lines", "0", "--seed",
                                str(seed), *flags], capture_output=True, text=True)
            if r.returncode:
                print(f"{name}: failed\n{r.stderr[-1500:]}")
                break
            s = json.loads((out / "summary.json").read_text())
            rows.append((s["val"]["bits_per_byte"], s["steps"], s["tokens_per_second"]))
        if rows:
            bpb = " ".join(f"{x[0]:.4f}" for x in rows)
            print(f"{name:<34} bpb {bpb}  mean {sum(x[0] for x in rows) / len(rows):.4f}  steps {rows[0][1]}  "
                  f"tokens/s {rows[0][2]:,.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="throughput,recipes", help="sections")
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--budget", type=int, default=150, help="seconds of training per recipe run")
    ap.add_argument("--seeds", default="0", help="comma-separated")
    ap.add_argument("--recipe", action="append", default=None, help="only these recipes (names as printed)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        if "throughput" in a.only:
            throughput(Path(d), {}, a.blocks, a.steps)
        if "recipes" in a.only:
            recipes(Path(d), a.budget, [int(s) for s in a.seeds.split(",")], a.recipe)


if __name__ == "__main__":
    main()

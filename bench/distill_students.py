"""Distillation, shown to work: a small student distilled from a larger headway-trained teacher against
the same student trained by cross-entropy, for the same steps, on the same data and tokenizer.

1. the teacher: `headway train --size 128x4 --steps 300` on the default corpus (the standard library's
   .py files, its own 8k BPE), the default objective (a step count, not a time budget: on a shared
   machine a budget buys a different teacher each time);
2. per seed, two students of `--size 64x2 --steps 300` on the teacher's prepared data (so its
   tokenizer and Vocab): `--objective clm` and `--objective distill --teacher TEACHER` (α 0.5, T 2,
   forward KL: the defaults);
3. the validation bits per byte each reaches (the final evaluation: the whole validation split, up to
   `--final-eval-tokens`), side by side.

Runs one process at a time, each with `--threads` threads; a run whose summary.json exists is reused
(delete the folder to redo it).

    python bench/distill_students.py --out /tmp/distill [--seeds 0,1] [--write docs/benchmarks/DATE-distillation.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

THREADS = ["--threads", "1"]


def train(out: Path, *flags: str) -> dict:
    """`headway train` in a fresh process (skipped when `out` already holds a finished run; resumed, exactly,
    when a signal stopped it); its summary."""
    summary = out / "summary.json"
    ended = json.loads(summary.read_text())["ended"] if summary.exists() else None
    if ended != "done":
        again = ["--resume"] if ended in ("SIGINT", "SIGTERM") else ["--overwrite"]
        cmd = [sys.executable, "-m", "headway", "train", "--out", str(out), *again, "--infill-lines", "0",
               *THREADS, *flags]
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(summary.read_text())


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        info = f.read()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    feats = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    return f"{name}, {len([x for x in info.splitlines() if x.startswith('processor')])} cores, " + (
        " ".join(feats) if feats else "no AVX-512")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/distill", help="folder of the runs")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", default="300")
    p.add_argument("--teacher-steps", default="300", help="the teacher's --steps")
    p.add_argument("--threads", default="1", help="--threads of every run (1: the machine may be shared)")
    p.add_argument("--student-size", default="64x2")
    p.add_argument("--teacher-size", default="128x4")
    p.add_argument("--write", default=None, help="also write the results page here (markdown)")
    a = p.parse_args()
    THREADS[1] = a.threads
    root = Path(a.out)
    t = train(root / "teacher", "--size", a.teacher_size, "--steps", a.teacher_steps)
    rows = [("teacher", a.teacher_size, "default (clm:0.5,fim:0.5)", "-", t)]
    data = str(root / "teacher" / "data")
    common = ["--data", data, "--size", a.student_size, "--steps", a.steps]
    for seed in a.seeds.split(","):
        for name, flags in (("clm", ["--objective", "clm"]),
                            ("distill", ["--objective", "distill", "--teacher", str(root / "teacher")])):
            s = train(root / f"{name}-{seed}", *common, *flags, "--seed", seed)
            rows.append((name, a.student_size, name, seed, s))
    lines = ["| run | size | objective | seed | steps | parameters | val bits/byte | val loss (nats/token) | "
             "train s |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, size, obj, seed, s in rows:
        v = s["val"]
        lines.append(f"| {name} | {size} | {obj} | {seed} | {s['steps']} | {s['params'] / 1e6:.2f}M | "
                     f"{v['bits_per_byte']:.4f} | {v['loss']:.4f} | {s['train_seconds']:.0f} |")
    means = {n: sum(r[4]["val"]["bits_per_byte"] for r in rows if r[0] == n) / len(a.seeds.split(","))
             for n in ("clm", "distill")}
    lines.append("")
    lines.append(f"mean over seeds: clm {means['clm']:.4f}, distill {means['distill']:.4f} bits/byte "
                 f"({means['distill'] - means['clm']:+.4f})")
    table = "\n".join(lines)
    print(table)
    if a.write:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        head = (f"| | |\n|---|---|\n| date | {datetime.date.today().isoformat()} |\n| commit | `{commit}` |\n"
                f"| machine | {cpu_name()}, {platform.machine()} |\n| torch | {torch.__version__} |\n"
                f"| command | `python bench/distill_students.py --out {a.out} --seeds {a.seeds} "
                f"--threads {a.threads}` |\n")
        Path(a.write).write_text(f"# Distillation: students against cross-entropy\n\n{head}\n```\n{table}\n```\n")


if __name__ == "__main__":
    main()

"""The machine-chosen default run against the fixed one, side by side on this machine.

For each seed, `headway train` with the defaults (`--size auto`: the size this machine's measured
speed and the time budget choose) and with the previous fixed default (`--size 64x3`), alternating
which goes first, on the same prepared data (the default corpus), with the default 400 s budget.
Prints each run's chosen size, steps, tokens/s, peak RSS and validation bits per byte, then the
difference of the means. Infilling is not scored (it does not change the validation figure).

    python bench/machine_default.py --seeds 0,1,2 [--budget 400] [--out runs/bench-machine]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

FIXED = "64x3"  # the default before sizes were chosen per machine


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def train(data: Path, out: Path, seed: int, budget: float, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "headway", "train", "--data", str(data), "--out", str(out), "--overwrite",
           "--seed", str(seed), "--time-budget", str(budget), "--infill-lines", "0", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    s = json.loads((out / "summary.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    return {"size": cfg["size"], "precision": cfg["precision"], "bpb": s["val"]["bits_per_byte"],
            "steps": s["steps"], "tps": s["tokens_per_second"], "rss": s["peak_rss_mib"],
            "chosen": s.get("chosen", {}).get("size", "")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    ap.add_argument("--budget", type=float, default=400.0, help="--time-budget of every run (seconds)")
    ap.add_argument("--out", default="runs/bench-machine", help="folder for the prepared data and the runs")
    a = ap.parse_args()
    import torch

    import headway

    root = Path(a.out)
    data = root / "data"
    if not (data / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "headway", "prepare", "--quiet", "--out", str(data)], check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"# machine-chosen default vs --size {FIXED}: {cpu_name()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, headway {headway.__version__} ({commit or 'unknown commit'}), "
          f"{time.strftime('%Y-%m-%d %H:%M')}, --time-budget {a.budget:g}")
    print("| seed | run | size | precision | steps | tokens/s | peak RSS (MiB) | val bits/byte |")
    print("|---:|---|---|---|---:|---:|---:|---:|")
    rows: dict[str, list[dict]] = {"auto": [], FIXED: []}
    for i, seed in enumerate(int(s) for s in a.seeds.split(",")):
        order = ["auto", FIXED] if i % 2 == 0 else [FIXED, "auto"]
        for name in order:
            r = train(data, root / f"{name}-{seed}", seed, a.budget, [] if name == "auto" else ["--size", FIXED])
            rows[name].append(r)
            print(f"| {seed} | {'--size auto' if name == 'auto' else '--size ' + FIXED} | {r['size']} | "
                  f"{r['precision']} | {r['steps']} | {r['tps']:,.0f} | {r['rss']:.0f} | {r['bpb']:.4f} |", flush=True)
    mean = {k: sum(r["bpb"] for r in v) / len(v) for k, v in rows.items()}
    wins = sum(x["bpb"] < y["bpb"] for x, y in zip(rows["auto"], rows[FIXED]))
    print(f"\nmean val bits/byte: auto {mean['auto']:.4f}, {FIXED} {mean[FIXED]:.4f}, difference "
          f"{mean['auto'] - mean[FIXED]:+.4f}; auto lower on {wins} of {len(rows['auto'])} seeds")
    for r in rows["auto"][:1]:
        print(f"the choice: {r['chosen']}")


if __name__ == "__main__":
    main()

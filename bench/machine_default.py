"""The machine-chosen default run against the fixed one, side by side on this machine.

For each seed, `headway train` with the defaults (`--size auto`: the size this machine's measured
speed and the time budget choose), with the previous fixed default (`--size 64x3`, or none with
`--fixed-size ''`), and with each `--baseline-rev REV` the defaults of an earlier commit (run from a
git worktree of REV, with this environment's packages), rotating which goes first, on the same
prepared data (the default corpus), with the default 400 s budget. Prints each run's chosen size,
steps, tokens/s, peak RSS and validation bits per byte, then each arm's mean against the
machine-chosen default's. Infilling is not scored (it does not change the validation figure).

    python bench/machine_default.py --seeds 0,1,2 [--budget 400] [--baseline-rev REV ...] [--fixed-size SIZE]
                                    [--out runs/bench-machine]
"""

from __future__ import annotations

import argparse
import json
import os
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


def train(data: Path, out: Path, seed: int, budget: float, extra: list[str], src: Path | None = None) -> dict:
    """One `headway train` run in a subprocess (of the package under `src` when given); its results."""
    cmd = [sys.executable, "-m", "headway", "train", "--data", str(data.resolve()), "--out", str(out.resolve()),
           "--overwrite", "--seed", str(seed), "--time-budget", str(budget), "--infill-lines", "0", *extra]
    env = dict(os.environ, PYTHONPATH=str(src)) if src else None
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=src.parent if src else None)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    s = json.loads((out / "summary.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    return {"size": cfg["size"], "precision": cfg.get("precision", "auto"), "bpb": s["val"]["bits_per_byte"],
            "steps": s["steps"], "tps": s["tokens_per_second"], "rss": s["peak_rss_mib"],
            "chosen": s.get("chosen", {}).get("size", "")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    ap.add_argument("--budget", type=float, default=400.0, help="--time-budget of every run (seconds)")
    ap.add_argument("--out", default="runs/bench-machine", help="folder for the prepared data and the runs")
    ap.add_argument("--baseline-rev", action="append", default=[], help="also run the defaults of this git "
                    "revision (e.g. a commit before the machine chose the size), from a worktree of it in the output "
                    "folder; may be given several times")
    ap.add_argument("--fixed-size", default=FIXED, help="the fixed size run beside the machine's choice on this "
                    "code ('' for none)")
    a = ap.parse_args()
    import torch

    import headway

    root = Path(a.out)
    data = root / "data"
    if not (data / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "headway", "prepare", "--quiet", "--out", str(data)], check=True)
    git = ["git", "rev-parse", "--short"]
    commit = subprocess.run([*git, "HEAD"], capture_output=True, text=True).stdout.strip()
    arms: dict[str, tuple[list[str], Path | None]] = {"--size auto": ([], None)}
    if a.fixed_size:
        arms[f"--size {a.fixed_size}"] = (["--size", a.fixed_size], None)
    # every revision resolves before any worktree is made
    revs = [subprocess.run([*git, g], capture_output=True, text=True, check=True).stdout.strip()
            for g in a.baseline_rev]
    trees = {rev: (root / f"rev-{rev}").resolve() for rev in revs}
    for rev, tree in trees.items():
        arms[f"defaults of {rev}"] = ([], tree / "src")
    print(f"# machine-chosen default vs {', '.join(list(arms)[1:])}: {cpu_name()}, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}, headway {headway.__version__} ({commit or 'unknown commit'}), "
          f"{time.strftime('%Y-%m-%d %H:%M')}, --time-budget {a.budget:g}")
    print("| seed | run | size | precision | steps | tokens/s | peak RSS (MiB) | val bits/byte |")
    print("|---:|---|---|---|---:|---:|---:|---:|")
    rows: dict[str, list[dict]] = {name: [] for name in arms}
    names = list(arms)
    try:
        for rev, tree in trees.items():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], capture_output=True)  # a stale one
            subprocess.run(["git", "worktree", "add", "--detach", "-f", str(tree), rev], check=True,
                           capture_output=True)
        for i, seed in enumerate(int(s) for s in a.seeds.split(",")):
            for name in names[i % len(names):] + names[:i % len(names)]:  # who goes first rotates with the seed
                extra, src = arms[name]
                r = train(data, root / f"{name.split()[-1]}-{seed}", seed, a.budget, extra, src)
                rows[name].append(r)
                print(f"| {seed} | {name} | {r['size']} | {r['precision']} | {r['steps']} | {r['tps']:,.0f} | "
                      f"{r['rss']:.0f} | {r['bpb']:.4f} |", flush=True)
    finally:  # the earlier commits' worktrees are not left registered in the user's repository
        for tree in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], capture_output=True)
    mean = {k: sum(r["bpb"] for r in v) / len(v) for k, v in rows.items()}
    auto = names[0]
    print(f"\nmean val bits/byte: {auto} {mean[auto]:.4f}")
    for name in names[1:]:
        wins = sum(x["bpb"] < y["bpb"] for x, y in zip(rows[auto], rows[name]))
        print(f"  {name}: {mean[name]:.4f}; {auto} minus it {mean[auto] - mean[name]:+.4f}, lower on {wins} of "
              f"{len(rows[auto])} seeds")
    for r in rows[auto][:1]:
        print(f"the choice: {r['chosen']}")


if __name__ == "__main__":
    main()

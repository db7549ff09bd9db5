"""The data path at scale, measured on this machine (run: python bench/data.py).

1. Peak memory of `headway train --steps 20` (preparation included) on the standard library and
   on a corpus of ~200 MB of Python (this interpreter's or a venv's site-packages): the training
   process (its own peak RSS) and the largest process of the job (tokenizer trainer and workers).
2. `headway prepare` throughput in MB/s with 1 process and with every core, and the speedup.
3. Step time of the default model fed by the real loader (in-process and with a worker) vs. the
   same batches already in memory, interleaved in one process.
4. Time from a saved data state to the first batch, at step 50 and at a late step, and what the
   loader alone costs per batch, its window builds included.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def site_packages() -> Path:
    import sysconfig

    return Path(sysconfig.get_paths()["purelib"])


def py_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.py") if p.is_file())


def headway(*args: str) -> tuple[float, float, subprocess.CompletedProcess]:
    """(seconds, largest process RSS in MiB, result) of `python -m headway ARGS` in a fresh child."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "headway", *args], capture_output=True, text=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"headway {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, r


def memory(tmp: Path, corpora: dict[str, list[str]]) -> None:
    print("\n## peak memory of `headway train --steps 20` (preparation included)")
    print(f"{'corpus':<28} {'size':>9} {'train tokens':>13} {'training process':>17} {'largest process':>16} "
          f"{'wall':>7}")
    for name, data in corpora.items():
        out = tmp / f"run-{name}"
        # each corpus in its own child (RUSAGE_CHILDREN is a running maximum over the children waited for)
        code = (f"import sys, resource, subprocess; r = subprocess.run([sys.executable, '-m', 'headway', 'train', "
                f"'--steps', '20', '--out', {str(out)!r}, '--glob', '*.py', *{data!r}], capture_output=True, "
                f"text=True); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); "
                f"sys.stderr.write(r.stderr[-2000:]); sys.exit(r.returncode)")
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"train on {name} failed:\n{r.stderr}")
        dt = time.perf_counter() - t
        s = json.loads((out / "summary.json").read_text())
        m = json.loads((out / "data" / "manifest.json").read_text())
        tokens = sum(x["totals"]["train"]["tokens"] for x in m["sources"])
        size = sum(x["bytes_on_disk"] for x in m["sources"])
        print(f"{name:<28} {size / 2**20:>6.0f} MB {tokens / 1e6:>12.1f}M {s['peak_rss_mib']:>13.0f} MiB "
              f"{float(r.stdout.split()[-1]):>12.0f} MiB {dt:>6.0f}s")


def throughput(tmp: Path, data: list[str]) -> None:
    print("\n## `headway prepare` throughput (BPE trained once first, then tokenizing only is timed)")
    base = tmp / "prep-base"
    headway("prepare", "--quiet", "--out", str(base), "--glob", "*.py", "--prepare-workers", "0", "--data", *data)
    rows = []
    for workers in (1, os.cpu_count() or 1):
        folder = tmp / f"prep-{workers}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for f in ("tokenizer.json", "tokenizer.key"):  # same tokenizer: time the hashing + tokenizing alone
            shutil.copy(base / f, folder / f)
        dt, _, r = headway("prepare", "--quiet", "--out", str(folder), "--glob", "*.py", "--prepare-workers",
                           str(workers), "--data", *data)
        assert "training a byte-level BPE" not in r.stdout
        size = sum(json.loads((folder / "manifest.json").read_text())["sources"][i]["bytes_on_disk"]
                   for i in range(len(data)))
        rows.append((workers, size / 2**20 / dt, dt))
    for w, mbs, dt in rows:
        print(f"{w} process(es): {mbs:6.2f} MB/s ({dt:.1f} s)")
    print(f"speedup with {rows[-1][0]} processes: {rows[-1][1] / rows[0][1]:.2f}x")


def step_time(tmp: Path, steps: int) -> None:
    import torch

    from headway.train.config import TrainConfig
    from headway.train.loop import build, train_step
    from headway.train.optim import lr_at
    from headway.train.signals import Stopper

    print(f"\n## step time of the default model: real loader vs. the same batches in memory ({steps} steps each, "
          "interleaved)")
    rows = {}
    for workers in (0, 1):
        cfg = TrainConfig(out=str(tmp / f"steps-{workers}"), steps=10**6, loader_workers=workers)
        with Stopper() as st:
            run = build(cfg, None, None, True, lambda *_: None, st)
            in_memory = [next(run.loader) for _ in range(steps)]
            times = {"loader": [], "memory": []}
            for rep in range(3):
                for kind in ("loader", "memory") if rep % 2 == 0 else ("memory", "loader"):
                    stream = run.loader if kind == "loader" else iter(in_memory)
                    t = time.perf_counter()
                    for i in range(steps):
                        train_step(run, stream, lr_at(i, 10**6, cfg))
                    times[kind].append((time.perf_counter() - t) / steps)
            run.loader.close()
        rows[workers] = (min(times["loader"]), min(times["memory"]))
    for w, (a, b) in rows.items():
        where = "in the training process" if w == 0 else f"{w} worker process"
        print(f"loader {where:<24}: {a * 1000:6.1f} ms/step vs in memory {b * 1000:6.1f} ms/step -> "
              f"{(a / b - 1) * 100:+.1f}%")
    del torch


def resume_time(tmp: Path, late: int) -> None:
    from headway.data.loader import BUFFER_SIZE, Loader
    from headway.data.prepare import Settings, prepare
    from headway.objectives import build_objective
    from headway.train.config import TrainConfig
    from headway.train.data import RunData
    from headway.types import Vocab

    print("\n## resume: time from a saved data state to the first batch (default batches, loader in process)")
    cfg = TrainConfig(loader_workers=0)
    p = prepare([], tmp / "stdlib", Settings(), log=lambda *_: None, progress=False)
    data = RunData(p, p.tokenizer, Vocab(p.tokenizer.base_size))
    obj = build_objective(cfg.objective, data.vocab, (p.tokenizer.encode, p.tokenizer.decode))
    loader = data.loader(obj, cfg, 0, 1, None)
    states, gaps = {}, []
    for step in range(1, late + 1):
        t = time.perf_counter()
        next(loader)
        gaps.append(time.perf_counter() - t)
        if step in (50, late):
            states[step] = loader.state_dict()
    per_batch = sum(gaps) / late
    builds = [g for g in gaps if g > 20 * statistics.median(gaps)]  # the batches that built a window
    print(f"the loader alone: {per_batch * 1000:.1f} ms per batch on average over {late} batches; "
          f"{len(builds)} windows of {BUFFER_SIZE} examples, each built in "
          f"{sum(builds) / max(1, len(builds)):.2f} s (one every ~{late / max(1, len(builds)):.0f} batches)")
    for step, state in states.items():
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            again: Loader = data.loader(obj, cfg, 0, 1, state)
            next(again)
            best = min(best, time.perf_counter() - t)
        print(f"resume at step {step:>6}: first batch after {best * 1000:.0f} ms (replaying the batches, as before: "
              f"~{step * per_batch:.1f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big", default=str(site_packages()), help="the large Python corpus (default: site-packages)")
    ap.add_argument("--only", default="memory,throughput,steps,resume", help="which sections")
    ap.add_argument("--steps", type=int, default=40, help="steps per measurement in the step-time section")
    ap.add_argument("--late", type=int, default=50_000, help="the late step of the resume section")
    a = ap.parse_args()
    import platform

    cpu = next((x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                if x.startswith("model name")), platform.machine()) if Path("/proc/cpuinfo").exists() else "?"
    print(f"machine: {cpu}, {os.cpu_count()} cores; python {sys.version.split()[0]}")
    big = Path(a.big)
    print(f"large corpus: {big} ({py_bytes(big) / 2**20:.0f} MB of .py)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        only = a.only.split(",")
        if "memory" in only:
            memory(tmp, {"standard library": [], f"{big.name} (.py)": ["--data", str(big)]})
        if "throughput" in only:
            throughput(tmp, [str(big)])
        if "steps" in only:
            step_time(tmp, a.steps)
        if "resume" in only:
            resume_time(tmp, a.late)


if __name__ == "__main__":
    main()

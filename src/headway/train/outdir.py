"""The run's output folder: one run at a time (a lock), no silent mixing of two runs' results."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

RESULTS = ("latest", "metrics.jsonl", "summary.json", "loss.png", "config.json")


_HELD: set[int] = set()  # file descriptors of the locks this process holds


def _drop_inherited_locks() -> None:
    """In a forked child (a data worker): close the parent's lock descriptors, so the lock dies with
    the run's process and not with its slowest child (a `kill -9` must free the folder at once)."""
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on `out/.lock` while a run writes there (rank 0 only under torchrun).
    A second run on the same folder fails at once, naming the holder. The OS releases the lock
    when the process dies, so a killed run never leaves a stale lock."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        f = (out / ".lock").open("a+")
    except OSError:
        yield  # an unwritable folder is reported by the writability check with a clear message
        return
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ValueError(f"--out {out}: another run ({holder}) is writing to this folder; wait for it, or "
                             "choose another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        _HELD.add(f.fileno())
        yield
    finally:
        _HELD.discard(f.fileno())
        f.close()


def is_used(out: Path) -> bool:
    """Whether `out` holds an earlier run's results or checkpoints (a token cache alone is fine)."""
    if any((out / n).exists() for n in RESULTS if n != "metrics.jsonl"):
        return True
    m = out / "metrics.jsonl"
    return (m.exists() and m.stat().st_size > 0) or any(out.glob("step-*"))


def claim_output_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """A new run refuses a folder with an earlier run's results unless `overwrite` (then those
    results and checkpoints are removed; the tokenizer and token cache stay)."""
    if resume or not is_used(out):
        return
    if not overwrite:
        raise ValueError(f"--out {out} already holds a run (checkpoints, metrics); continue it with --resume, or "
                         "replace it with --overwrite, or choose another --out")
    for n in RESULTS:
        (out / n).unlink(missing_ok=True)
    for p in [*out.glob("step-*"), *out.glob(".tmp-step-*")]:
        shutil.rmtree(p, ignore_errors=True)


def trim_metrics(path: Path, step: int) -> None:
    """Keep the metrics of steps <= `step` (a resumed run repeats the steps after its checkpoint;
    their first records would otherwise appear twice). Rewritten atomically."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if rec.get("step", 0) <= step:
            keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(x + "\n" for x in keep))
    tmp.replace(path)

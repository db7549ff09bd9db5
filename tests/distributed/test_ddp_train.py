"""`headway train` under torchrun (gloo, real processes): DDP equals one process on the same
global batches; exact resume under torchrun with loader workers; a dead rank fails the job
instead of hanging it."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.train.test_train_cli import CODE


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    for i in range(30):
        (d / f"m{i}.py").write_text(CODE.replace("area", f"area{i}") * (1 + i % 2))
    return d


def _train_args(corpus: Path, out: Path, batch: int, steps: int = 4) -> list[str]:
    return ["train", "--data", str(corpus), "--out", str(out), "--tokenizer", "bytes", "--size", "tiny",
            "--seq-len", "64", "--batch-size", str(batch), "--steps", str(steps), "--warmup", "2", "--log-every", "1",
            "--val-fraction", "0.1", "--precision", "fp32", "--objective", "clm", "--threads", "1",
            "--infill-lines", "0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc: int, args: list[str], timeout: float = 300, entry_point: bool = False,
              **kw) -> subprocess.CompletedProcess:
    """torchrun ... -m headway ARGS, or with entry_point=True torchrun --no-python headway ARGS."""
    launch = ["--no-python", str(Path(sys.executable).parent / "headway")] if entry_point else ["-m", "headway"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
           str(_free_port()), *launch, *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", HEADWAY_DIST_TIMEOUT="30")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)


def _losses(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def _cat(batches):
    """One batch of the rows of several (rank 0's rows first), prefix tables padded to one width; per-token
    loss weights (masked diffusion) kept, an unweighted batch's given weight 1 on its targets, as collate does."""
    import torch

    from headway.constants import IGNORE_INDEX
    from headway.types import Batch

    D = max(b.prefix_lengths.shape[1] for b in batches)
    pre = [torch.nn.functional.pad(b.prefix_lengths, (0, D - b.prefix_lengths.shape[1])) for b in batches]
    fields = [torch.cat([getattr(b, f) for b in batches]) for f in ("input_ids", "labels", "position_ids",
                                                                    "document_ids")]
    if all(b.loss_weights is None for b in batches):
        return Batch(*fields, torch.cat(pre))
    valid = [b.labels != IGNORE_INDEX for b in batches]
    w = [b.loss_weights if b.loss_weights is not None else v.float() for b, v in zip(batches, valid)]
    n = [b.row_items if b.row_items is not None else v.sum(1) for b, v in zip(batches, valid)]
    return Batch(*fields, torch.cat(pre), torch.cat(w), torch.cat(n))


def _one_process_losses(ddp_out: Path, ref_out: Path, steps: int) -> list[float]:
    """One process training on the global batches of a 2-rank run (each rank's loader built here),
    with the library's own build and train_step."""
    return [r["loss"] for r in _one_process_steps(ddp_out, ref_out, steps)]


def _one_process_steps(ddp_out: Path, ref_out: Path, steps: int) -> list[dict]:
    """`_one_process_losses`, each step as {"loss": ..., plus the model's multi-token prediction metrics}."""
    import itertools

    from headway.train.config import TrainConfig
    from headway.train.loop import build, train_step
    from headway.train.optim import lr_at
    from headway.train.signals import Stopper

    cfg = TrainConfig.load(ddp_out / "config.json")
    cfg.out = str(ref_out)
    with Stopper() as stopper:
        run = build(cfg, None, None, True, lambda *_: None, stopper)
        loaders = [run.data.loader(run.objective, cfg, r, 2, None) for r in range(2)]
        stream = (_cat([next(x) for x in loaders]) for _ in itertools.count())
        return [{"loss": train_step(run, stream, lr_at(i, steps, cfg))[0], **run.model.mtp_metrics()}
                for i in range(steps)]


@pytest.mark.parametrize("backbone", ["transformer", "hf:llama"])
def test_two_process_ddp_equals_one_process_on_the_same_global_batches(corpus, tmp_path, backbone):
    extra = ["--backbone", backbone]
    if backbone.startswith("hf:"):  # a transformers architecture under DDP
        pytest.importorskip("transformers")
        extra += ["--size", "32x2x2"]
    two = tmp_path / "two"
    r2 = _torchrun(2, _train_args(corpus, two, batch=2) + extra)
    assert r2.returncode == 0, r2.stderr[-3000:]
    one = _one_process_losses(two, tmp_path / "one", 4)
    assert _losses(two) == pytest.approx(one, rel=1e-4)
    assert _losses(two)[-1] < _losses(two)[0]


def test_resume_under_torchrun(corpus, tmp_path):
    out = tmp_path / "run"
    args = _train_args(corpus, out, batch=2, steps=6) + ["--checkpoint-every", "3", "--loader-workers", "2"]
    assert _torchrun(2, args).returncode == 0
    straight = _losses(out)
    (out / "latest").write_text("step-0000003")
    (out / "metrics.jsonl").write_text("")
    r = _torchrun(2, args + ["--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert _losses(out) == pytest.approx(straight[3:], rel=1e-5)


def test_a_time_budget_under_torchrun_ends_every_rank_together_on_rank_0s_clock(corpus, tmp_path):
    """Each step, rank 0's clock gives every rank the learning rate and the decision to go on: no
    rank waits in a collective the others have left, and the replicas take the same steps."""
    out = tmp_path / "run"
    args = _train_args(corpus, out, batch=2)
    at = args.index("--steps")
    del args[at:at + 2]
    r = _torchrun(2, args + ["--time-budget", "3"], timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] > 5 and s["train_seconds"] <= 3.0 + 1.0, s
    lrs = [json.loads(x)["lr"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"lr"' in x][2:]
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))


def test_a_dead_rank_fails_the_job_loudly(corpus, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(_free_port()), "-m", "headway", *_train_args(corpus, out, batch=2, steps=100000)]
    env = dict(os.environ, OMP_NUM_THREADS="1", HEADWAY_DIST_TIMEOUT="30")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 180
    while time.time() < deadline and not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text()):
        time.sleep(0.2)
    try:
        workers = subprocess.run(["pgrep", "-f", "--", f"--out {out} "], capture_output=True, text=True)
        children = [int(p) for p in workers.stdout.split() if int(p) != proc.pid]
        assert children, "no worker processes found"
        os.kill(children[-1], signal.SIGKILL)  # one rank dies without a word
        t0 = time.time()
        text, _ = proc.communicate(timeout=180)
        assert proc.returncode != 0, text[-2000:]
        assert time.time() - t0 < 120
    finally:
        if proc.poll() is None:
            proc.kill()

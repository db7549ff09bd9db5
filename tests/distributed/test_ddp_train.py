"""`headway train` under torchrun (gloo, real processes): DDP equals one process with the same
global batch; resume under torchrun; a dead rank fails the job instead of hanging it."""

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
            "--val-fraction", "0.1", "--precision", "fp32", "--objective", "clm", "--threads", "1"]


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


def test_two_process_ddp_equals_one_process_with_the_same_global_batch(corpus, tmp_path):
    one = tmp_path / "one"
    r1 = subprocess.run([sys.executable, "-m", "headway", *_train_args(corpus, one, batch=4)], capture_output=True,
                        text=True, timeout=300)
    assert r1.returncode == 0, r1.stderr[-2000:]
    two = tmp_path / "two"
    r2 = _torchrun(2, _train_args(corpus, two, batch=2))
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert _losses(two) == pytest.approx(_losses(one), rel=1e-4)
    s1 = json.loads((one / "summary.json").read_text())
    s2 = json.loads((two / "summary.json").read_text())
    assert s2["val"]["bits_per_byte"] == pytest.approx(s1["val"]["bits_per_byte"], rel=1e-4)
    assert s2["tokens"] == s1["tokens"]


def test_resume_under_torchrun(corpus, tmp_path):
    out = tmp_path / "run"
    args = _train_args(corpus, out, batch=2, steps=6) + ["--checkpoint-every", "3"]
    assert _torchrun(2, args).returncode == 0
    straight = _losses(out)
    (out / "latest").write_text("step-0000003")
    (out / "metrics.jsonl").write_text("")
    r = _torchrun(2, args + ["--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert _losses(out) == pytest.approx(straight[3:], rel=1e-5)


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

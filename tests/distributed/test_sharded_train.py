"""FSDP2 and the vocabulary-parallel head under torchrun (gloo, real processes): the same losses as
one process with the same global batch; distributed checkpoints resume exactly and load for sampling."""

import json
import subprocess
import sys

import pytest

from tests.distributed.test_ddp_train import _losses, _torchrun, _train_args, corpus  # noqa: F401


def _one_process(corpus, out, extra):  # noqa: F811
    r = subprocess.run([sys.executable, "-m", "headway", *_train_args(corpus, out, batch=4), *extra],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("nproc,extra", [
    (2, ["--parallel", "fsdp"]),
    (2, ["--tensor-parallel-head"]),
    (2, ["--parallel", "fsdp", "--tensor-parallel-head"]),
], ids=["fsdp", "ddp+vocab-parallel-head", "fsdp+vocab-parallel-head"])
def test_sharded_training_equals_one_process_with_the_same_global_batch(corpus, tmp_path, nproc, extra):  # noqa: F811
    s1 = _one_process(corpus, tmp_path / "one", extra)
    two = tmp_path / "two"
    r = _torchrun(nproc, _train_args(corpus, two, batch=4 // nproc) + extra)
    assert r.returncode == 0, r.stderr[-3000:]
    mode = "FSDP" if "fsdp" in extra else "DDP"
    head = ", vocab-parallel head" if "--tensor-parallel-head" in extra else ""
    assert f"data parallel: 2 processes ({mode}{head})" in r.stdout
    assert _losses(two) == pytest.approx(_losses(tmp_path / "one"), rel=1e-4)
    s2 = json.loads((two / "summary.json").read_text())
    assert s2["val"]["bits_per_byte"] == pytest.approx(s1["val"]["bits_per_byte"], rel=1e-4)
    assert s2["infill"]["middle"] == s1["infill"]["middle"]  # generation through the sharded model
    ck = two / (two / "latest").read_text()
    assert (ck / "dcp" / ".metadata").exists() and (ck / "model.safetensors").exists()
    # the gathered full weights serve single-process inference like any checkpoint, with the same result
    scores = []
    for run in (two, tmp_path / "one"):
        ev = subprocess.run([sys.executable, "-m", "headway", "eval", str(run), "--data", str(corpus)],
                            capture_output=True, text=True, timeout=300)
        assert ev.returncode == 0, ev.stderr[-2000:]
        line = next(x for x in ev.stdout.splitlines() if x.startswith("loss "))
        scores.append(float(line.split(", ")[-1].split()[0]))  # "... , 7.6053 bits/byte"
    assert scores[0] == pytest.approx(scores[1], rel=1e-4)


def test_fsdp_with_vocab_parallel_head_resumes_exactly(corpus, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    args = _train_args(corpus, out, batch=2, steps=6) + ["--checkpoint-every", "3", "--parallel", "fsdp",
                                                         "--tensor-parallel-head"]
    r = _torchrun(2, args)
    assert r.returncode == 0, r.stderr[-3000:]
    straight = _losses(out)
    (out / "latest").write_text("step-0000003")
    (out / "metrics.jsonl").write_text("")
    r = _torchrun(2, args + ["--resume"], entry_point=True)  # the `headway` console script under torchrun
    assert r.returncode == 0, r.stderr[-3000:]
    assert _losses(out) == pytest.approx(straight[3:], rel=1e-5)


def test_unknown_parallel_mode_is_refused(corpus, tmp_path):  # noqa: F811
    r = subprocess.run([sys.executable, "-m", "headway", *_train_args(corpus, tmp_path / "x", batch=2),
                        "--parallel", "zero3"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--parallel must be one of ddp | fsdp, got 'zero3'" in r.stderr

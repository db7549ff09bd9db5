"""FSDP2 and the vocabulary-parallel head under torchrun (gloo, real processes): the same losses as
one process on the same global batches; distributed checkpoints resume exactly and load for sampling."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.distributed.test_ddp_train import _losses, _one_process_losses, _torchrun, _train_args, corpus  # noqa: F401


@pytest.mark.parametrize("nproc,extra", [
    (2, ["--parallel", "fsdp"]),
    # AdamW: Muon's bf16 Newton-Schulz turns the head's different summation order into 4e-4 (DDP + Muon: test_ddp_train)
    (2, ["--tensor-parallel-head", "--optimizer", "adamw"]),
    (2, ["--parallel", "fsdp", "--tensor-parallel-head"]),
], ids=["fsdp", "ddp+vocab-parallel-head", "fsdp+vocab-parallel-head"])
def test_sharded_training_equals_one_process_on_the_same_global_batches(corpus, tmp_path, nproc, extra):  # noqa: F811
    two = tmp_path / "two"
    r = _torchrun(nproc, _train_args(corpus, two, batch=4 // nproc) + extra)
    assert r.returncode == 0, r.stderr[-3000:]
    mode = "FSDP" if "fsdp" in extra else "DDP"
    head = ", vocab-parallel head" if "--tensor-parallel-head" in extra else ""
    assert f"data parallel: 2 processes ({mode}{head})" in r.stdout
    assert _losses(two) == pytest.approx(_one_process_losses(two, tmp_path / "one", 4), rel=1e-4)
    s2 = json.loads((two / "summary.json").read_text())
    ck = two / (two / "latest").read_text()
    assert (ck / "dcp" / ".metadata").exists() and (ck / "model.safetensors").exists()
    # the gathered full weights serve single-process inference like any checkpoint, with the same results:
    # bits per byte of the run's validation split, and the infill the sharded model generated
    ev = subprocess.run([sys.executable, "-m", "headway", "eval", str(two)], capture_output=True, text=True,
                        timeout=300)
    assert ev.returncode == 0, ev.stderr[-2000:]
    line = next(x for x in ev.stdout.splitlines() if x.startswith("loss "))
    assert float(line.split(", ")[-1].split()[0]) == pytest.approx(s2["val"]["bits_per_byte"], rel=1e-4)
    from headway.cli import load_run
    from headway.train.evaluation import demo_infill

    model, tok, vocab, _ = load_run(str(two))
    assert demo_infill(model, SimpleNamespace(tokenizer=tok, vocab=vocab))["middle"] == s2["infill"]["middle"]


@pytest.mark.parametrize("extra", [["--parallel", "fsdp", "--tensor-parallel-head"],
                                   ["--tensor-parallel-head", "--optimizer", "muon"]], ids=["fsdp", "ddp+muon"])
def test_vocab_parallel_head_resumes_exactly_from_distributed_checkpoints(corpus, tmp_path, extra):  # noqa: F811
    out = tmp_path / "run"
    args = _train_args(corpus, out, batch=2, steps=6) + ["--checkpoint-every", "3", *extra]
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

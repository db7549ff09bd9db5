"""End-to-end: `headway train` on tiny real files for every objective and backbone, resume, Ctrl-C,
error paths, and the other commands on a real checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from headway.cli import main
from headway.train.checkpoint import CheckpointError, load_checkpoint
from tests.support import CODE, _args  # noqa: F401


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective,backbone", [
    ("clm", "transformer"), ("mlm", "transformer"), ("prefix_lm", "transformer"), ("fim", "transformer"),
    ("span", "transformer"), ("ul2", "transformer"), ("clm:0.5,fim:0.5", "transformer"),
    ("clm", "gated_ssm"), ("mlm", "gated_ssm"), ("ul2r", "gated_ssm"), ("clm:0.5,fim:0.5", "gated_ssm"),
])
def test_every_objective_and_backbone_trains(corpus, tmp_path, objective, backbone):
    out = tmp_path / "run"
    assert main(_args(corpus, out, "--objective", objective, "--backbone", backbone)) == 0
    rows = _metrics(out)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(x)) for x in losses)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["tokens"] > 0
    if objective != "mlm":
        assert 0 < summary["val"]["bits_per_byte"] < 20
        assert set(summary["compressors"]) == {"gzip -9 (per file)", "xz -9e (per file)", "xz -9e (whole split)"}
    png = out / "loss.png"
    assert png.exists() and png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert (out / "latest").exists()


def test_loss_falls_over_a_short_run(corpus, tmp_path):
    out = tmp_path / "run"
    assert main(_args(corpus, out, "--steps", "40", "--lr", "3e-3", "--warmup", "5")) == 0
    losses = [r["loss"] for r in _metrics(out) if "loss" in r]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5


@pytest.mark.parametrize("workers", ["0", "2"])
def test_resume_gives_the_identical_next_losses(corpus, tmp_path, workers):
    out = tmp_path / "run"
    assert main(_args(corpus, out, "--steps", "6", "--checkpoint-every", "3", "--objective", "ul2",
                      "--loader-workers", workers)) == 0
    straight = [r["loss"] for r in _metrics(out) if "loss" in r]
    (out / "latest").write_text("step-0000003")  # as if the run had stopped after step 3
    (out / "metrics.jsonl").write_text("")
    assert main(_args(corpus, out, "--steps", "6", "--resume")) == 0
    resumed = [r for r in _metrics(out) if "loss" in r]
    assert [r["step"] for r in resumed] == [4, 5, 6]
    assert [r["loss"] for r in resumed] == pytest.approx(straight[3:], rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compile_trains_the_same_steps_as_eager(corpus, tmp_path, precision):
    """`--compile` (inductor) on the default model in a fresh process, as a user runs it: packed FIM
    rows, the tied split-vocabulary head and the chunked loss, whose buffers are first made inside the
    compiled step. It once died in torch.compile's partitioner; now its losses and gradient norms
    are eager's, in each precision forced on any CPU (bf16 native or emulated): within float32's
    rounding in fp32, and within the rounding of bf16 products per step in bf16, where the compiled
    graph keeps fused intermediates in float32 that eager rounds to bf16 (a few bf16 ulps, compounding
    over the steps)."""
    steps = 3
    eps = torch.finfo(torch.float32 if precision == "fp32" else torch.bfloat16).eps
    rel = 1e-4 if precision == "fp32" else 4 * eps * steps  # bf16: eps 2^-7 -> 9.4e-2 over 3 steps
    runs = {}
    for name, extra in (("compiled", ("--compile",)), ("eager", ())):
        out = tmp_path / name
        r = subprocess.run([sys.executable, "-m", "headway", *_args(corpus, out, "--objective", "clm:0.5,fim:0.5",
                                                                    "--steps", str(steps), "--precision", precision,
                                                                    *extra)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = [x for r in _metrics(out) if "loss" in r for x in (r["loss"], r["grad_norm"])]
    assert len(runs["compiled"]) == 2 * steps
    assert runs["compiled"] == pytest.approx(runs["eager"], rel=rel)


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(corpus, tmp_path):
    out = tmp_path / "run"
    args = _args(corpus, out, "--steps", "100000", "--log-every", "1")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # a shell that runs this suite in the background starts children with SIGINT ignored, and Python then
    # never raises KeyboardInterrupt; restore the default, as in a terminal
    proc = subprocess.Popen([sys.executable, "-m", "headway", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, text
    assert "checkpoint saved" in text
    step = int((out / "latest").read_text().split("-")[1])
    assert step >= 1


def test_corrupt_checkpoint_is_refused(corpus, tmp_path):
    out = tmp_path / "run"
    assert main(_args(corpus, out, "--steps", "2")) == 0
    from headway.cli import load_run

    model, *_ = load_run(str(out))
    ck = out / (out / "latest").read_text()
    data = bytearray((ck / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (ck / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(out, model)
    assert main(["sample", str(out), "--max-new-tokens", "2"]) == 2


def test_unwritable_output_folder_fails_before_training(corpus, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(_args(corpus, blocker / "sub")) == 2
    assert "not writable" in capsys.readouterr().err


@pytest.mark.parametrize("flag,value,match", [("--seq-len", "4", "seq-len"), ("--objective", "gpt", "objective"),
                                               ("--backbone", "rnn", "backbone"), ("--precision", "fp8", "precision")])
def test_bad_flags_give_clear_errors(corpus, tmp_path, capsys, flag, value, match):
    assert main(_args(corpus, tmp_path / "run", flag, value)) == 2
    assert match in capsys.readouterr().err


def test_missing_data_path_is_an_error(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "neither a file nor a folder" in capsys.readouterr().err


def test_sample_infill_eval_and_show_on_a_real_checkpoint(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(corpus, out, "--steps", "4")) == 0
    capsys.readouterr()
    assert main(["sample", str(out), "--prompt", "def ", "--max-new-tokens", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("def ")
    assert main(["infill", str(out), "--prefix", "def f(", "--suffix", "):\n", "--max-new-tokens", "4"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("def f(") and text.rstrip("\n").endswith("):")
    assert main(["eval", str(out), "--data", str(corpus / "mod_00.py")]) == 0
    assert "bits/byte" in capsys.readouterr().out
    png = tmp_path / "span.png"
    assert main(["show", "--objective", "span", "--png", str(png)]) == 0
    shown = capsys.readouterr().out
    assert "<extra_id_0>" in shown and png.stat().st_size > 1000


def test_causal_objective_on_a_leaky_model_is_refused():
    from headway.models import build_model
    from headway.train.config import TrainConfig
    from headway.train.guard import guard_causality
    from headway.types import Vocab

    leaky = build_model(Vocab(50, num_sentinels=2), "gated_ssm", "tiny", bidirectional=True)
    with pytest.raises(ValueError, match="not causal.*--allow-leak"):
        guard_causality(leaky, TrainConfig(objective="clm", backbone="gated_ssm"), print)
    warned = []
    guard_causality(leaky, TrainConfig(objective="clm", allow_leak=True), warned.append)
    assert warned and "WARNING" in warned[0]


def test_validation_sampling_and_eval_open_a_ul2_document_with_its_s2s_token(corpus, tmp_path, capsys):
    """UL2 trains no row that opens with EOS; its left-to-right rows open with [S2S]. The run's own
    validation and `headway eval` must score it that way (and agree to the last digit), not behind
    EOS, which scores the model on inputs it never saw."""
    import argparse

    from headway.cli import _eval_docs, load_run
    from headway.train.metrics import eval_windows, evaluate

    out = tmp_path / "run"
    assert main(_args(corpus, out, "--objective", "ul2", "--precision", "fp32")) == 0
    val = json.loads((out / "summary.json").read_text())["val"]
    model, tok, vocab, cfg = load_run(str(out))
    docs, n_bytes, _, _ = _eval_docs(argparse.Namespace(checkpoint=str(out), data=None, max_tokens=None), tok, cfg)
    score = lambda lead: evaluate(model, docs, n_bytes, vocab.eos, vocab.pad, cfg.seq_len, cfg.batch_size,  # noqa: E731
                                  torch.device("cpu"), cfg.seq_len // 2, lead=lead).loss
    s2s, eos = score(vocab.id("[S2S]")), score(vocab.eos)
    assert val["loss"] == pytest.approx(s2s, rel=1e-6) and abs(s2s - eos) > 1e-6
    (x, y), (x0, y0) = eval_windows(docs[:1], vocab.eos, 16, lead=vocab.id("[S2S]"))[0], \
        eval_windows(docs[:1], vocab.eos, 16)[0]
    assert x[0] == vocab.id("[S2S]") and (x[1:] == x0[1:]).all() and (y == y0).all()
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    assert f"loss {s2s:.4f} nats/token" in capsys.readouterr().out
    assert main(["sample", str(out), "--prompt", "def ", "--max-new-tokens", "3", "--temperature", "0"]) == 0

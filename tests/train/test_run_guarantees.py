"""What a run guarantees (docs/guarantees.md): every way a run ends leaves a loadable checkpoint of good weights
and an honest exit code; resume continues exactly what the user asked; bad input is refused early.
Signals, kills and full disks are tested in real subprocesses."""

import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from headway.cli import main
from headway.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, verify
from tests.support import CODE, _args


def _steps(out: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def _latest_step(out: Path) -> int:
    return int((out / "latest").read_text().split("-")[1])


def _spawn(args: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "headway", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _wait_for_training(proc: subprocess.Popen, out: Path, min_rows: int = 1) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        m = out / "metrics.jsonl"
        if m.exists() and len(m.read_text().splitlines()) >= min_rows:
            return
        time.sleep(0.1)
    raise AssertionError("training did not start")


def _loadable(out: Path) -> int:
    """The step of `latest` after loading its weights into a fresh model and checking they are finite."""
    from headway.cli import load_run

    model, *_ = load_run(str(out))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    return _latest_step(out)


# ---- resume ---------------------------------------------------------------------------------------

def test_resume_with_a_larger_steps_trains_the_extra_steps(corpus, tmp_path):
    out = tmp_path / "run"
    assert main(_args(corpus, out, "--steps", "5")) == 0
    assert main(_args(corpus, out, "--steps", "8", "--resume")) == 0
    assert _steps(out) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert json.loads((out / "summary.json").read_text())["steps"] == 8
    assert _latest_step(out) == 8


def test_resume_with_nothing_left_to_train_is_an_error(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(corpus, out, "--steps", "4")) == 0
    capsys.readouterr()
    assert main(_args(corpus, out, "--steps", "4", "--resume")) == 2
    assert "nothing to train" in capsys.readouterr().err


def test_resume_keeps_the_flags_left_out_and_refuses_changed_fixed_flags(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(corpus, out, "--steps", "2", "--lr", "2e-3")) == 0
    capsys.readouterr()
    # only --out, --steps and --resume: seq-len, batch, tokenizer, lr... come from the run
    assert main(["train", "--out", str(out), "--data", str(corpus), "--steps", "4", "--resume"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["seq_len"] == 64 and cfg["lr"] == 2e-3 and cfg["tokenizer"] == "bytes" and cfg["steps"] == 4
    # a fixed flag with a new value is refused, naming it
    assert main(_args(corpus, out, "--steps", "6", "--lr", "1e-2", "--seq-len", "32", "--resume")) == 2
    err = capsys.readouterr().err
    assert "--lr" in err and "--seq-len" in err and "cannot change" in err
    # a changeable flag is applied and recorded; the run saved the precision `auto` resolved to on this CPU
    saved = cfg["precision"]
    assert saved in ("fp32", "bf16")
    other = "bf16" if saved == "fp32" else "fp32"
    assert main(_args(corpus, out, "--steps", "6", "--lr", "2e-3", "--precision", other, "--resume")) == 0
    assert json.loads((out / "config.json").read_text())["precision"] == other
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("changed", {}).get("precision") == [saved, other] for r in recs)


def test_resume_after_files_were_added_keeps_the_tokenizer(corpus, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(corpus, data)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(out), "--vocab-size", "300", "--size", "tiny", "--seq-len",
            "64", "--batch-size", "2", "--val-fraction", "0.1", "--threads", "1", "--infill-lines", "0"]
    assert main([*args, "--steps", "2"]) == 0
    before = (out / "tokenizer.json").read_bytes()
    for i in range(30):
        (data / f"new_{i}.py").write_text(f"print('completely different text {i} ünïcödé')\n" * 20)
    assert main([*args, "--steps", "4", "--resume"]) == 0
    assert (out / "tokenizer.json").read_bytes() == before
    assert (out / (out / "latest").read_text() / "tokenizer.json").read_bytes() == before


# ---- divergence -----------------------------------------------------------------------------------

def test_a_diverging_run_stops_and_keeps_good_weights(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(corpus, out, "--steps", "50", "--lr", "1e3", "--checkpoint-every", "1")) == 3
    err = capsys.readouterr().err
    assert "not finite" in err
    step = _loadable(out)
    assert 1 <= step < 50
    for ck in out.glob("step-*"):  # no checkpoint holds a non-finite weight
        verify(ck)
    assert json.loads((out / "summary.json").read_text())["ended"] == "diverged"
    assert main(["sample", str(out), "--max-new-tokens", "3"]) == 0


def test_on_nan_skip_drops_bad_batches_then_gives_up(corpus, tmp_path):
    out = tmp_path / "run"
    assert main(_args(corpus, out, "--steps", "200", "--lr", "1e3", "--on-nan", "skip")) == 3
    s = json.loads((out / "summary.json").read_text())
    assert s["skipped_batches"] >= 20 and s["ended"] == "diverged"
    _loadable(out)


def test_fp16_trains_with_loss_scaling(corpus, tmp_path):
    out = tmp_path / "run"
    assert main(_args(corpus, out, "--precision", "fp16")) == 0
    state = json.loads((out / (out / "latest").read_text() / "state.json").read_text())
    assert state["scaler"]["scale"] > 1  # a GradScaler ran (its scale starts at 65536)
    assert main(_args(corpus, out, "--precision", "fp16", "--steps", "5", "--resume")) == 0


# ---- signals and kills ----------------------------------------------------------------------------

@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_a_checkpoint_and_exits_non_zero(corpus, tmp_path, sig, code):
    out = tmp_path / "run"
    proc = _spawn(_args(corpus, out, "--steps", "100000"),
                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_training(proc, out, 3)
    proc.send_signal(sig)
    time.sleep(0.05)
    proc.send_signal(sig)  # a second signal during the save must not corrupt it
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, text
    assert "checkpoint saved" in text
    step = _loadable(out)
    assert step >= 3
    assert json.loads((out / "summary.json").read_text())["ended"] == signal.Signals(sig).name
    assert main(_args(corpus, out, "--steps", str(step + 2), "--resume")) == 0
    assert _latest_step(out) == step + 2


@pytest.mark.parametrize("workers", ["0", "2"])  # forked loader workers must not keep the run's lock alive
def test_kill_minus_nine_leaves_a_loadable_latest(corpus, tmp_path, workers):
    out = tmp_path / "run"
    proc = _spawn(_args(corpus, out, "--steps", "100000", "--checkpoint-every", "2", "--loader-workers", workers))
    _wait_for_training(proc, out, 8)
    proc.kill()
    proc.wait(timeout=60)
    step = _loadable(out)
    assert step >= 2
    assert main(_args(corpus, out, "--steps", str(step + 3), "--resume")) == 0
    assert _steps(out)[-3:] == [step + 1, step + 2, step + 3]
    assert len(_steps(out)) == len(set(_steps(out)))  # steps repeated after the kill are not logged twice


# ---- checkpoints ----------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncate", "empty", "garble", "delete"])
def test_a_damaged_optimizer_state_is_named_and_the_intact_checkpoint_offered(corpus, tmp_path, capsys, damage):
    out = tmp_path / "run"
    assert main(_args(corpus, out, "--steps", "4", "--checkpoint-every", "2")) == 0
    opt = out / "step-0000004" / "optimizer.pt"
    data = opt.read_bytes()
    if damage == "truncate":
        opt.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        opt.write_bytes(b"")
    elif damage == "garble":
        opt.write_bytes(data[:100] + bytes(b ^ 0x5A for b in data[100:200]) + data[200:])
    else:
        opt.unlink()
    capsys.readouterr()
    assert main(_args(corpus, out, "--steps", "6", "--resume")) == 2
    err = capsys.readouterr().err
    assert "optimizer.pt" in err and "step-0000002" in err and "Traceback" not in err
    assert main(_args(corpus, out, "--steps", "6", "--resume", str(out / "step-0000002"))) == 0
    assert _latest_step(out) == 6


def test_keep_checkpoints_prunes_old_ones(corpus, tmp_path):
    out = tmp_path / "run"
    assert main(_args(corpus, out, "--steps", "8", "--checkpoint-every", "1", "--keep-checkpoints", "2")) == 0
    assert sorted(p.name for p in out.glob("step-*")) == ["step-0000007", "step-0000008"]


def test_saving_a_step_twice_never_leaves_latest_dangling(tmp_path, monkeypatch):
    import headway.train.checkpoint as ck

    model = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path, 5, model, None, {})
    with torch.no_grad():
        model.weight.fill_(2.0)

    rmtree = ck.shutil.rmtree

    def crash(path, *a, **k):  # the process dies while deleting the replaced folder
        if str(path).endswith(".old") and Path(path).exists():
            raise KeyboardInterrupt
        return rmtree(path, *a, **k)

    monkeypatch.setattr(ck.shutil, "rmtree", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 5, model, None, {})
    monkeypatch.undo()
    fresh = torch.nn.Linear(3, 2)
    load_checkpoint(tmp_path, fresh)  # latest names a complete, verified checkpoint
    assert torch.equal(fresh.weight, model.weight)


def test_a_full_disk_is_reported_and_exits_4(corpus, tmp_path):
    """A real write failure: the child may not write files over 200 KB (RLIMIT_FSIZE), as on a
    nearly full disk; the checkpoint write fails and the run says so."""
    out = tmp_path / "run"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    proc = _spawn(_args(corpus, out, "--steps", "3", "--vocab-size", "2000", "--tokenizer", "bpe"),
                  preexec_fn=limit)
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 4, text
    assert "is full" in text and str(out) in text and "Traceback" not in text
    assert not list(out.glob(".tmp-step-*"))  # the half-written checkpoint was removed


def test_a_corrupt_checkpoint_file_is_refused_by_name(corpus, tmp_path):
    out = tmp_path / "run"
    assert main(_args(corpus, out, "--steps", "2")) == 0
    ck = out / (out / "latest").read_text()
    (ck / "tokenizer.json").write_text("{}")
    with pytest.raises(CheckpointError, match="tokenizer.json is corrupt"):
        verify(ck)


# ---- data and validation ----------------------------------------------------------------------------

def test_a_corpus_of_empty_documents_is_refused_quickly(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.jsonl").write_text("\n".join(json.dumps({"text": ""}) for _ in range(50)))
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "headway", *_args(data, tmp_path / "o")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "hold no text" in r.stderr, r.stderr
    assert time.time() - t0 < 60


def test_empty_validation_documents_do_not_crash_the_run(corpus, tmp_path):
    from headway.data.sources import is_validation

    data = tmp_path / "rows.jsonl"
    rows = [CODE if not is_validation(f"rows.jsonl:{i + 1}", 0.1) else "" for i in range(60)]
    assert "" in rows
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    out = tmp_path / "run"
    assert main(_args(data, out)) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["val"]["tokens"] == 0


def test_skipped_files_are_reported(corpus, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(corpus, data)
    (data / "latin1.py").write_bytes("caf\xe9 = 1\n".encode("latin-1"))
    (data / "blob.txt").write_bytes(bytes(range(256)))
    assert main(_args(data, tmp_path / "run")) == 0
    assert "2 file(s) skipped" in capsys.readouterr().out
    only = tmp_path / "only"
    only.mkdir()
    (only / "latin1.py").write_bytes("caf\xe9 = 1\n".encode("latin-1"))
    assert main(_args(only, tmp_path / "run2")) == 2
    assert "1 file(s) skipped" in capsys.readouterr().err


@pytest.mark.parametrize("row,what", [('"just a string"', "str"), ("42", "int"), ("null", "NoneType")])
def test_jsonl_rows_that_are_not_objects_are_named(tmp_path, capsys, row, what):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"text": "ok"}) + "\n" + row + "\n")
    assert main(_args(f, tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert f"{f}:2" in err and what in err


def test_eval_memory_follows_the_data_not_the_window(corpus, tmp_path):
    out = tmp_path / "run"
    assert main(_args(corpus, out)) == 0
    # a fresh parent process measures only its one child: the eval
    peak = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True); "
            "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    r = subprocess.run([sys.executable, "-c", peak, sys.executable, "-m", "headway", "eval", str(out), "--data",
                        str(corpus / "mod_01.py"), "--seq-len", "100000", "--batch-size", "16"],
                       capture_output=True, text=True, timeout=300)
    code, kib = map(int, r.stdout.split())
    assert code == 0, r.stderr
    assert kib / 1024 < 1500, kib / 1024  # padded to 100,000 positions it took 14.7 GB


# ---- flags ---------------------------------------------------------------------------------------

BAD_FLAGS = [
    (["--checkpoint-every", "-1"], "--checkpoint-every"), (["--eval-every", "-5"], "--eval-every"),
    (["--time-budget", "-1"], "--time-budget"), (["--warmup", "-10"], "--warmup"),
    (["--grad-clip", "nan"], "--grad-clip"), (["--z-loss", "nan"], "--z-loss"), (["--z-loss", "inf"], "--z-loss"),
    (["--lr", "inf"], "--lr"), (["--weight-decay", "nan"], "--weight-decay"), (["--tokens", "100"], "--tokens"),
    (["--objective", "clm:nan"], "objective"), (["--objective", "clm:-1,fim:1"], "objective"),
    (["--log-every", "0"], "--log-every"), (["--threads", "-1"], "--threads"),
    (["--vocab-size", "100000000000"], "--vocab-size"), (["--eval-tokens", "0"], "--eval-tokens"),
    (["--size", "huge"], "size"), (["--seq-len", "4"], "--seq-len"), (["--val-fraction", "1.5"], "--val-fraction"),
    (["--on-nan", "ignore"], "--on-nan"), (["--keep-checkpoints", "-2"], "--keep-checkpoints"),
]


@pytest.mark.parametrize("extra,match", BAD_FLAGS, ids=[" ".join(e) for e, _ in BAD_FLAGS])
def test_every_bad_flag_is_refused_before_any_work(corpus, tmp_path, capsys, extra, match):
    out = tmp_path / "run"
    assert main(_args(corpus, out, *extra)) == 2  # --steps 3 is in _args: --tokens conflicts with it
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
    assert not (out / "tokenizer.json").exists()  # refused before the tokenizer


def test_other_commands_refuse_bad_values(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(corpus, out)) == 0
    assert main(["eval", str(out), "--data", str(corpus), "--batch-size", "0"]) == 2
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": ""}) + "\n")
    assert main(["eval", str(out), "--data", str(empty)]) == 2
    assert main(["sample", str(out), "--prompt", "bad \udcff utf-8"]) == 2
    assert "--prompt" in capsys.readouterr().err


def test_a_used_output_folder_is_refused_without_resume_or_overwrite(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(corpus, out)) == 0
    capsys.readouterr()
    assert main(_args(corpus, out)) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(_args(corpus, out, "--steps", "2", "--overwrite")) == 0
    assert _steps(out) == [1, 2]  # the old run's metrics are gone, not appended to


def test_two_runs_on_one_folder_cannot_interleave(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    proc = _spawn(_args(corpus, out, "--steps", "100000"))
    try:
        _wait_for_training(proc, out)
        assert main(_args(corpus, out, "--steps", "3", "--resume")) == 2
        assert "another run" in capsys.readouterr().err
    finally:
        proc.terminate()
        proc.communicate(timeout=120)
    assert proc.returncode == 143


def test_sample_and_infill_refuse_an_mlm_model(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(corpus, out, "--objective", "mlm")) == 0
    capsys.readouterr()
    assert main(["sample", str(out)]) == 2
    assert "mlm" in capsys.readouterr().err
    assert main(["infill", str(out), "--prefix", "a", "--suffix", "b"]) == 2


def test_library_resume_takes_the_run_config_for_fields_left_at_their_defaults(corpus, tmp_path):
    from headway.train.config import TrainConfig
    from headway.train.loop import run

    out = tmp_path / "run"
    assert main(_args(corpus, out, "--steps", "2")) == 0
    s = run(TrainConfig(out=str(out), steps=4), resume=True, log=lambda *a, **k: None)
    assert s.exit_code == 0 and s.steps == 4
    assert json.loads((out / "config.json").read_text())["seq_len"] == 64  # the run's, not the default 256


def test_a_time_budget_ends_on_time_even_with_evaluations_in_it(corpus, tmp_path):
    """The clock decides: a step starts only if it is expected to end within the budget, and the
    learning rate decays with the fraction of the budget spent. So slow evaluations (or a machine
    that slows down) shorten the run instead of overrunning it, and the decay never jumps back up."""
    out = tmp_path / "run"
    args = [a for a in _args(corpus, out) if a not in ("--steps", "3")]
    assert main([*args, "--time-budget", "6", "--eval-every", "40", "--eval-tokens", "3000", "--lr", "0.01",
                 "--min-lr-ratio", "0.1", "--log-every", "7"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert 5.0 < s["train_seconds"] <= 6.0 + 1.0, s["train_seconds"]  # a slow step or an evaluation of slack
    assert s["steps"] > 50
    rows = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "lr" in r]
    assert rows[-1]["step"] == s["steps"], "the last step is logged, whatever --log-every"
    lrs = [r["lr"] for r in rows]  # every 7th step: after the 2 warmup steps
    assert all(b <= a for a, b in zip(lrs, lrs[1:])), "the learning rate went back up"
    assert lrs[0] > 0.008 and lrs[-1] < 0.01 * 0.25, (lrs[0], lrs[-1])  # from the peak down to near the floor
    assert min(lrs) >= 0.01 * 0.1 - 1e-12
    # the decay follows the clock: each step's rate is the cosine at the budget fraction spent before it
    for r in rows[1:]:
        p = r["elapsed"] / 6.0  # measured after the step: at least the decay's fraction when the step began
        assert r["lr"] >= 0.01 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))) - 1e-9


def test_a_time_budget_run_resumes_into_what_is_left_of_its_budget(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    args = [a for a in _args(corpus, out) if a not in ("--steps", "3")]
    assert main([*args, "--time-budget", "2"]) == 0
    first = json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    assert main([*args, "--time-budget", "2", "--resume"]) == 2  # spent: refused, named, before any work
    err = capsys.readouterr().err
    assert "nothing to train" in err and "--time-budget" in err
    assert main([*args, "--time-budget", "4", "--resume"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] > first["steps"]
    assert _steps(out)[: first["steps"]] == list(range(1, first["steps"] + 1))
    state_file = out / (out / "latest").read_text().strip() / "state.json"
    state = json.loads(state_file.read_text())
    assert 3.0 < state["train_seconds"] <= 4.0 + 1.0, state  # both parts' seconds together: the budget, not 2 + 4
    # a checkpoint without the step time (an older version's) is judged by its mean step time, an upper
    # bound: seconds spent T with 4 - T = half the mean step T/n leave no room for a mean step, whatever
    # this machine's speed, though a recorded step time of a quarter of that room would fit
    n = state["step"]
    spent = 4.0 / (1.0 + 0.5 / n)
    older = {k: v for k, v in state.items() if k != "step_seconds"} | {"train_seconds": spent}
    state_file.write_text(json.dumps(older))
    capsys.readouterr()
    assert main([*args, "--time-budget", "4", "--resume"]) == 2
    assert "nothing to train" in capsys.readouterr().err
    state_file.write_text(json.dumps(older | {"step_seconds": (4.0 - spent) / 4}))
    assert main([*args, "--time-budget", "4", "--resume"]) == 0

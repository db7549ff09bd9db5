"""`--size auto`: the rule D >= r·N over the ladder, the measured path under a time budget, the
choice written into config.json and the summary, kept on resume, and a run's numbers independent
of the choosing (the global RNG is untouched)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from headway.cli import main
from headway.models import build_model
from headway.train import autosize
from headway.train.autosize import LADDER, TOKENS_PER_PARAM, choose_size
from headway.train.optim import make_optimizer
from headway.types import Vocab
from tests.support import train_args

VOCAB = Vocab(base_size=300)


def _params(size: str) -> int:
    return sum(p.numel() for p in build_model(VOCAB, "transformer", size).parameters())


def _build(size: str):  # noqa: ANN202
    model = build_model(VOCAB, "transformer", size)
    return model, make_optimizer(model)


@pytest.mark.parametrize("rung", [0, 1, 2])
def test_a_token_budget_chooses_the_largest_size_with_enough_tokens_per_parameter(rung):
    n = [_params(s) for s in LADDER[: rung + 2]]
    assert n == sorted(n)
    # a budget between what this rung and the next one need: exactly this rung is chosen
    need = TOKENS_PER_PARAM * (n[rung] + n[rung + 1]) / 2
    cfg = SimpleNamespace(steps=None, tokens=int(need), batch_size=4, seq_len=64, grad_accum=1, time_budget=None)
    choice = choose_size(cfg, _build, lambda: pytest.fail("a token budget measures nothing"), None, log=lambda *_: 0)
    assert choice.size == LADDER[rung]
    assert "tokens/parameter" in choice.reason


def test_a_budget_too_small_for_any_size_takes_the_smallest():
    cfg = SimpleNamespace(steps=3, tokens=None, batch_size=2, seq_len=64, grad_accum=1, time_budget=None)
    choice = choose_size(cfg, _build, lambda: [], None, log=lambda *_: 0)
    assert choice.size == LADDER[0] and "the smallest size" in choice.reason


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_a_timed_run_measures_writes_its_choice_and_keeps_it_on_resume(corpus, tmp_path, capsys, monkeypatch):
    # one token per parameter within 5 s: the measuring decides (a 2-core CPU: the smallest rungs)
    monkeypatch.setattr(autosize, "TOKENS_PER_PARAM", 1.0)
    out = tmp_path / "run"
    args = [a for a in train_args(corpus, out, "--checkpoint-every", "4") if a not in ("--steps", "3")]
    size_at = args.index("--size")
    args[size_at + 1] = "auto"
    assert main([*args, "--time-budget", "5"]) == 0
    log = capsys.readouterr()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["size"] in LADDER
    assert f"--size auto: {cfg['size']} (" in log.out + log.err
    assert "tokens/s" in log.out + log.err  # measured, not assumed
    assert cfg["precision"] in ("fp32", "bf16")  # resolved and written
    chosen = _summary(out)["chosen"]
    assert chosen["size"].startswith(f"{cfg['size']} (auto: ")
    assert "--size" in log.out
    assert main([*args, "--time-budget", "7", "--resume"]) == 0
    log = capsys.readouterr()
    assert "tokens/s" not in "".join(x for x in (log.out + log.err).splitlines() if x.startswith("--size auto"))
    assert json.loads((out / "config.json").read_text())["size"] == cfg["size"]
    assert _summary(out)["chosen"]["size"] == f"{cfg['size']} (the resumed run's)"


def test_choosing_leaves_the_run_as_if_the_size_had_been_given(corpus, tmp_path):
    base = train_args(corpus, tmp_path / "x", "--steps", "4")
    runs = {}
    for size in ("auto", LADDER[0]):
        out = tmp_path / size
        args = list(base)
        args[args.index("--out") + 1] = str(out)
        args[args.index("--size") + 1] = size
        assert main(args) == 0
        runs[size] = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["size"] == LADDER[0]
    assert [(r["loss"], r["grad_norm"]) for r in runs["auto"]] == [(r["loss"], r["grad_norm"]) for r in runs[LADDER[0]]]


def test_an_architecture_file_fixes_the_size(tmp_path):
    from headway.train.autosize import resolve_auto
    from headway.train.config import TrainConfig

    cfg = TrainConfig(backbone=f"hf:{tmp_path}/config.json", size="auto", precision="fp32")
    import torch

    chosen = resolve_auto(cfg, None, None, torch.device("cpu"), log=lambda *_: 0)
    assert cfg.size == "64x3" and "--size is not read" in chosen["size"] and chosen["precision"].startswith("fp32")


def test_several_processes_count_every_process_tokens():
    n = [_params(s) for s in LADDER[:3]]
    # one process's steps give rung 0 enough tokens; two processes' give rung 1 enough
    per_step = 4 * 64
    steps = int(TOKENS_PER_PARAM * n[1] / (2 * per_step)) + 1
    cfg = SimpleNamespace(steps=steps, tokens=None, batch_size=4, seq_len=64, grad_accum=1, time_budget=None)
    assert TOKENS_PER_PARAM * n[1] > steps * per_step >= TOKENS_PER_PARAM * n[0]
    assert steps * per_step * 2 < TOKENS_PER_PARAM * n[2]  # two processes' tokens are not enough for rung 2
    one = choose_size(cfg, _build, lambda: [], None, log=lambda *_: 0)
    two = choose_size(cfg, _build, lambda: [], None, log=lambda *_: 0, world=2)
    assert (one.size, two.size) == (LADDER[0], LADDER[1])


def test_measuring_leaves_the_random_state_as_it_was():
    import numpy as np
    import torch

    from headway.data.collate import collate
    from headway.objectives import build_objective

    objective = build_objective("clm", VOCAB)
    rng = np.random.default_rng(0)
    rows = [[objective(rng.integers(0, 300, 40), rng)] for _ in range(4)]
    batch = collate(rows, 48, VOCAB.pad)
    cfg = SimpleNamespace(steps=None, tokens=None, batch_size=4, seq_len=48, grad_accum=1, time_budget=1.0)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    choice = choose_size(cfg, _build, lambda: [batch] * (autosize.WARMUP_STEPS + autosize.TIMED_STEPS),
                         contextlib.nullcontext(), log=lambda *_: 0)
    assert choice.size == LADDER[0] and "tokens/s" in choice.reason  # measured, then too few tokens
    assert torch.equal(before, torch.get_rng_state())


def _ballast(mib: int):  # noqa: ANN202
    import torch

    return torch.ones(mib * 2**18)  # touched: resident


def test_memory_already_held_by_a_long_lived_process_does_not_shrink_the_choice(monkeypatch):
    import gc

    # a notebook or test process: gigabytes held now, and a larger peak earlier; every size has tokens enough
    monkeypatch.setattr(autosize, "TOKENS_PER_PARAM", 0.0)
    monkeypatch.setattr(autosize, "LADDER", LADDER[:3])
    restarts = autosize.restart_peak_rss()  # False where /proc/self/clear_refs cannot be written
    earlier = _ballast(1536)
    del earlier
    gc.collect()
    held = _ballast(1024)
    assert autosize.rss_mib() > autosize.RSS_BUDGET_MIB * 2 / 3  # the whole process is past the limit
    peak = autosize.peak_rss_mib(since_restart=False)
    assert peak >= 1536
    cfg = SimpleNamespace(steps=None, tokens=None, batch_size=2, seq_len=32, grad_accum=1, time_budget=600.0)
    choice = choose_size(cfg, _build, lambda: [_batch(2, 32)] * (autosize.WARMUP_STEPS + autosize.TIMED_STEPS),
                         contextlib.nullcontext(), log=lambda *_: 0)
    if restarts:
        assert choice.size == LADDER[2], choice.reason
    else:  # the earlier peak cannot be forgotten: judged by it, so the choice can only be smaller
        assert choice.size == LADDER[0] and "memory" in choice.reason, choice.reason
    assert autosize.peak_rss_mib(since_restart=False) >= peak  # a run's summary still reports the process's peak
    del held


def test_a_size_whose_measuring_needs_too_much_memory_is_not_taken(monkeypatch):
    monkeypatch.setattr(autosize, "TOKENS_PER_PARAM", 0.0)
    # the limit: 200 MiB above what a fresh process would hold here; rung 1 holds 400 MiB more than rung 0
    start = min(autosize.rss_mib(), autosize.FRESH_START_MIB)
    monkeypatch.setattr(autosize, "RSS_BUDGET_MIB", (start + 200) * 1.5)

    def build(size: str):  # noqa: ANN202
        model, opt = _build(size)
        if size != LADDER[0]:
            model.ballast = _ballast(400)
        return model, opt

    cfg = SimpleNamespace(steps=None, tokens=None, batch_size=2, seq_len=32, grad_accum=1, time_budget=600.0)
    choice = choose_size(cfg, build, lambda: [_batch(2, 32)] * (autosize.WARMUP_STEPS + autosize.TIMED_STEPS),
                         contextlib.nullcontext(), log=lambda *_: 0)
    assert choice.size == LADDER[0] and "memory" in choice.reason, choice.reason


def _batch(rows: int, seq: int):  # noqa: ANN202
    import numpy as np

    from headway.data.collate import collate
    from headway.objectives import build_objective

    objective = build_objective("clm", VOCAB)
    rng = np.random.default_rng(0)
    return collate([[objective(rng.integers(0, 300, seq - 8), rng)] for _ in range(rows)], seq, VOCAB.pad)


def test_the_library_run_leaves_the_callers_config_as_given(corpus, tmp_path):
    from headway.train import run
    from headway.train.config import TrainConfig

    cfg = TrainConfig(data=[str(corpus)], out=str(tmp_path / "run"), tokenizer="bytes", size="auto", precision="auto",
                      seq_len=64, batch_size=2, steps=2, warmup=1, val_fraction=0.1, threads=1, infill_lines=0)
    before = json.dumps(cfg.__dict__, sort_keys=True, default=str)
    run(cfg, log=lambda *_: 0)
    assert json.dumps(cfg.__dict__, sort_keys=True, default=str) == before
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["size"] in LADDER and saved["precision"] in ("fp32", "bf16")

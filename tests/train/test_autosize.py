"""`--size auto`: the rule D >= r·N over the ladder, the measured path under a time budget, the
choice written into config.json and the summary, kept on resume, and a run's numbers independent
of the choosing (the global RNG is untouched)."""

from __future__ import annotations

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
    # one token per parameter within 20 s: the measuring decides (a 2-core CPU: the smallest rungs)
    monkeypatch.setattr(autosize, "TOKENS_PER_PARAM", 1.0)
    out = tmp_path / "run"
    args = [a for a in train_args(corpus, out, "--checkpoint-every", "4") if a not in ("--steps", "3")]
    size_at = args.index("--size")
    args[size_at + 1] = "auto"
    assert main([*args, "--time-budget", "20"]) == 0
    log = capsys.readouterr()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["size"] in LADDER
    assert f"--size auto: {cfg['size']} (" in log.out + log.err
    assert "tokens/s" in log.out + log.err  # measured, not assumed
    assert cfg["precision"] in ("fp32", "bf16")  # resolved and written
    chosen = _summary(out)["chosen"]
    assert chosen["size"].startswith(f"{cfg['size']} (auto: ")
    assert "--size" in log.out
    assert main([*args, "--time-budget", "25", "--resume"]) == 0
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

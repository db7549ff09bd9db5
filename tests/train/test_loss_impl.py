"""`headway train --loss-impl`: the run's head computes its loss with the backend asked for, the
choice is recorded and rebuilt by `load_run`, and the backends give the same losses."""

import json

import pytest

import headway.loss.api as api
from headway.cli import main
from headway.loss import LossOptions
from headway.loss.reference import reference_token_losses
from tests.support import run_losses, train_args


def test_loss_impl_reaches_the_head_and_reference_equals_chunked(corpus, tmp_path, monkeypatch):
    calls: list[int] = []

    def counting(a):  # noqa: ANN001, ANN202
        calls.append(a.hidden.shape[0])
        return reference_token_losses(a)

    monkeypatch.setattr(api, "reference_token_losses", counting)
    losses = {}
    for impl in ("reference", "chunked"):
        out = tmp_path / impl
        flags = ("--loss-impl", impl, "--z-loss", "1e-3", "--precision", "fp32", "--final-eval-tokens", "2000")
        before = len(calls)
        assert main(train_args(corpus, out, *flags)) == 0
        assert (len(calls) > before) == (impl == "reference")  # only the reference run went through the oracle
        assert json.loads((out / "config.json").read_text())["loss_impl"] == impl
        from headway.train.runs import load_run

        model = load_run(out)[0]
        assert model.head.loss_options == LossOptions(z_loss=1e-3, impl=impl)
        losses[impl] = run_losses(out)
    assert len(losses["reference"]) == 3
    # the same three steps: the two backends differ by float32 rounding only
    assert losses["reference"] == pytest.approx(losses["chunked"], rel=1e-5, abs=1e-6)
    # a resumed run may change the backend: the rebuilt head takes the new one
    out = tmp_path / "reference"
    before = len(calls)
    flags = ("--steps", "4", "--loss-impl", "chunked", "--precision", "fp32", "--final-eval-tokens", "2000")
    assert main(train_args(corpus, out, *flags, "--resume")) == 0
    assert len(calls) == before and json.loads((out / "config.json").read_text())["loss_impl"] == "chunked"
    assert len(run_losses(out)) == 4

"""The speedrun recipe's parts: ReLU², QK-norm and zero-initialized projections keep the
transformer causal; zero-init blocks start as the identity; Muon + AdamW behind one optimizer
that checkpoints and resumes exactly; bad combinations are refused by flag."""

import json

import pytest
import torch

from headway.check import check_causal
from headway.cli import main
from headway.models import build_model
from headway.train.optim import Combined, make_optimizer
from headway.types import Vocab
from tests.support import train_args


@pytest.mark.parametrize("kw", [{"activation": "relu2"}, {"qk_norm": True}, {"zero_init": True},
                                {"activation": "relu2", "qk_norm": True, "zero_init": True}])
def test_recipe_variants_stay_causal(kw):
    model = build_model(Vocab(97), "transformer", "32x2", **kw)
    if kw.get("zero_init"):  # a zero-init model has no dependence at all yet: give it some
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.05)
    assert check_causal(model, lengths=(9, 16)).ok


def test_zero_init_blocks_start_as_the_identity():
    model = build_model(Vocab(97), "transformer", "32x2", zero_init=True)
    x = torch.randn(2, 7, 32)
    assert torch.allclose(model.backbone(x), model.backbone.norm(x))
    assert not torch.allclose(build_model(Vocab(97), "transformer", "32x2").backbone(x), model.backbone.norm(x))


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = build_model(Vocab(97), "transformer", "32x2")
    opt = make_optimizer(model, "muon", 1e-3, 0.1)
    assert isinstance(opt, Combined)
    muon = {id(p) for g in opt.parts["muon"].param_groups for p in g["params"]}
    adamw = {id(p) for g in opt.parts["adamw"].param_groups for p in g["params"]}
    assert muon == {id(p) for p in model.backbone.parameters() if p.dim() == 2}
    assert muon.isdisjoint(adamw) and muon | adamw == {id(p) for p in model.parameters()}
    loss = model.embedding(torch.randint(0, 97, (2, 5))).pow(2).sum() + sum(
        p.sum() for p in model.backbone.parameters())
    loss.backward()
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()) if p.grad is not None)
    sd = opt.state_dict()
    again = make_optimizer(model, "muon", 1e-3, 0.1)
    again.load_state_dict(sd)
    assert set(again.state_dict()) == {"adamw", "muon"}
    with pytest.raises(ValueError, match="this run uses"):
        make_optimizer(model, "muon", 1e-3, 0.1).load_state_dict({"adamw": sd["adamw"]})


def test_muon_run_resumes_to_the_identical_losses(corpus, tmp_path):
    out = tmp_path / "run"
    args = ["--steps", "6", "--checkpoint-every", "3", "--optimizer", "muon", "--activation", "relu2", "--qk-norm",
            "--zero-init", "--log-every", "1"]
    assert main(train_args(corpus, out, *args)) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    straight = [r["loss"] for r in rows if "loss" in r]
    (out / "latest").write_text("step-0000003")
    (out / "metrics.jsonl").write_text("")
    assert main(train_args(corpus, out, "--steps", "6", "--resume")) == 0
    resumed = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert resumed == pytest.approx(straight[3:], rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("extra, flag", [
    (["--optimizer", "sgd"], "--optimizer"),
    (["--optimizer", "muon", "--parallel", "fsdp"], "--optimizer"),
    (["--activation", "swish"], "--activation"),
])
def test_bad_recipe_flags_are_refused_by_name(corpus, tmp_path, capsys, extra, flag):
    assert main(train_args(corpus, tmp_path / "x", *extra)) == 2
    assert flag in capsys.readouterr().err

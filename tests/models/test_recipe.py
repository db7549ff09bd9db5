"""The speedrun recipe's parts: ReLU², QK-norm and zero-initialized projections keep the
transformer causal; zero-init blocks start as the identity; Muon + AdamW behind one optimizer
that checkpoints and resumes exactly; bad combinations are refused by flag."""

import json

import pytest
import torch

from headway.check import check_causal
from headway.cli import main
from headway.models import build_model
from headway.train.optim import Combined, Muon, make_optimizer, newton_schulz
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
    plain = build_model(Vocab(97), "transformer", "32x2", zero_init=False)
    assert not torch.allclose(plain.backbone(x), model.backbone.norm(x))


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
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()) if p.grad is not None and p.grad.any())
    sd = opt.state_dict()
    again = make_optimizer(model, "muon", 1e-3, 0.1)
    again.load_state_dict(sd)
    assert set(again.state_dict()) == {"adamw", "muon"}
    with pytest.raises(ValueError, match="this run uses"):
        make_optimizer(model, "muon", 1e-3, 0.1).load_state_dict({"adamw": sd["adamw"]})


def _muon_steps(cls, shapes, steps=4, **kw):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64)) for s in shapes]
    opt = cls(params, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw", **kw)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
        opt.step()
    return params, opt


SHAPES = [(7, 13), (13, 7), (5, 5), (1, 9)]  # wide, tall, square, a single row


def test_muon_in_bfloat16_takes_exactly_torchs_steps():
    ours, opt = _muon_steps(Muon, SHAPES, ns_dtype=torch.bfloat16)
    theirs, ref = _muon_steps(torch.optim.Muon, SHAPES)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    for a, b in zip(ours, theirs):  # same state, so checkpoints move between the two
        assert torch.equal(opt.state[a]["momentum_buffer"], ref.state[b]["momentum_buffer"])


def test_muon_in_float32_follows_a_float64_iteration_closer_than_bfloat16():
    f64, _ = _muon_steps(Muon, SHAPES, ns_dtype=torch.float64)
    f32, _ = _muon_steps(Muon, SHAPES, ns_dtype=torch.float32)
    bf16, _ = _muon_steps(Muon, SHAPES, ns_dtype=torch.bfloat16)
    for a, b, c in zip(f64, f32, bf16):
        assert (a - b).abs().max() < 1e-5 < (a - c).abs().max()
    assert Muon([torch.nn.Parameter(torch.ones(2, 2))]).ns_dtype is None  # None: float32 on CPU at step time


@pytest.mark.parametrize("shape", [(8, 40), (40, 8), (16, 16)])
def test_newton_schulz_orthogonalizes(shape):
    """NS(G) ~ U S' V^T with S' within the quintic's band (about 0.7..1.2), whatever G's scale."""
    u, _, v = torch.linalg.svd(torch.randn(*shape, dtype=torch.float64), full_matrices=False)
    g = u @ torch.diag(torch.logspace(-1, 1, min(shape), dtype=torch.float64)) @ v  # condition number 100
    x = newton_schulz(1e3 * g, (3.4445, -4.7750, 2.0315), 5, 1e-7, torch.float64)
    s = torch.linalg.svdvals(x)
    assert x.shape == g.shape and s.min() > 0.6 and s.max() < 1.3
    assert torch.allclose(u.T @ x @ v.T, torch.diag((u.T @ x @ v.T).diagonal()), atol=1e-6)  # G's singular vectors


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

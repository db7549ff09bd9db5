"""The embedding's learning-rate scale and weight decay: the token embedding and LM head step at
lr × scale under any schedule that sets every group's "lr", exactly as torch's AdamW at that rate,
with their own weight decay; the hidden matrices and norms are untouched; a run saved before these
existed resumes with the rate and decay it began with; bad values are refused naming the flag."""

import json

import pytest
import torch

import headway as hw
from headway.models import build_model
from headway.train.config import TrainConfig
from headway.train.optim import AdamW, Combined, make_optimizer
from headway.types import Vocab


def _params(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(7, 5, generator=g, dtype=torch.float64).requires_grad_(),
            torch.randn(5, generator=g, dtype=torch.float64).requires_grad_()]


@pytest.mark.parametrize("scale", [1.0, 0.5, 10.0])
def test_scaled_group_steps_as_torch_adamw_at_the_scaled_rate(scale):
    ours, ref = _params(0), _params(0)
    opt = AdamW([{"params": ours[:1], "lr_scale": scale, "weight_decay": 0.1},
                 {"params": ours[1:], "weight_decay": 0.0}], lr=1e-2, betas=(0.9, 0.95))
    torch_opt = torch.optim.AdamW([{"params": ref[:1], "weight_decay": 0.1},
                                   {"params": ref[1:], "weight_decay": 0.0}], lr=1e-2, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        lr = 1e-2 * (step + 1) / 6  # a schedule that sets every group's rate to one value
        for group in opt.param_groups:
            group["lr"] = lr
        torch_opt.param_groups[0]["lr"], torch_opt.param_groups[1]["lr"] = lr * scale, lr
        grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in ours]
        for p, q, gr in zip(ours, ref, grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        opt.step()
        torch_opt.step()
        assert [gr["lr"] for gr in opt.param_groups] == [lr, lr]  # the schedule's value reads back
    for p, q in zip(ours, ref):
        assert torch.equal(p, q)


@pytest.mark.parametrize("kind", ["muon", "adamw"])
def test_embedding_and_head_take_the_scale_and_nothing_else(kind):
    model = build_model(Vocab(61), "transformer", "32x2")
    opt = make_optimizer(model, kind, 1e-3, 0.1, embedding_lr_scale=7.0, embedding_weight_decay=0.03)
    adamw = opt.parts["adamw"] if isinstance(opt, Combined) else opt
    outer = {id(p) for m in (model.embedding, model.head) for p in m.parameters() if p.dim() == 2}
    inside = {id(p) for p in model.backbone.parameters()}
    for group in adamw.param_groups:
        ids = {id(p) for p in group["params"]}
        if group.get("lr_scale", 1.0) != 1.0:
            assert group["lr_scale"] == 7.0 and ids == outer and group["weight_decay"] == 0.03
        else:
            assert not ids & outer
            assert group["weight_decay"] == (0.1 if all(p.dim() == 2 for p in group["params"]) else 0.0)
    covered = {id(p) for g in opt.param_groups for p in g["params"]}
    assert covered == {id(p) for p in model.parameters()} and outer and not outer & inside


def test_first_step_moves_the_embedding_by_the_scaled_rate():
    """Adam's first step is lr · g / (|g| + eps) per entry: the embedding's trained entries move by
    lr × scale (after their decay), the hidden matrices by at most lr (Muon, RMS-matched)."""
    model = build_model(Vocab(61), "transformer", "32x2", zero_init=False)
    opt = make_optimizer(model, "muon", 1e-3, 0.0, embedding_lr_scale=10.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(0))
    model.logits(ids).float().logsumexp(-1).sum().backward()
    for g in opt.param_groups:
        g["lr"] = 1e-3
    opt.step()
    moved = {n: (p.detach() - before[n]).abs() for n, p in model.named_parameters()}
    emb = next(n for n in moved if n.startswith("embedding") and before[n].dim() == 2)
    assert torch.isclose(moved[emb].max(), torch.tensor(1e-2), rtol=1e-3)
    assert max(float(v.max()) for n, v in moved.items() if n.startswith("backbone")) < 1e-2 / 2


def test_the_recipe_and_the_library_default_agree():
    cfg = TrainConfig()
    assert (cfg.embedding_lr_scale, cfg.embedding_weight_decay) == (hw.RECIPE.embedding_lr_scale,
                                                                    hw.RECIPE.embedding_weight_decay)
    model = build_model(Vocab(61), "transformer", "32x2")
    scales = {g.get("lr_scale", 1.0) for g in make_optimizer(model).param_groups}
    assert scales == {1.0, hw.RECIPE.embedding_lr_scale}


def test_no_embedding_decay_given_means_the_weight_decay():
    model = build_model(Vocab(61), "transformer", "32x2")
    opt = make_optimizer(model, "muon", 1e-3, 0.07, embedding_lr_scale=3.0)
    outer = next(g for g in opt.param_groups if "lr_scale" in g)
    assert outer["weight_decay"] == 0.07 and outer["lr_scale"] == 3.0


def test_a_run_saved_before_the_scale_resumes_with_the_rate_it_began_with(tmp_path):
    raw = json.loads(json.dumps(TrainConfig(weight_decay=0.05).__dict__))  # the embedding decayed at 0.05
    del raw["embedding_lr_scale"], raw["embedding_weight_decay"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    old_cfg = TrainConfig.load(tmp_path / "config.json")
    assert (old_cfg.embedding_lr_scale, old_cfg.embedding_weight_decay) == (1.0, None)  # --weight-decay's
    # and with scale 1 the groups are laid out as before, so its optimizer state loads
    model = build_model(Vocab(61), "transformer", "32x2")
    old = torch.optim.AdamW([{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.1},
                             {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95))
    for kind in ("adamw", "muon"):
        new = make_optimizer(model, kind, 1e-3, 0.1, old_cfg.embedding_lr_scale, old_cfg.embedding_weight_decay)
        adamw = new if kind == "adamw" else new.parts["adamw"]
        assert [g["weight_decay"] for g in adamw.param_groups] == [0.1, 0.0]
        assert not any("lr_scale" in g for g in adamw.param_groups)
    make_optimizer(model, "adamw", 1e-3, 0.1).load_state_dict(old.state_dict())


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True])
def test_bad_scale_or_decay_is_refused_naming_the_flag(bad):
    model = build_model(Vocab(61), "transformer", "32x2")
    with pytest.raises(ValueError, match="--embedding-lr-scale must be"):
        TrainConfig(embedding_lr_scale=bad).check()
    with pytest.raises(ValueError, match="embedding_lr_scale must be"):
        make_optimizer(model, embedding_lr_scale=bad)
    if bad != 0:
        with pytest.raises(ValueError, match="--embedding-weight-decay must be"):
            TrainConfig(embedding_weight_decay=bad).check()
        with pytest.raises(ValueError, match="embedding_weight_decay must be"):
            make_optimizer(model, embedding_weight_decay=bad)

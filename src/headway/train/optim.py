"""The optimizer: AdamW, or Muon for the backbone's hidden matrices with AdamW for the rest; and
`lr_at`, a run's learning rate at each step (the math is `headway.recipe.lr_schedule`).

Muon (`torch.optim.Muon`, Jordan et al. 2024) orthogonalizes each 2-D update by Newton–Schulz
iterations; it is meant for hidden weight matrices only, so embeddings, the LM head, norms and
biases stay with AdamW. `adjust_lr_fn="match_rms_adamw"` scales Muon's update to AdamW's RMS, so
one learning rate (and one schedule) drives both.

`torch.optim.Muon` runs the iteration in bfloat16. A CPU without native bf16 products emulates
them: on the default run that cost 32 ms of a 216 ms step, against 2.4 ms in float32. `Muon` below
is `torch.optim.Muon` with the iteration's dtype as a choice (float32 on CPU, bfloat16 elsewhere);
in bfloat16 it takes exactly torch's steps (tested).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from headway.recipe import RECIPE, lr_schedule

if TYPE_CHECKING:
    from headway.train.config import TrainConfig

OPTIMIZERS = ("adamw", "muon")


def newton_schulz(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """Approximate U V^T of G = U S V^T (M, K) by the quintic iteration X <- aX + (bA + cA^2) X with
    A = X X^T, from X = G / |G|_F, computed in `dtype` on the wide orientation (as torch.optim.Muon)."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T  # (min, min)
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Muon):
    """`torch.optim.Muon` (same arguments, state and update) whose Newton–Schulz iteration runs in
    `ns_dtype` (None: float32 on CPU, bfloat16 elsewhere, as torch). Per matrix W (M, K), gradient G:
        B <- mu B + (1 - mu) G;  U = NS(G + mu (B - G)) if nesterov else NS(B)
        W <- W (1 - lr wd) - lr * 0.2 sqrt(max(M, K)) U      (adjust_lr_fn="match_rms_adamw")
    """

    def __init__(self, params, ns_dtype: torch.dtype | None = None, **kw: Any) -> None:  # noqa: ANN001
        super().__init__(params, **kw)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201
        if closure is not None:
            raise ValueError("Muon.step: closures are not supported")
        for group in self.param_groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            bufs: list[torch.Tensor] = []
            self._init_group(group, params, grads, bufs)
            lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
            for p, g, buf in zip(params, grads, bufs):
                buf.lerp_(g, 1 - mu)
                u = g.lerp(buf, mu) if group["nesterov"] else buf
                dtype = self.ns_dtype or (torch.float32 if p.device.type == "cpu" else torch.bfloat16)
                u = newton_schulz(u, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype)
                p.mul_(1 - lr * wd)
                p.add_(u, alpha=-lr * adjust_ratio(group["adjust_lr_fn"], p.shape))
        return None


def adjust_ratio(fn: str | None, shape: torch.Size) -> float:
    """Muon's learning-rate multiplier for a (M, K) matrix: sqrt(max(1, M/K)) ("original"/None) or
    0.2 sqrt(max(M, K)) ("match_rms_adamw")."""
    m, k = shape[:2]
    if fn is None or fn == "original":
        return math.sqrt(max(1, m / k))
    if fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(m, k))
    return 1.0


class AdamW(torch.optim.AdamW):
    """`torch.optim.AdamW` whose param groups may carry "lr_scale": such a group steps at
    lr × lr_scale (its weight decay too, lr · wd being AdamW's decoupled decay), so a schedule that
    sets every group's "lr" to one value keeps the ratio. Without "lr_scale" it is torch's AdamW."""

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201
        base = [g["lr"] for g in self.param_groups]
        for g in self.param_groups:
            g["lr"] = g["lr"] * g.get("lr_scale", 1.0)
        try:
            return super().step(closure)
        finally:
            for g, lr in zip(self.param_groups, base):
                g["lr"] = lr


class Combined(torch.optim.Optimizer):
    """Several optimizers behind one interface: their param groups (so the LR schedule, the grad
    scaler and clipping see every parameter), one step, one state dict."""

    def __init__(self, parts: dict[str, torch.optim.Optimizer]) -> None:
        self.parts = parts
        self.defaults: dict[str, Any] = {}
        self._optimizer_step_pre_hooks: dict = {}
        self._optimizer_step_post_hooks: dict = {}

    @property
    def param_groups(self) -> list[dict]:  # type: ignore[override]
        # read through every time: load_state_dict gives the parts new group dicts
        return [g for o in self.parts.values() for g in o.param_groups]

    @property
    def state(self):  # noqa: ANN201
        return {k: v for o in self.parts.values() for k, v in o.state.items()}

    def step(self, closure=None):  # noqa: ANN001, ANN201
        for o in self.parts.values():
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.parts.values():
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: o.state_dict() for name, o in self.parts.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != set(self.parts):
            raise ValueError(f"optimizer state holds {sorted(state_dict)}, this run uses {sorted(self.parts)}")
        for name, o in self.parts.items():
            o.load_state_dict(state_dict[name])


def make_optimizer(model: nn.Module, kind: str = RECIPE.optimizer, lr: float = RECIPE.lr,
                   weight_decay: float = RECIPE.weight_decay,
                   embedding_lr_scale: float = RECIPE.embedding_lr_scale,
                   embedding_weight_decay: float | None = RECIPE.embedding_weight_decay) -> torch.optim.Optimizer:
    """The optimizer of `headway.RECIPE` by default: "muon" = Muon on the backbone's 2-D weights (its
    hidden matrices, and those of the multi-token prediction modules when there are) and AdamW for
    the rest (embeddings, head, norms), behind one `Combined` optimizer that checkpoints like any other;
    "adamw" = AdamW alone. AdamW uses betas 0.9/0.95; norms and biases are not decayed. Every matrix
    outside the backbone (the token embedding and the LM head, and any other matrix a custom head
    holds) steps at lr × `embedding_lr_scale` (a group whose "lr_scale" the optimizer applies, see
    `AdamW`) with weight decay `embedding_weight_decay` (None: `weight_decay`; applied at that rate:
    lr × scale × wd); the backbone's matrices decay by `weight_decay`. `model` needs a `.backbone`
    (a `LanguageModel`). Set the learning rate of every group of `opt.param_groups` per step, e.g. to
    `RECIPE.lr_at(step, total)`: the scale stays on top of it. At 1× and the same decay (the
    defaults) AdamW's matrices are one group, as in optimizer states saved before these settings
    existed; as in torch, a loaded state's group settings win."""
    if kind not in OPTIMIZERS:
        raise ValueError(f"--optimizer must be one of {' | '.join(OPTIMIZERS)}, got {kind!r}")
    if embedding_weight_decay is None:
        embedding_weight_decay = weight_decay
    for name, value, low in (("embedding_lr_scale", embedding_lr_scale, "> 0"),
                             ("embedding_weight_decay", embedding_weight_decay, ">= 0")):
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and (value > 0 if low == "> 0" else value >= 0))
        if not ok:
            raise ValueError(f"{name} must be a number {low}, got {value!r}")
    bodies = [model.backbone] + ([model.mtp] if getattr(model, "mtp", None) is not None else [])
    inside = {id(p) for b in bodies for p in b.parameters()}
    hidden = {id(p) for b in bodies for p in b.parameters() if p.dim() == 2} if kind == "muon" else set()
    rest = [p for p in model.parameters() if id(p) not in hidden]
    matrices = [p for p in rest if p.dim() >= 2]
    outer = [p for p in matrices if id(p) not in inside]  # the embedding and the head
    inner = [p for p in matrices if id(p) in inside]  # the backbone's matrices under "adamw"
    if embedding_lr_scale == 1 and embedding_weight_decay == weight_decay:
        groups = [{"params": matrices, "weight_decay": weight_decay}]  # one group, as older checkpoints have
    else:
        groups = [g for g in ({"params": inner, "weight_decay": weight_decay},
                              {"params": outer, "weight_decay": embedding_weight_decay,
                               "lr_scale": float(embedding_lr_scale)}) if g["params"]]
    groups.append({"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0})
    adamw = AdamW(groups, lr=lr, betas=(0.9, 0.95))
    if kind == "adamw":
        return adamw
    muon = Muon([p for p in model.parameters() if id(p) in hidden], lr=lr, weight_decay=weight_decay,
                adjust_lr_fn="match_rms_adamw")
    return Combined({"adamw": adamw, "muon": muon})


def lr_at(step: int, total: int | None, cfg: TrainConfig, progress: float | None = None) -> float:
    """Linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` at `total` steps, or, under a
    time budget, as `progress` (the fraction of the budget spent) goes to 1 (`headway.recipe.lr_schedule`)."""
    return lr_schedule(step, total, cfg.lr, cfg.warmup, cfg.min_lr_ratio, progress=progress)

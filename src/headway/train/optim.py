"""The optimizer: AdamW, or Muon for the backbone's hidden matrices with AdamW for the rest.

Muon (`torch.optim.Muon`, Jordan et al. 2024) orthogonalizes each 2-D update by Newton–Schulz
iterations; it is meant for hidden weight matrices only, so embeddings, the LM head, norms and
biases stay with AdamW. `adjust_lr_fn="match_rms_adamw"` scales Muon's update to AdamW's RMS, so
one learning rate (and one schedule) drives both.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

OPTIMIZERS = ("adamw", "muon")


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


def make_optimizer(model: nn.Module, kind: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW (betas 0.9/0.95; decay on matrices only), or Muon on the backbone's 2-D weights + AdamW."""
    if kind not in OPTIMIZERS:
        raise ValueError(f"--optimizer must be one of {' | '.join(OPTIMIZERS)}, got {kind!r}")
    hidden = {id(p) for p in model.backbone.parameters() if p.dim() == 2} if kind == "muon" else set()
    rest = [p for p in model.parameters() if id(p) not in hidden]
    adamw = torch.optim.AdamW([{"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
                               {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}],
                              lr=lr, betas=(0.9, 0.95))
    if kind == "adamw":
        return adamw
    muon = torch.optim.Muon([p for p in model.parameters() if id(p) in hidden], lr=lr, weight_decay=weight_decay,
                            adjust_lr_fn="match_rms_adamw")
    return Combined({"adamw": adamw, "muon": muon})

"""The causality guard a run passes before training: a left-to-right objective on a backbone that
sees the future would teach it to copy, so such a run is refused (or, with `--allow-leak`, warned
about). The check itself is `headway.check.check_causal`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from headway.check import check_causal
from headway.models.lm import LanguageModel
from headway.train.config import TrainConfig
from headway.types import Objective


def guard_causality(model: LanguageModel, cfg: TrainConfig, log: Callable[[str], object],
                    objective: Objective | None = None) -> None:
    """Refuse to train `model` on a left-to-right objective when it is not causal (a ValueError),
    or log a warning with `cfg.allow_leak`; its multi-token prediction depths too (depth k may see
    the inputs up to t + k). An objective that does not train left to right passes."""
    if objective is not None and not objective.trains_left_to_right:
        return
    # zero-initialized projections make every output independent of every input at init, which no
    # detector can tell from causal: check a copy whose all-zero matrices are drawn at random instead
    probe = copy.deepcopy(model)
    with torch.no_grad():
        for p in probe.parameters():
            if p.dim() >= 2 and not bool(p.any()):
                p.normal_(0.0, 0.02)
    # both detectors, train and eval mode; across packed documents unless the run puts one per row
    rep = check_causal(probe, lengths=(16, 17), packed=cfg.packing != "single")
    what = f"the {cfg.backbone} backbone"
    depth = 0  # then each multi-token prediction depth k: its outputs may see the inputs up to t + k
    while rep.ok and probe.mtp is not None and depth < probe.mtp.num_depths:
        depth += 1
        rep = check_causal(probe, lengths=(16, 17), packed=cfg.packing != "single", mtp_depth=depth)
        what = f"multi-token prediction depth {depth} (may see the inputs up to t + {depth})"
    if not rep.ok:
        msg = (f"{what} is not causal ({rep}); a causal objective ({cfg.objective}) would "
               "teach it to copy the future. Pass --allow-leak to train anyway.")
        if not cfg.allow_leak:
            raise ValueError(msg)
        log("WARNING: " + msg)

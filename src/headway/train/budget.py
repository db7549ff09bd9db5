"""How long a run trains: a fixed step count from `--steps` or `--tokens`, or, under a time budget
(`--time-budget`, neither of the others given), until the clock says stop.

The time-budget rule: the budget is wall time of training, evaluations and checkpoints included
(the seconds of the earlier parts of a resumed run count too). Before each step, with `spent`
seconds of it gone and the warmup's steps ended `w` seconds in:

    the step runs only if spent + median seconds of the last `RECALIBRATE_EVERY` steps <= budget
                                                   (the process's first step, a warm-up, left out)
    progress = (spent - w) / (budget - w)          the learning rate's cosine decay follows it (`lr_at`)

so the cosine decay ends at the budget's end and never jumps back when the machine's speed changes
(a schedule over a step count estimated from the recent speed would: a slow minute moves it ahead,
a fast one back). Rank 0's clock decides for every rank.

The step count shown on the progress bar is an estimate: after `CALIBRATE_AT` steps, from the
median time of those after the tenth (the first ones warm up), then every `RECALIBRATE_EVERY`
steps from the recent median:

    total ≈ current step + ⌊seconds of the budget left / median seconds per step⌋
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from headway.train.config import TrainConfig

CALIBRATE_AT = 30  # with a time budget, the step count on the bar is first estimated from the speed of steps 10..30
RECALIBRATE_EVERY = 50  # ... and again every 50 steps; the stop rule's step time is the median of the last 50


def planned_steps(cfg: TrainConfig) -> int | None:
    """The step count of `--steps` or `--tokens` (rounded up to whole steps); None under a time budget."""
    per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum
    if cfg.steps is not None:
        return cfg.steps
    if cfg.tokens is not None:
        return max(1, math.ceil(cfg.tokens / per_step))
    return None


def recent_step_seconds(step_times: Sequence[float]) -> float:
    """The median of the last `RECALIBRATE_EVERY` step times of this process, its first step left out
    (it warms up: kernels chosen, memory first touched, seconds on some machines); 0 before a second step."""
    recent = step_times[1:][-RECALIBRATE_EVERY:]
    return float(np.median(recent)) if len(recent) else 0.0


def fits(spent: float, time_budget: float, per_step: float) -> bool:
    """Under a time budget, `spent` seconds in, with steps of about `per_step` seconds: whether one more
    step is expected to end within the budget (the module's rule)."""
    return spent + per_step <= time_budget


def decay_progress(spent: float, warmup_spent: float, time_budget: float) -> float:
    """The fraction of the learning-rate decay done `spent` seconds into a time budget whose warmup
    ended `warmup_spent` seconds in: (spent - warmup_spent) / (budget - warmup_spent)."""
    return (spent - warmup_spent) / max(time_budget - warmup_spent, 1e-9)


def steps_left(done: int, step_times: Sequence[float], seconds_left: float) -> tuple[int, float] | None:
    """Under a time budget, after `done` steps of this run taking `step_times` seconds each: the
    steps that still fit in `seconds_left` (an estimate, for the progress bar) and the seconds per
    step it was made from, when `done` is a (re)calibration point (the module's rule); else None."""
    if not (done == CALIBRATE_AT or (done > CALIBRATE_AT and done % RECALIBRATE_EVERY == 0)):
        return None
    per = float(np.median(step_times[-RECALIBRATE_EVERY:] if done > CALIBRATE_AT else step_times[10:]))
    return max(0, int(seconds_left / per)), per


def describe_time_budget(time_budget: float, per: float, total: int, tokens_per_step: int) -> str:
    """The line a run logs when its time budget is first turned into a step count."""
    return (f"time budget {time_budget:.0f}s at {per * 1000:.0f} ms/step: training for about {total} steps "
            f"({total * tokens_per_step / 1e6:.1f}M tokens); the learning rate decays with the clock")

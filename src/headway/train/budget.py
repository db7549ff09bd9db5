"""How many steps a run trains: a fixed count from `--steps` or `--tokens`, or, under a time budget
(`--time-budget`, neither of the others given), a count that follows the clock.

The time-budget rule: the budget is wall time of training, evaluations included, and the run's
total step count is set from the clock. After `CALIBRATE_AT` steps of this process it is first set
from the median time of those steps after the tenth (the first ones warm up); then, every
`RECALIBRATE_EVERY` steps, from the median of the last `RECALIBRATE_EVERY` steps:

    total = current step + ⌊seconds of the budget left / median seconds per step⌋   (≥ current step)

so when the machine slows down or an evaluation takes a while, the remaining steps shrink and the
run still ends on time. Every rank takes rank 0's total.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from headway.train.config import TrainConfig

CALIBRATE_AT = 30  # with a time budget, the total step count is first set from the speed of steps 10..30
RECALIBRATE_EVERY = 50  # ... and set again every 50 steps from the time left and the recent speed


def planned_steps(cfg: TrainConfig) -> int | None:
    """The step count of `--steps` or `--tokens` (rounded up to whole steps); None under a time budget."""
    per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum
    if cfg.steps is not None:
        return cfg.steps
    if cfg.tokens is not None:
        return max(1, math.ceil(cfg.tokens / per_step))
    return None


def steps_left(done: int, step_times: Sequence[float], seconds_left: float) -> tuple[int, float] | None:
    """Under a time budget, after `done` steps of this run taking `step_times` seconds each: the
    steps that still fit in `seconds_left` and the seconds per step they were estimated from, when
    `done` is a (re)calibration point (the module's rule); else None."""
    if not (done == CALIBRATE_AT or (done > CALIBRATE_AT and done % RECALIBRATE_EVERY == 0)):
        return None
    per = float(np.median(step_times[-RECALIBRATE_EVERY:] if done > CALIBRATE_AT else step_times[10:]))
    return max(0, int(seconds_left / per)), per


def describe_time_budget(time_budget: float, per: float, total: int, tokens_per_step: int) -> str:
    """The line a run logs when its time budget is first turned into a step count."""
    return (f"time budget {time_budget:.0f}s at {per * 1000:.0f} ms/step: training for about {total} steps "
            f"({total * tokens_per_step / 1e6:.1f}M tokens; re-estimated every {RECALIBRATE_EVERY} steps)")

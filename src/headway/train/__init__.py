"""Training: the run behind `headway train` as a library call, its config, the optimizer.

    from headway.train import TrainConfig, run
    summary = run(TrainConfig(steps=20, size="tiny", out="runs/try"))   # what `headway train --steps 20 ...` does

`TrainConfig()`'s defaults are `headway.RECIPE`'s. Names are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headway.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "TrainConfig": "headway.train.config", "run": "headway.train.loop", "Summary": "headway.train.loop",
    "make_optimizer": "headway.train.optim", "Muon": "headway.train.optim", "Combined": "headway.train.optim",
    "load_config_file": "headway.train.config_file", "evaluate": "headway.train.metrics",
    "EvalResult": "headway.train.metrics", "load_run": "headway.train.runs",
}
__all__ = ["TrainConfig", "run", "Summary", "make_optimizer", "Muon", "Combined", "load_config_file", "evaluate",
           "EvalResult", "load_run"]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)


if TYPE_CHECKING:
    from headway.train.config import TrainConfig
    from headway.train.config_file import load_config_file
    from headway.train.loop import Summary, run
    from headway.train.metrics import EvalResult, evaluate
    from headway.train.optim import Combined, Muon, make_optimizer
    from headway.train.runs import load_run

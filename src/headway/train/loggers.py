"""Where metrics go besides `metrics.jsonl`: TensorBoard and Weights & Biases, when installed.

Each metrics record (`{"step": ..., "loss": ..., ...}`) is sent to every backend under these names:
train/loss, train/lr, train/tokens_per_s, train/grad_norm, val/loss, val/bits_per_byte.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Any

NAMES = {"loss": "train/loss", "lr": "train/lr", "tok_per_s": "train/tokens_per_s", "grad_norm": "train/grad_norm",
         "val_loss": "val/loss", "val_bpb": "val/bits_per_byte"}
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def requested(spec: str) -> list[str]:
    return [x.strip() for x in spec.split(",") if x.strip()]


def check_installed(spec: str) -> None:
    """A clear error, before any work, when a requested backend's package is missing."""
    for name in requested(spec):
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ValueError(f"--log {name}: the `{PACKAGES[name]}` package is not installed; "
                             f"`pip install {PACKAGES[name]}` (or pip install -e '.[logging]')")


class Loggers:
    def __init__(self, spec: str, out: Path, config: Any, resumed: bool) -> None:
        self.tb = self.wandb = None
        names = requested(spec)
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(out / "tensorboard"))
        if "wandb" in names:
            import wandb

            mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "headway"), dir=str(out), mode=mode,
                                    config=dataclasses.asdict(config), resume="allow" if resumed else None,
                                    name=out.name)

    def log(self, rec: dict) -> None:
        step = rec.get("step")
        vals = {NAMES[k]: float(v) for k, v in rec.items() if k in NAMES and v is not None}
        if not vals or step is None:
            return
        if self.tb is not None:
            for k, v in vals.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(vals, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()

"""Where a run's metrics go: `metrics.jsonl` in the run's folder, TensorBoard and Weights & Biases
when installed (`--log`), and the progress bar on the terminal.

Each metrics record (`{"step": ..., "loss": ..., ...}`) is sent to every backend under these names:
train/loss, train/lr, train/tokens_per_s, train/grad_norm, val/loss, val/bits_per_byte.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path
from typing import IO, Any

from headway.train.checkpoint import DiskFullError, disk_full_message
from headway.train.outdir import trim_metrics

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


class MetricsLog:
    """A run's metrics records: each one a line of `metrics.jsonl` (flushed at once; a full disk
    raises DiskFullError) and a point for every `--log` backend. Rank 0 opens one (`open`); the
    other ranks' `MetricsLog()` drops what it is given."""

    def __init__(self, file: IO[str] | None = None, loggers: Loggers | None = None, out: Path = Path()) -> None:
        self.file, self.loggers, self.out = file, loggers, out

    @classmethod
    def open(cls, out: Path, spec: str, config: Any, start_step: int, resumed_from: Path | None = None,
             changed: dict | None = None) -> MetricsLog:
        """Append to `out/metrics.jsonl`, cut back to the records of steps <= `start_step` (a resumed
        run repeats the steps after its checkpoint), and start the backends of `spec`. A resumed run's
        first record names its checkpoint and the flags that `changed`."""
        trim_metrics(out / "metrics.jsonl", start_step)
        file = (out / "metrics.jsonl").open("a")
        log = cls(file, Loggers(spec, out, config, resumed_from is not None), out)
        if resumed_from is not None:
            log.write({"step": start_step, "resumed_from": str(resumed_from), "changed": changed})
        return log

    def write(self, rec: dict) -> None:
        if self.loggers is not None:
            self.loggers.log(rec)
        if self.file is not None:
            try:
                self.file.write(json.dumps(rec) + "\n")
                self.file.flush()
            except OSError as e:
                raise DiskFullError(disk_full_message(e, self.out) or f"cannot write {self.out / 'metrics.jsonl'}: "
                                    f"{e.strerror or e}") from None

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass  # a full disk: already reported
        if self.loggers is not None:
            self.loggers.close()


def quiet(*_a: object, **_k: object) -> None:
    """The log of the ranks other than 0: one process logs."""


class Progress:
    """The progress bar of optimizer steps on the terminal (tqdm), with the loss, tokens per second
    and MFU; nothing when `show` is false (the ranks other than 0) or tqdm is not installed."""

    def __init__(self, total: int | None, initial: int, show: bool = True) -> None:
        self.bar: Any = None
        if not show:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=1.0)

    def set_total(self, total: int) -> None:
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def step(self, loss: float, tokens: int, seconds: float, flops_per_token: float, matmul_peak: float) -> None:
        """One optimizer step that took `seconds` over `tokens` tokens (all ranks together)."""
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens / seconds:.0f}",
                                 mfu=f"{tokens / seconds * flops_per_token / matmul_peak:.0%}")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

"""What a run did: `Summary`, returned by `headway.train.run` and written to `summary.json` (with
the loss curve, `loss.png`) in the run's folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Summary:
    """What a run did, returned by `run` and written to `summary.json`: steps, tokens, times,
    throughput and MFU, peak memory, losses, validation and infilling results, how it ended."""

    steps: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    final_loss: float = float("nan")
    val: dict = field(default_factory=dict)
    val_elbo: dict = field(default_factory=dict)  # masked diffusion: the ELBO's bits per byte, an upper bound
    compressors: dict = field(default_factory=dict)
    peak_rss_mib: float = 0.0
    params: int = 0
    infill: dict = field(default_factory=dict)
    infill_eval: dict = field(default_factory=dict)
    ended: str = "done"  # done | SIGINT | SIGTERM | diverged | disk full
    message: str = ""
    exit_code: int = 0
    skipped_batches: int = 0
    flops_per_token: float = 0.0  # 6·N + 12·L·H·S (train/flops.py)
    matmul_peak: float = 0.0  # FLOP/s of this machine's square products in the run's precision, measured
    chosen: dict = field(default_factory=dict)  # {flag: "value (reason)"}: what --size/--precision auto chose

    @property
    def mfu(self) -> float:
        """Model FLOPs utilization: useful FLOP/s over the measured matmul peak."""
        return self.tokens_per_second * self.flops_per_token / self.matmul_peak if self.matmul_peak else 0.0

    @property
    def interrupted(self) -> bool:
        return self.ended in ("SIGINT", "SIGTERM")

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds else 0.0

    def write(self, out: Path, log: Callable[[str], object]) -> None:
        """`summary.json` and `loss.png` (from `metrics.jsonl`) in the run's folder `out`; what cannot
        be written is logged, not raised."""
        try:
            (out / "summary.json").write_text(json.dumps({**self.__dict__, "tokens_per_second": self.tokens_per_second,
                                                          "mfu": self.mfu},
                                                         indent=2, default=str))
            from headway.train.plots import plot_metrics

            plot_metrics(out / "metrics.jsonl", out / "loss.png")
        except ImportError:
            log("matplotlib is not installed: no loss.png")
        except OSError as e:
            log(f"could not write summary.json / loss.png in {out}: {e.strerror or e}")

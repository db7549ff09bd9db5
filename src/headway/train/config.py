"""Training configuration: one dataclass, saved as JSON beside every checkpoint."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrainConfig:
    objective: str = "clm:0.5,fim:0.5"
    backbone: str = "transformer"
    size: str = "tiny"
    seq_len: int = 256
    batch_size: int = 16
    grad_accum: int = 1
    steps: int | None = None
    tokens: int | None = None
    time_budget: float | None = 460.0  # seconds of training; the default run's main knob
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    z_loss: float = 0.0
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    out: str = "runs/default"
    data: list[str] = field(default_factory=list)
    text_field: str = "text"
    val_fraction: float = 0.05
    tokenizer: str = "bpe"
    vocab_size: int = 8192
    packing: str = "bfd"
    eval_every: int = 1000  # steps; 0: only at the end
    eval_stride: int = 0  # sliding-window validation stride; 0: seq_len // 2
    eval_tokens: int | None = 65536  # cap on validation tokens for periodic evals (final eval uses all)
    checkpoint_every: int = 0
    log_every: int = 10
    threads: int = 0  # torch intra-op threads; 0: all cores
    allow_leak: bool = False
    compile: bool = False
    parallel: str = "ddp"  # under torchrun: ddp | fsdp
    tensor_parallel_head: bool = False

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        raw = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def check(self) -> None:
        """Clear errors for values no run can use."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        need(self.seq_len >= 8, f"--seq-len must be >= 8, got {self.seq_len}")
        need(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        need(self.grad_accum >= 1, f"--grad-accum must be >= 1, got {self.grad_accum}")
        need(self.steps is None or self.steps >= 1, f"--steps must be >= 1, got {self.steps}")
        need(self.tokens is None or self.tokens >= 1, f"--tokens must be >= 1, got {self.tokens}")
        need(self.lr > 0, f"--lr must be > 0, got {self.lr}")
        need(0 <= self.min_lr_ratio <= 1, f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}")
        need(self.precision in ("auto", "fp32", "bf16", "fp16"),
             f"--precision must be auto|fp32|bf16|fp16, got {self.precision}")
        need(self.device in ("auto", "cpu", "cuda"), f"--device must be auto|cpu|cuda, got {self.device}")
        need(self.tokenizer in ("bpe", "bytes"), f"--tokenizer must be bpe|bytes, got {self.tokenizer}")
        need(self.vocab_size >= 260, f"--vocab-size must be >= 260, got {self.vocab_size}")
        need(0 <= self.eval_stride <= self.seq_len, f"--eval-stride must be in [0, seq_len], got {self.eval_stride}")
        need(self.packing in ("bfd", "concat"), f"--packing must be bfd|concat, got {self.packing}")
        need(self.parallel in ("ddp", "fsdp"), f"--parallel must be ddp|fsdp, got {self.parallel}")

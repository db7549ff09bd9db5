"""Training configuration: one dataclass, validated whole before any work, saved as JSON beside
every checkpoint; which fields a resumed run may change."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from headway.recipe import RECIPE


@dataclass
class TrainConfig:
    """Every setting of `headway train` (a flag each; `--config FILE` keys). The defaults of the
    model, objective, data and optimization come from `headway.RECIPE`, the library's defaults too."""

    objective: str = RECIPE.objective
    backbone: str = RECIPE.backbone
    size: str = RECIPE.size  # tiny (64x2) plus a layer: better at equal time since Muon + QK-norm
    seq_len: int = RECIPE.seq_len
    batch_size: int = RECIPE.batch_size
    grad_accum: int = 1
    steps: int | None = None
    tokens: int | None = None
    time_budget: float | None = 400.0  # seconds of training; the default run's main knob (the README's first
    # command, installs included, must end within 10 minutes on 2 slow cores: 440 s took 10 min 8 s there)
    optimizer: str = "auto"  # auto (muon; adamw under FSDP) | adamw | muon (hidden matrices; AdamW for the rest)
    activation: str = RECIPE.activation  # transformer MLP: gelu | relu2
    qk_norm: bool = RECIPE.qk_norm  # transformer: RMS-normalize queries and keys
    zero_init: bool = RECIPE.zero_init  # transformer: zero-initialized output projections
    lr: float = RECIPE.lr
    min_lr_ratio: float = RECIPE.min_lr_ratio
    warmup: int = RECIPE.warmup
    weight_decay: float = RECIPE.weight_decay
    grad_clip: float = RECIPE.grad_clip
    z_loss: float = 0.0
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    out: str = "runs/default"
    data: list[str] = field(default_factory=list)
    text_field: str = "text"
    glob: str | None = None  # which files of --data folders (default: text, jsonl and parquet files)
    val_fraction: float = 0.05
    tokenizer: str = RECIPE.tokenizer
    vocab_size: int = RECIPE.vocab_size
    tokenizer_sample_bytes: int = 64 << 20  # the BPE is trained on at most this much text
    prepare_workers: int = 0  # processes tokenizing the data; 0: every core
    loader_workers: int = -1  # DataLoader worker processes building batches; 0: in the training process; -1: auto
    packing: str = RECIPE.packing
    eval_every: int = 1000  # steps; 0: only at the end
    eval_stride: int = 0  # sliding-window validation stride; 0: seq_len // 2
    eval_tokens: int | None = 65536  # cap on validation tokens for periodic evals
    infill_lines: int = 200  # validation lines for the single-line infilling score at the end; 0: none
    final_eval_tokens: int = 500_000  # cap on validation tokens for the final evaluation; 0: the whole split
    checkpoint_every: int = 0
    keep_checkpoints: int = 0  # 0: keep every checkpoint
    log_every: int = 10
    threads: int = 0  # torch intra-op threads; 0: all cores
    on_nan: str = "stop"  # a non-finite loss or gradient norm: stop | skip (the batch)
    log: str = ""  # besides metrics.jsonl: "tensorboard", "wandb" or both, comma-separated
    allow_leak: bool = False
    compile: bool = False
    parallel: str = "ddp"  # under torchrun: ddp | fsdp
    tensor_parallel_head: bool = False

    def resolved_optimizer(self) -> str:
        """auto: Muon (+ AdamW) in one process and under DDP; AdamW under FSDP (Muon needs whole matrices)."""
        if self.optimizer != "auto":
            return self.optimizer
        return "adamw" if self.parallel == "fsdp" else RECIPE.optimizer

    def resolved_loader_workers(self) -> int:
        """-1 (auto): one worker per 8 cores, at most 4; 0 on small machines, where a worker competes
        with training for the cores (2 cores: +3.2% step time with a worker, +1.5% in process)."""
        if self.loader_workers >= 0:
            return self.loader_workers
        import os

        return min(4, (os.cpu_count() or 1) // 8)

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        raw = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def check(self) -> None:
        """Clear errors, naming the flag, for every value no run can use — before any work."""
        from headway.models import BACKBONES, parse_size
        from headway.objectives import check_spec

        def need(ok: bool, flag: str, expected: str, got: object) -> None:
            if not ok:
                raise ValueError(f"--{flag.replace('_', '-')} must be {expected}, got {got!r}")

        def integer(name: str, low: int, high: int | None = None, optional: bool = False) -> None:
            v = getattr(self, name)
            if optional and v is None:
                return
            ok = isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high)
            need(ok, name, f"an integer >= {low}" + (f" and <= {high}" if high is not None else ""), v)

        def number(name: str, low: float, high: float | None = None, low_open: bool = False,
                   optional: bool = False) -> None:
            v = getattr(self, name)
            if optional and v is None:
                return
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (v > low if low_open else v >= low) and (high is None or v <= high)
            rng = f"> {low}" if low_open else f">= {low}"
            need(ok, name, f"a finite number {rng}" + (f" and <= {high}" if high is not None else ""), v)

        integer("seq_len", 8, 1 << 20)
        integer("batch_size", 1)
        integer("grad_accum", 1)
        integer("steps", 1, optional=True)
        integer("tokens", 1, optional=True)
        need(self.steps is None or self.tokens is None, "tokens", "left out when --steps is given (one budget)",
             self.tokens)
        number("time_budget", 0, low_open=True, optional=True)
        need(self.steps is not None or self.tokens is not None or self.time_budget is not None, "time_budget",
             "given when neither --steps nor --tokens is", self.time_budget)
        number("lr", 0, low_open=True)
        number("min_lr_ratio", 0, 1)
        integer("warmup", 0)
        number("weight_decay", 0)
        number("grad_clip", 0)
        number("z_loss", 0)
        integer("seed", 0)
        number("val_fraction", 0, 1, low_open=True)
        need(self.val_fraction < 1, "val_fraction", "< 1", self.val_fraction)
        integer("vocab_size", 260, 1 << 24)
        integer("eval_every", 0)
        integer("eval_stride", 0, self.seq_len)
        integer("eval_tokens", 1, optional=True)
        integer("final_eval_tokens", 0)
        integer("infill_lines", 0)
        integer("tokenizer_sample_bytes", 1 << 16)
        integer("prepare_workers", 0, 1024)
        integer("loader_workers", -1, 64)
        need(not (self.optimizer == "muon" and self.parallel == "fsdp"), "optimizer", "adamw with --parallel fsdp "
             "(Muon orthogonalizes whole matrices; FSDP shards them)", self.optimizer)
        need(self.glob is None or (isinstance(self.glob, str) and self.glob != ""), "glob", "a file pattern such "
             "as '*.py'", self.glob)
        integer("checkpoint_every", 0)
        integer("keep_checkpoints", 0)
        integer("log_every", 1)
        integer("threads", 0, 4096)
        for name, choices in (("precision", ("auto", "fp32", "bf16", "fp16")), ("device", ("auto", "cpu", "cuda")),
                              ("tokenizer", ("bpe", "bytes")), ("packing", ("bfd", "concat")),
                              ("parallel", ("ddp", "fsdp")), ("on_nan", ("stop", "skip")),
                              ("optimizer", ("auto", "adamw", "muon")), ("activation", ("gelu", "relu2")),
                              ("backbone", BACKBONES)):
            need(getattr(self, name) in choices, name, "one of " + " | ".join(choices), getattr(self, name))
        need(isinstance(self.log, str) and all(x.strip() in LOGGERS for x in self.log.split(",") if x.strip()),
             "log", "empty or a comma-separated list of " + " | ".join(LOGGERS), self.log)
        need(isinstance(self.data, list) and all(isinstance(p, str) and p for p in self.data), "data",
             "a list of paths", self.data)
        try:
            parse_size(self.size)
            check_spec(self.objective)
        except ValueError as e:
            raise ValueError(f"--{'size' if 'size' in str(e) else 'objective'}: {e}") from None


LOGGERS = ("tensorboard", "wandb")

# What a resumed run may change: the schedule's length, logging, evaluation, checkpointing and the
# hardware it runs on. Everything else defines the model, its data or its optimization.
RESUMABLE = frozenset({"steps", "tokens", "time_budget", "eval_every", "eval_stride", "eval_tokens",
                       "checkpoint_every", "keep_checkpoints", "log_every", "threads", "device", "precision",
                       "compile", "on_nan", "out", "log", "final_eval_tokens", "infill_lines",
                       "prepare_workers", "loader_workers"})


def merge_for_resume(saved: TrainConfig, given: TrainConfig, names: set[str]) -> tuple[TrainConfig, dict]:
    """The resumed run's config: the saved one, with the flags in `names` taken from `given`.
    Refuses (ValueError naming them) flags outside RESUMABLE whose value differs; returns the
    config and {flag: [old, new]} of what changed."""
    changed, refused = {}, []
    merged = dataclasses.replace(saved)
    for n in sorted(names):
        old, new = getattr(saved, n), getattr(given, n)
        if old == new:
            continue
        if n not in RESUMABLE:
            refused.append(f"--{n.replace('_', '-')} (run: {old!r}, given: {new!r})")
            continue
        setattr(merged, n, new)
        if n != "out":
            changed[n] = [old, new]
    if refused:
        raise ValueError("--resume: these flags define the model, its data or its optimization and cannot change "
                         "in a resumed run: " + "; ".join(refused) + ". Leave them out (the run's values are "
                         "used) or start a new run.")
    if changed.get("steps") or changed.get("tokens"):  # one budget: the given one replaces the saved ones
        for n in ("steps", "tokens"):
            if n not in names:
                setattr(merged, n, None)
    return merged, changed

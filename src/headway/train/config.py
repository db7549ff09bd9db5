"""Training configuration: one dataclass, validated whole before any work, saved as JSON beside
every checkpoint; which fields a resumed run may change.

Every field carries its own documentation in `dataclasses.field(metadata=...)` (written with `opt`):
its `help` (the flag's `--help` line), its `section` (one of `SECTIONS`), its `choices` where the
values are a fixed list, and whether a resumed run may change it (`resumable`). The command line
(`headway train` flags, grouped by section in `--help`), the validation of choices in `check()`,
the config-file reader and `--print-config` (`headway.train.config_file`) and `RESUMABLE` all read
that metadata: a field is declared in one place.

Why dataclass metadata: it is the standard library's own slot for per-field data, so the core
install gains no dependency (tyro or jsonargparse would add one, and a second way to declare a
field), `TrainConfig` stays a plain dataclass (`dataclasses.replace`, `asdict`, equality), and
argparse, validation and the file formats are a few loops over `dataclasses.fields`.

Why attribute access stays flat (`cfg.lr`, not `cfg.optim.lr`): every field name is unique across
the sections, so a section adds no information to a name. Every existing flag, config file (flat
or under `[train]`), saved `config.json` of an earlier run and library call (`TrainConfig(lr=...)`)
keeps working unchanged, while the sections organise config files (`[model]`, `[data]`, `[optim]`,
`[eval]`, `[run]` tables), `--help` and `--print-config`. `TrainConfig.section(name)` gives one
section's values as a dict.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headway.constants import DISTILL_KINDS, LOSS_IMPLS
from headway.recipe import RECIPE

SECTIONS: tuple[str, ...] = ("model", "data", "optim", "eval", "run")
"""The sections of `TrainConfig`, in the order `--help` and `--print-config` show them."""

SECTION_HELP: dict[str, str] = {
    "model": "the model: objective, backbone, size, initialization, head and loss",
    "data": "the data: sources, tokenizer, split, packing and batch shape",
    "optim": "the optimization: optimizer, learning-rate schedule, regularization",
    "eval": "validation during and at the end of the run",
    "run": "the run: its length, hardware, output folder, logging and checkpoints",
}
"""One line per section: the description of its group in `--help` and its table in `--print-config`."""


def opt(default: Any = dataclasses.MISSING, *, help: str, section: str, choices: tuple[str, ...] | None = None,
        resumable: bool = False, metavar: str | None = None,
        factory: Callable[[], Any] | None = None) -> Any:
    """A `TrainConfig` field with its metadata: `help` (one `--help` line), `section` (one of
    `SECTIONS`), `choices` (the allowed values, where they are a fixed list), `resumable` (a resumed
    run may change it), `metavar` (the value's name in `--help`). `factory` builds a mutable default."""
    if section not in SECTIONS:
        raise ValueError(f"opt: section must be one of {SECTIONS}, got {section!r}")
    meta = {"help": help, "section": section, "choices": tuple(choices) if choices else None,
            "resumable": resumable, "metavar": metavar}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every setting of `headway train` (a flag each; `--config FILE` keys, flat or in their
    section's table). The defaults of the model, objective, data and optimization come from
    `headway.RECIPE`, the library's defaults too. Each field's help, section and choices are in its
    metadata (`dataclasses.fields(TrainConfig)[i].metadata`)."""

    # model
    objective: str = opt(RECIPE.objective, section="model", help=(
        "objective or weighted mix: clm | mlm | prefix_lm | fim | span | ul2 | ul2r | ul2_decoder | diffusion | "
        "distill, or e.g. 'clm:0.5,fim:0.5' (default; FIM alone always transforms, mixed with clm it is the FIM "
        "rate; distill trains against --teacher and is not mixed)"))
    backbone: str = opt(RECIPE.backbone, section="model", help=(
        "transformer (RoPE, SDPA, packed-document masks) | gated_ssm (BiGS-style S4D; bidirectional for mlm) | "
        "hf:NAME, a transformers architecture by model_type (llama, qwen2, mistral, gpt_neox, gemma2, mamba2, ...): "
        "--size HxLxHEADS sets hidden size, layers and heads, the other widths scale from the architecture's "
        "defaults | hf:PATH, the architecture of a config.json or a folder holding one (--size ignored). State-space "
        "and hybrid architectures train one document per row"))
    size: str = opt("auto", section="model", help=(
        "model size: auto (default: the largest size this machine trains on at least 4 tokens per parameter "
        f"within the budget, from {RECIPE.size} up, measured with a few steps; see the log and the summary) | "
        "tiny (64x2) | mini (128x4) | small (192x4) | medium (256x6) | base (384x8) [hidden x layers] | custom "
        "HIDDENxLAYERS[xHEADS] such as 96x3"))
    activation: str = opt(RECIPE.activation, section="model", choices=("gelu", "relu2"), help=(
        "transformer MLP activation: gelu (tanh approximation) | relu2 (ReLU squared); the gated SSM ignores it"))
    qk_norm: bool = opt(RECIPE.qk_norm, section="model", help=(
        "transformer: RMS-normalize queries and keys per head before RoPE (the gated SSM ignores it)"))
    zero_init: bool = opt(RECIPE.zero_init, section="model", help=(
        "transformer: initialize the attention and MLP output projections at zero (the gated SSM ignores it)"))
    z_loss: float = opt(0.0, section="model", help="z-loss coefficient (z * logsumexp^2 per token, PaLM)")
    mtp_depth: int = opt(0, section="model", help=(
        "multi-token prediction depth K (DeepSeek-V3): K sequential modules after the backbone, each one block, "
        "predict the tokens 2..K+1 ahead through the shared fused head; works with every left-to-right objective "
        "(clm, fim, prefix_lm, ul2, span and their mixes), refused with an MLM-only one and with distill; dropped "
        "at export; `headway sample --speculative` drafts with them (0: off)"))
    mtp_weight: float = opt(0.3, section="model", help=(
        "λ: the weight of the mean multi-token prediction loss over the depths (loss = main + λ · mean_k loss_k)"))
    tensor_parallel_head: bool = opt(False, section="model", help=(
        "untie the LM head from the embedding and, under torchrun, shard it by vocabulary rows over the ranks "
        "(vocab-parallel loss: no rank holds the whole head, its gradient, its optimizer state or a chunk's full "
        "logits); refused with --objective distill"))
    loss_impl: str = opt("auto", section="model", choices=LOSS_IMPLS, resumable=True, help=(
        "which fused loss backend computes the head's loss: " + " | ".join(LOSS_IMPLS) + " (see "
        "headway.linear_cross_entropy's `impl`; the loss is the same up to rounding, so a resumed run may change "
        "it)"))
    init: str | None = opt(None, section="model", metavar="FOLDER", help=(
        "continued pre-training: start from this local HuggingFace checkpoint folder's architecture (the backbone "
        "becomes hf:FOLDER; leave --backbone out), weights and tokenizer (unless --tokenizer names another); "
        "headway's special tokens get new rows at the mean of the checkpoint's"))
    allow_leak: bool = opt(False, section="model", help=(
        "train a causal objective even when the causality check finds a leak (experts only)"))
    teacher: str | None = opt(None, section="model", metavar="FOLDER", help=(
        "--objective distill: the frozen teacher, a headway run or checkpoint folder (a run folder's latest "
        "checkpoint, pinned in the run's config and reloaded from there on resume) or a local HuggingFace "
        "causal-LM folder; it must have the run's tokenizer and Vocab (a new run with --tokenizer bpe takes the "
        "teacher's)"))
    distill_alpha: float = opt(0.5, section="model", metavar="ALPHA", help=(
        "--objective distill: the distillation term's share α in α·T²·D(teacher ‖ student) + (1 - α)·CE "
        "(1: the teacher only; 0: cross-entropy only)"))
    distill_temperature: float = opt(2.0, section="model", metavar="T", help=(
        "--objective distill: the temperature T of both distributions in the distillation term (the T² factor "
        "keeps its gradient's size; the cross-entropy stays at temperature 1)"))
    distill_loss: str = opt("kl", section="model", choices=DISTILL_KINDS, help=(
        "--objective distill: the divergence D: kl (KL(teacher ‖ student), Hinton et al.) | reverse_kl "
        "(KL(student ‖ teacher)) | jsd (generalized Jensen-Shannon with --distill-beta, GKD)"))
    distill_beta: float = opt(0.5, section="model", metavar="BETA", help=(
        "--objective distill --distill-loss jsd: the mixture weight β in (0, 1) of the teacher in "
        "m = β·teacher + (1 - β)·student"))

    # data
    data: list[str] = opt(section="data", factory=list, metavar="PATH", help=(
        "training text instead of the embedded standard-library corpus: files, folders, .txt, .jsonl[.gz|.zst], "
        ".parquet, a locally saved HuggingFace dataset, or a folder made by `headway prepare`; several with "
        "weights mix by sampling: --data code/:0.7 notes.jsonl:0.3"))
    text_field: str = opt("text", section="data", help="field holding the text in .jsonl / parquet / datasets")
    glob: str | None = opt(None, section="data", help=(
        "which files of --data folders to read, e.g. '*.py' (default: text, .jsonl[.gz|.zst] and .parquet files)"))
    val_fraction: float = opt(0.05, section="data", help=(
        "fraction of documents held out for validation (deterministic split by name)"))
    tokenizer: str = opt(RECIPE.tokenizer, section="data", help=(
        "bpe (byte-level BPE trained on a sample of the training split, cached in OUT/data) | bytes | PATH: a "
        "tokenizer.json or a folder AutoTokenizer loads offline; its whole vocabulary is the base split and "
        "headway's special tokens are appended"))
    vocab_size: int = opt(RECIPE.vocab_size, section="data", help=(
        "BPE base vocabulary size (special tokens are a separate split on top)"))
    tokenizer_sample_bytes: int = opt(64 << 20, section="data", help=(
        "train the BPE on at most this many bytes of training text (files in a fixed pseudo-random order), so "
        "preparing a large corpus needs no more memory"))
    prepare_workers: int = opt(0, section="data", resumable=True, help=(
        "processes that hash and tokenize the data into shards (0: every core)"))
    loader_workers: int = opt(-1, section="data", resumable=True, help=(
        "DataLoader worker processes that apply the objective and pack batches while the model trains (0: in "
        "the training process; -1: one per 8 cores, at most 4, so 0 on small machines where a worker would "
        "compete with training for the cores). A resume with another count continues from the same position "
        "in the data, but not with the identical batches"))
    packing: str = opt(RECIPE.packing, section="data", choices=("bfd", "concat", "single"), help=(
        "bfd (best-fit-decreasing, documents never split) | concat (concat-and-split) | single (one document per "
        "row, then padding; chosen by the run for backbones that cannot keep packed documents apart)"))
    seq_len: int = opt(RECIPE.seq_len, section="data", help="tokens per packed row")
    batch_size: int = opt(RECIPE.batch_size, section="data", help="rows per micro-batch")

    # optim
    optimizer: str = opt("auto", section="optim", choices=("auto", "adamw", "muon"), help=(
        "auto (muon; adamw under --parallel fsdp) | adamw | muon (torch.optim.Muon on the backbone's hidden "
        "matrices, AdamW on embeddings, head, norms; not with --parallel fsdp)"))
    lr: float = opt(RECIPE.lr, section="optim", help=(
        "peak learning rate (AdamW, betas 0.9/0.95; Muon's update is scaled to AdamW's RMS, so the same rate)"))
    min_lr_ratio: float = opt(RECIPE.min_lr_ratio, section="optim", help=(
        "final learning rate as a fraction of the peak (cosine decay)"))
    warmup: int = opt(RECIPE.warmup, section="optim", help="linear warmup steps")
    embedding_lr_scale: float = opt(RECIPE.embedding_lr_scale, section="optim", help=(
        "the token embedding and LM head matrices learn at --lr times this (the hidden matrices at --lr)"))
    embedding_weight_decay: float | None = opt(RECIPE.embedding_weight_decay, section="optim", help=(
        "weight decay of the token embedding and LM head matrices, at their scaled rate (none: --weight-decay's)"))
    weight_decay: float = opt(RECIPE.weight_decay, section="optim", help=(
        "weight decay on matrices (not on norms/biases; the embedding's and head's: --embedding-weight-decay)"))
    grad_clip: float = opt(RECIPE.grad_clip, section="optim", help="clip the gradient norm to this (0: off)")
    grad_accum: int = opt(1, section="optim", help=(
        "micro-batches per optimizer step (loss normalized by the global count of targets)"))

    # eval
    eval_every: int = opt(1000, section="eval", resumable=True, help="validate every N steps (0: only at the end)")
    eval_stride: int = opt(0, section="eval", resumable=True, help=(
        "validation windows start every N tokens and score only tokens not scored before, so each has at least "
        "seq_len - N tokens of context (0: seq_len // 2; seq_len: non-overlapping)"))
    eval_tokens: int | None = opt(65536, section="eval", resumable=True, help=(
        "cap on validation tokens for the periodic evaluations"))
    infill_lines: int = opt(200, section="eval", resumable=True, help=(
        "at the end, score single-line infilling on this many validation lines drawn by --seed: exact match "
        "with prefix + suffix (FIM) next to completing from the prefix alone (0: skip)"))
    final_eval_tokens: int = opt(500_000, section="eval", resumable=True, help=(
        "cap on validation tokens of the final evaluation (whole documents, exact bytes; 0: the whole split)"))

    # run
    steps: int | None = opt(None, section="run", resumable=True, help=(
        "optimizer steps to train (overrides --time-budget)"))
    tokens: int | None = opt(None, section="run", resumable=True, help=(
        "token budget: steps = tokens / (batch x seq_len x grad_accum) (overrides --time-budget)"))
    # the default run's main knob: the README's first command, installs included, must end within 10 minutes
    # on 2 slow cores (440 s took 10 min 8 s there)
    time_budget: float | None = opt(400.0, section="run", resumable=True, help=(
        "seconds of training (evaluations and checkpoints included) when neither --steps nor --tokens is given: a "
        "step starts only if it should end within the budget, and the learning rate decays with the fraction of "
        "the budget spent; a resumed run trains what is left of it"))
    precision: str = opt("auto", section="run", choices=("auto", "fp32", "bf16", "fp16"), resumable=True, help=(
        "auto | fp32 | bf16 | fp16 (autocast; softmax and loss accumulation stay float32). auto: bf16 on GPUs "
        "that support it and on CPUs with AVX512-BF16/AMX (several times faster matmuls), else fp32"))
    device: str = opt("auto", section="run", choices=("auto", "cpu", "cuda"), resumable=True,
                      help="auto | cpu | cuda")
    seed: int = opt(0, section="run", help="seed of model init, data order and objective randomness")
    out: str = opt("runs/default", section="run", resumable=True, help=(
        "output folder: tokenizer, token shards (data/), metrics.jsonl, loss.png, checkpoints, summary.json"))
    checkpoint_every: int = opt(0, section="run", resumable=True, help=(
        "save a checkpoint every N steps (0: only at the end, on Ctrl-C / SIGTERM and on divergence)"))
    keep_checkpoints: int = opt(0, section="run", resumable=True, help=(
        "keep only the newest N checkpoints (0: keep all)"))
    log_every: int = opt(10, section="run", resumable=True, help="write a metrics.jsonl line every N steps")
    log: str = opt("", section="run", resumable=True, help=(
        "also log to tensorboard (OUT/tensorboard) and/or wandb (offline unless WANDB_API_KEY or WANDB_MODE say "
        "otherwise), e.g. --log tensorboard,wandb: train loss, learning rate, tokens/s, gradient norm, validation "
        "loss and bits/byte (metrics.jsonl is always written)"))
    threads: int = opt(0, section="run", resumable=True, help="torch CPU threads (0: every core)")
    on_nan: str = opt("stop", section="run", choices=("stop", "skip"), resumable=True, help=(
        "what a non-finite loss or gradient norm does: stop (save the last good weights, exit 3) | skip (drop "
        "that batch; 20 in a row stop the run)"))
    compile: bool = opt(False, section="run", resumable=True, help=(
        "torch.compile the model (inductor; the fused loss runs as written). The first steps compile (10-30 s on "
        "2 cores); on the 2-core CPU default model it was 8% slower per step than eager (bench/speedrun.py), so "
        "it is off by default"))
    parallel: str = opt("ddp", section="run", choices=("ddp", "fsdp"), help=(
        "under torchrun: ddp (every rank holds the whole model) | fsdp (FSDP2: parameters, gradients and "
        "optimizer state sharded over ranks; distributed checkpoints). Ignored in a single process"))

    def section(self, name: str) -> dict[str, Any]:
        """{field: value} of the fields in section `name` (one of `SECTIONS`), in declaration order."""
        if name not in SECTIONS:
            raise ValueError(f"TrainConfig.section: `name` must be one of {' | '.join(SECTIONS)}, got {name!r}")
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["section"] == name}

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
        """Write the config as flat JSON (`config.json` beside every checkpoint), atomically."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        """A saved `config.json`; fields it lacks (a run saved before they existed) take their defaults."""
        raw = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def check(self) -> None:
        """Clear errors, naming the flag, for every value no run can use — before any work."""
        from headway.models import check_backbone, parse_size
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
        number("embedding_lr_scale", 0, low_open=True)
        number("embedding_weight_decay", 0, optional=True)
        number("grad_clip", 0)
        number("z_loss", 0)
        integer("mtp_depth", 0, 16)
        number("mtp_weight", 0)
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
        for f in dataclasses.fields(self):
            choices = f.metadata["choices"]
            if choices is not None:
                need(getattr(self, f.name) in choices, f.name, "one of " + " | ".join(choices), getattr(self, f.name))
        check_backbone(self.backbone)
        need(self.tokenizer in ("bpe", "bytes") or (isinstance(self.tokenizer, str) and self.tokenizer != ""
                                                    and Path(self.tokenizer).exists()), "tokenizer",
             "bpe | bytes | the path of a tokenizer.json file or of a folder AutoTokenizer loads (none exists "
             "there)", self.tokenizer)
        need(self.init is None or (isinstance(self.init, str) and self.init != "" and Path(self.init).is_dir()
                                   and (Path(self.init) / "config.json").is_file()), "init",
             "a local HuggingFace checkpoint folder holding config.json", self.init)
        need(self.init is None or self.backbone == RECIPE.backbone or str(self.backbone).startswith("hf:"), "init",
             f"given without --backbone (the checkpoint's architecture is the backbone; --backbone is "
             f"{self.backbone!r})", self.init)
        need(isinstance(self.log, str) and all(x.strip() in LOGGERS for x in self.log.split(",") if x.strip()),
             "log", "empty or a comma-separated list of " + " | ".join(LOGGERS), self.log)
        need(isinstance(self.data, list) and all(isinstance(p, str) and p for p in self.data), "data",
             "a list of paths", self.data)
        number("distill_alpha", 0, 1)
        number("distill_temperature", 0, low_open=True)
        number("distill_beta", 0, 1, low_open=True)
        need(self.distill_beta < 1, "distill_beta", "< 1 (β = 0 and 1 are --distill-loss kl and reverse_kl)",
             self.distill_beta)
        try:
            if self.size != "auto":
                parse_size(self.size)
            parsed = check_spec(self.objective)
        except ValueError as e:
            raise ValueError(f"--{'size' if 'size' in str(e) else 'objective'}: {e}") from None
        if self.mtp_depth:  # an MLM-only objective has no left-to-right target for the depths to extend
            from headway.models.mtp import check_objective
            from headway.objectives import build_objective
            from headway.types import Vocab

            check_objective(build_objective(self.objective, Vocab(256)), self.mtp_depth)
        self._check_objective_flags(parsed)

    def _check_objective_flags(self, parsed: list[tuple[str, float]]) -> None:
        """An objective's own flags (the fields its registration declares) are refused, naming the flag,
        when set in a run whose objective does not read them; then the distillation's checks."""
        from headway.objectives.registry import REGISTRY
        from headway.train.teacher import check_config

        read = {f for name, _ in parsed for f in REGISTRY[name].flags}
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for reg in REGISTRY.values():
            for name in reg.flags:
                if name not in read and name in defaults and getattr(self, name) != defaults[name]:
                    raise ValueError(f"--{name.replace('_', '-')} is read by --objective {reg.name}; this run's "
                                     f"objective {self.objective!r} does not read it")
        check_config(self, "teacher" in read, len(parsed))


LOGGERS = ("tensorboard", "wandb")

# What a resumed run may change (the fields declared `resumable=True`): the schedule's length, logging,
# evaluation, checkpointing, the hardware it runs on and the loss backend. Everything else defines the
# model, its data or its optimization.
RESUMABLE: frozenset[str] = frozenset(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["resumable"])
# Values "auto" lets the machine choose (headway.train.autosize): a new run writes its choice into config.json;
# "auto" given to a resumed run means the choice it made
MACHINE_CHOSEN: frozenset[str] = frozenset({"size", "precision"})


def merge_for_resume(saved: TrainConfig, given: TrainConfig, names: set[str]) -> tuple[TrainConfig, dict]:
    """The resumed run's config: the saved one, with the flags in `names` taken from `given`.
    Refuses (ValueError naming them) flags outside RESUMABLE whose value differs; returns the
    config and {flag: [old, new]} of what changed."""
    changed, refused = {}, []
    merged = dataclasses.replace(saved)
    for n in sorted(names):
        old, new = getattr(saved, n), getattr(given, n)
        if old == new or (n in MACHINE_CHOSEN and new == "auto"):
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

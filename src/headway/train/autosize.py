"""The values `headway train` chooses for the machine it runs on: `--size auto` and `--precision auto`.

The recipe's model (64x3: hidden 64, 3 layers) won at equal wall time on a 2-core float32 CPU. A
machine that trains faster (bf16 products on AVX512-BF16 or AMX, more cores, a GPU) sees more tokens
in the same budget, and then a larger model wins. `choose_size` picks from `LADDER` by the
compute-optimal rule of thumb: the largest size whose budget gives it at least `TOKENS_PER_PARAM`
training tokens per parameter,

    size = max { s in LADDER : D(s) >= r · N(s) },   D(s) = tokens/s(s) · budget,  N(s) = parameters,

falling back to the smallest size, and never a size whose measuring steps take the process's peak
memory past two thirds of `RSS_BUDGET_MIB` (the default run's 1 GiB). That memory is judged as a
fresh `headway train` process would have it: the memory the size's measuring adds above the
process's memory when measuring starts, plus that starting memory up to `FRESH_START_MIB` (a
notebook or test process that already holds gigabytes is judged like a fresh one). N counts every parameter (the
embedding too: at these sizes the tied embedding/head is most of the model and of its FLOPs). Under
`--steps` / `--tokens` D is known and nothing is measured; under `--time-budget`, tokens/s(s) is
measured on this machine, in the run's precision and threads, with a few real optimizer steps on
the run's own batches (`measure`), from the smallest size up, stopping at the first size the rule
rejects (D/N falls as the size grows).

r was fitted at equal wall time on the machines the benchmark pages name (docs/benchmarks/); the
choice and its reason are logged, written into the run's config.json (the resolved size, reused on
resume) and printed in the summary. `--size` with any other value skips all of this.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Any

import torch

from headway.recipe import RECIPE

# sizes `--size auto` chooses from, smallest first (hidden x layers; heads = hidden // 32)
LADDER: tuple[str, ...] = ("64x3", "96x3", "96x4", "128x4", "192x4", "256x6", "384x8")
# r: training tokens per parameter the chosen size must reach within the budget
TOKENS_PER_PARAM: float = 4.0
# the default run's memory promise (peak RSS); a size is taken only while the process's peak RSS after
# its measuring steps stays within two thirds of it: the rest of a run (the loader's window of examples,
# the evaluation) added about 350 MiB on the default corpus
RSS_BUDGET_MIB: float = 1024.0
# at most the memory a fresh `headway train` process holds when the measuring starts (torch and the
# prepared default corpus); a process holding more is judged as if it held this much
FRESH_START_MIB: float = 512.0
WARMUP_STEPS, TIMED_STEPS = 3, 8


@dataclasses.dataclass(frozen=True)
class SizeChoice:
    """The size `--size auto` resolved to, and why (one line for the log and the summary)."""

    size: str
    reason: str


def tokens_in_budget(cfg: Any, tokens_per_second: float | None, world: int = 1) -> float:
    """D: training tokens the run will see over its `world` processes, from `--steps` (per-process
    batches) / `--tokens`, else one process's tokens/s × `world` × `--time-budget`."""
    per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * world
    if cfg.steps is not None:
        return float(cfg.steps * per_step)
    if cfg.tokens is not None:
        return float(cfg.tokens)
    assert tokens_per_second is not None
    return tokens_per_second * world * float(cfg.time_budget)


def measure(model: torch.nn.Module, opt: torch.optim.Optimizer, batches: list, autocast: Any) -> float:
    """Tokens per second of `model` trained on `batches` (forward, backward, optimizer step) after
    `WARMUP_STEPS` untimed steps: from the median of the timed steps, as the time budget's own
    step-time estimate is (`headway.train.budget`)."""
    times = []
    for i, b in enumerate(batches):
        t = time.perf_counter()
        with autocast:
            loss = model(b, num_items_in_batch=max(b.num_items, 1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= WARMUP_STEPS:
            times.append(time.perf_counter() - t)
    tokens = sum(int((b.document_ids >= 0).sum()) for b in batches) / len(batches)
    return tokens / statistics.median(times)


def choose_size(cfg: Any, build: Any, batches: Any, autocast: Any, log: Any = print, *, world: int = 1,
                device: torch.device | None = None) -> SizeChoice:
    """The size of `--size auto` for this run (see the module docstring).

    build(size) -> (model, optimizer): the run's model at that size, as training builds it.
    batches() -> list of `WARMUP_STEPS + TIMED_STEPS` of the run's batches, on the run's device.
    autocast: a re-entrant context for the run's precision. world: the run's processes (each
    measures its own speed; the run sees world times the tokens). device: where the steps run (the
    memory rule applies on CPU, where the process's memory is the run's).
    The global RNG (CPU and `device`) is left as it was, so the run's initialization does not depend
    on the measuring.
    """
    measured = cfg.steps is None and cfg.tokens is None
    rule = f"D >= {TOKENS_PER_PARAM:g} tokens/parameter"
    chosen, why = LADDER[0], ""
    on_cpu = device is None or device.type == "cpu"
    rng = torch.random.fork_rng(devices=[]) if on_cpu else torch.random.fork_rng(devices=[device],
                                                                                  device_type=device.type)
    with rng:
        data = batches() if measured else None
        start = rss_mib()
        for i, size in enumerate(LADDER):
            restart_peak_rss()
            model, opt = build(size)
            params = sum(p.numel() for p in model.parameters())
            rate = measure(model, opt, data, autocast) if measured else None
            del model, opt
            need = min(start, FRESH_START_MIB) + max(0.0, peak_rss_mib() - start)
            tokens = tokens_in_budget(cfg, rate, world)
            seen = f"{size}: {params / 1e6:.2f}M parameters" + (f", {rate:,.0f} tokens/s" if rate else "")
            seen += f", peak RSS {need:.0f} MiB" if measured and on_cpu else ""
            seen += f", D = {tokens / 1e6:.2f}M tokens = {tokens / params:.1f}/parameter"
            log(f"--size auto: {seen}")
            few = tokens < TOKENS_PER_PARAM * params
            heavy = measured and on_cpu and need > RSS_BUDGET_MIB * 2 / 3
            if few or heavy:
                because = (f"below {rule}" if few else
                           f"measuring took the process past 2/3 of {RSS_BUDGET_MIB:.0f} MiB of memory")
                why = f"{seen} ({because}; the smallest size)" if i == 0 else f"{why}; {size}: {because}"
                break
            chosen, why = size, f"{seen}; the largest size with {rule}"
    return SizeChoice(chosen, why)


_EARLIER_PEAK_MIB = 0.0  # the peak before the last `restart_peak_rss` (the run's summary reports the larger)


def peak_rss_mib(since_restart: bool = True) -> float:
    """This process's peak resident memory in MiB: since the last `restart_peak_rss` (where that
    worked), or over the process's whole life (`since_restart=False`, what a run's summary reports)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak = peak / 2**20 if sys.platform == "darwin" else peak / 1024
    return peak if since_restart else max(peak, _EARLIER_PEAK_MIB)


def rss_mib() -> float:
    """This process's resident memory now, in MiB (Linux); elsewhere its peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mib()


def restart_peak_rss() -> bool:
    """Start the peak of `peak_rss_mib` afresh from the memory held now (Linux: /proc/self/clear_refs),
    so a size's measuring is judged by its own peak, not an earlier one of a long-lived process; the
    earlier peak is kept for `peak_rss_mib(since_restart=False)`. Returns whether it was done; where
    it cannot be (no Linux /proc) the peak stays the process's, so a size is judged by the larger of
    the two (the choice can only be smaller)."""
    global _EARLIER_PEAK_MIB
    before = peak_rss_mib(since_restart=False)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    _EARLIER_PEAK_MIB = before
    return True


def resolve_precision_choice(precision: str, device: torch.device) -> tuple[str, str]:
    """`--precision auto` resolved on `device`, with its reason."""
    from headway.cpu import has_fast_bf16
    from headway.train.device import resolve_precision

    value = resolve_precision(precision, device)
    if precision != "auto":
        return value, "given"
    if device.type == "cuda":
        return value, "auto: bf16 where the GPU supports it"
    fast = has_fast_bf16()
    return value, ("auto: the CPU has native bf16 products (AVX512-BF16 or AMX)" if fast
                   else "auto: the CPU has no native bf16 products")


def resolve_auto(cfg: Any, objective: Any, data: Any, device: torch.device, log: Any = print) -> dict[str, str]:
    """Resolve a new run's machine-chosen values in `cfg` (`--size auto`, `--precision auto`), in
    place, so that config.json and a resumed run keep them; returns {flag: "value (reason)"} for the
    summary. Every rank measures at once (as they will train) and all take rank 0's choice."""
    from headway.models.hf_backbone import names_a_file
    from headway.train.device import autocast_for
    from headway.train.distributed import all_gather_object
    from headway.train.optim import make_optimizer
    from headway.train.runs import model_for_run

    precision, why = resolve_precision_choice(cfg.precision, device)
    cfg.precision = precision
    out = {"precision": f"{precision} ({why})"}
    if cfg.size != "auto":
        return {**out, "size": f"{cfg.size} (given)"}
    if cfg.init or cfg.backbone.startswith("hf:") and names_a_file(cfg.backbone[3:]):
        cfg.size = RECIPE.size  # the architecture file fixes every width; --size is not read
        return {**out, "size": "the architecture's own (--size is not read)"}

    kept: dict[str, Any] = {}  # a distilling run's teacher: loaded and checked once, shared by every size

    def build(size: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        model = model_for_run(dataclasses.replace(cfg, size=size), objective, data.vocab, data=data,
                              teacher=kept.get("teacher")).to(device)
        if hasattr(model, "teacher"):
            kept["teacher"] = model.teacher
        return model, make_optimizer(model, cfg.resolved_optimizer(), cfg.lr, cfg.weight_decay,
                                     cfg.embedding_lr_scale, cfg.embedding_weight_decay)

    def batches() -> list:
        loader = data.loader(objective, cfg, 0, 1, None)
        try:
            return [next(loader).to(device) for _ in range(WARMUP_STEPS + TIMED_STEPS)]
        finally:
            loader.close()

    world = len(all_gather_object(0))
    choice = choose_size(cfg, build, batches, autocast_for(precision, device), log, world=world, device=device)
    choice, cfg.precision, out = all_gather_object((choice, cfg.precision, out))[0]  # rank 0's, on every rank
    cfg.size = choice.size
    log(f"--size auto: {choice.size} ({choice.reason})")
    return {**out, "size": f"{choice.size} (auto: {choice.reason})"}


__all__ = ["LADDER", "TOKENS_PER_PARAM", "FRESH_START_MIB", "SizeChoice", "choose_size", "measure",
           "tokens_in_budget", "peak_rss_mib", "rss_mib", "restart_peak_rss", "resolve_precision_choice",
           "resolve_auto"]

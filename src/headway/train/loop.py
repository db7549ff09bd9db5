"""The training run behind `headway train`, in stages: build, train (steps), evaluate, finish.

Every way a run can end goes through `finish`: it writes a checkpoint of the last good weights
(never non-finite ones), `summary.json` with how the run ended, and the exit code:

    0 done · 2 bad input · 3 diverged (non-finite loss or gradient) · 4 disk full
    130 SIGINT · 143 SIGTERM
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from headway.data.loader import Loader
from headway.models.lm import LanguageModel
from headway.objectives import build_objective
from headway.train.autosize import peak_rss_mib, resolve_auto
from headway.train.budget import (
    decay_progress,
    describe_time_budget,
    fits,
    planned_steps,
    recent_step_seconds,
    steps_left,
)
from headway.train.checkpoint import CheckpointError, DiskFullError, check_writable
from headway.train.config import TrainConfig
from headway.train.data import RunData, prepare_on_ranks
from headway.train.device import autocast_for, pick_device, precision_dtype, resolve_precision
from headway.train.distributed import all_sum, all_sums, setup, teardown
from headway.train.evaluation import final_evaluation, periodic_validation
from headway.train.flops import flops_per_token, matmul_peak
from headway.train.guard import guard_causality
from headway.train.loggers import MetricsLog, Progress, check_installed, quiet
from headway.train.memory import release_free_memory
from headway.train.optim import lr_at, make_optimizer
from headway.train.outdir import claim_output_folder, output_lock
from headway.train.parallel import clip_grad_norm_, is_sharded, parallelize
from headway.train.resume import open_loader, open_resume, restore, save
from headway.train.runs import model_for_run, resolve_run_config, save_architecture
from headway.train.signals import Interrupted, Stopper
from headway.train.summary import Summary
from headway.types import Objective

MAX_SKIPPED_IN_A_ROW = 20  # --on-nan skip: this many bad batches in a row stop the run anyway
EXIT = {"done": 0, "diverged": 3, "disk full": 4, "SIGINT": 128 + 2, "SIGTERM": 128 + 15}


@dataclass
class Run:
    """Everything the stages share."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    precision: str
    rank: int
    world: int
    log: Any
    data: RunData
    objective: Objective
    model: LanguageModel
    fwd: torch.nn.Module
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    sharded: bool
    start_step: int
    total: int | None
    summary: Summary
    stopper: Stopper
    loader: Loader | None = None
    metrics: MetricsLog = field(default_factory=MetricsLog)  # rank 0 writes metrics.jsonl
    step: int = 0
    saved_step: int = -1
    spent_before: float = 0.0  # training seconds of the earlier parts of a resumed run
    step_seconds: float = 0.0  # the recent median seconds per step (budget.py), kept in checkpoints
    warmup_seconds: float = 0.0  # under a time budget: the seconds spent when the warmup ended, kept in checkpoints


def build(cfg: TrainConfig, resume: str | None, given: set[str] | None, overwrite: bool, log,  # noqa: ANN001
          stopper: Stopper) -> Run:
    """Validate everything, then data, model, optimizer and (on resume) their saved state. The run
    works on its own copy of `cfg` (what it resolves, e.g. `--size auto`, goes to config.json and the
    summary, not into the caller's object)."""
    cfg = copy.deepcopy(cfg)
    cfg.check()
    check_installed(cfg.log)
    device = pick_device(cfg.device)
    out = Path(cfg.out)
    rank, world = setup(device)
    if rank != 0:
        log = quiet  # one process logs
    ck, cfg, changed = open_resume(resume, out, cfg, given)
    if ck is None:
        resolve_run_config(cfg, log)  # --init's architecture and tokenizer; one document per row where needed
    check_writable(out, need_bytes=64 * 2**20)
    if rank == 0:
        claim_output_folder(out, resume is not None, overwrite)
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(cfg.seed)
    data = prepare_on_ranks(cfg, out, log, rank, tokenizer_from=ck)
    objective = build_objective(cfg.objective, data.vocab, (data.tokenizer.encode, data.tokenizer.decode))
    chosen = resolve_auto(cfg, objective, data, device, log) if ck is None else {
        "size": f"{cfg.size} (the resumed run's)",
        "precision": f"{resolve_precision(cfg.precision, device)} (the resumed run's)"}
    precision = resolve_precision(cfg.precision, device)
    model = model_for_run(cfg, objective, data.vocab, checkpoint=ck, data=data).to(device)
    guard_causality(model, cfg, log, objective)
    sharded = is_sharded(cfg.parallel, cfg.tensor_parallel_head, world)
    fwd: torch.nn.Module = parallelize(model, cfg.parallel, cfg.tensor_parallel_head, world, device)
    if world > 1:
        head = ", vocab-parallel head" if cfg.tensor_parallel_head else ""
        log(f"data parallel: {world} processes ({cfg.parallel.upper()}{head}), each with {torch.get_num_threads()} "
            "threads")
    if cfg.compile:
        fwd = torch.compile(fwd)
    opt = make_optimizer(model, cfg.resolved_optimizer(), cfg.lr, cfg.weight_decay, cfg.embedding_lr_scale,
                         cfg.embedding_weight_decay)
    # fp16 gradients underflow without loss scaling; bf16 and fp32 need none (the scaler is then a no-op)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    state, total = restore(ck, model, opt, scaler, device, planned_steps(cfg), cfg.time_budget, changed, log)
    start_step = state.get("step", 0)
    if rank == 0:
        cfg.save(out / "config.json")
        save_architecture(model, out)
    summary = Summary(params=sum(p.numel() for p in model.parameters()), steps=start_step,
                      tokens=state.get("tokens", 0), flops_per_token=flops_per_token(model, cfg.seq_len),
                      matmul_peak=matmul_peak(precision_dtype(precision), device), chosen=chosen)
    run = Run(cfg, out, device, precision, rank, world, log, data, objective, model, fwd, opt, scaler, sharded,
              start_step, total, summary, stopper, step=start_step, saved_step=start_step if ck else -1,
              spent_before=float(state.get("train_seconds", 0.0)) if ck else 0.0,
              step_seconds=float(state.get("step_seconds", 0.0)) if ck else 0.0,
              warmup_seconds=float(state.get("warmup_seconds", 0.0)) if ck else 0.0)
    run.loader = open_loader(run, ck, state)
    if rank == 0:
        run.metrics = MetricsLog.open(out, cfg.log, cfg, start_step, ck, changed)
    log(f"model: {cfg.backbone}/{cfg.size}, {summary.params / 1e6:.2f}M parameters, vocab {data.vocab.size} "
        f"({data.vocab.base_size} base + {data.vocab.special_size} special), device {device}, "
        f"{precision}, {torch.get_num_threads()} threads")
    log(data.describe(cfg))
    return run


class Diverged(Exception):
    pass


def train_step(run: Run, stream, lr: float) -> tuple[float, bool, float]:  # noqa: ANN001
    """One optimizer step over `grad_accum` micro-batches: (global loss, whether it was applied,
    gradient norm before clipping).
    A non-finite loss or gradient norm is caught before the optimizer touches the weights."""
    cfg = run.cfg
    micro = [next(stream).to(run.device) for _ in range(cfg.grad_accum)]
    # global count: ranks x micro-batches (targets; every position of a weighted example, see Batch.num_items)
    n_items = all_sum(sum(b.num_items for b in micro), run.device)
    for g in run.opt.param_groups:
        g["lr"] = lr
    loss_sum = 0.0
    for b in micro:
        with autocast_for(run.precision, run.device):
            loss = run.fwd(b, num_items_in_batch=max(n_items, 1))
        run.scaler.scale(loss * run.world).backward()  # DDP averages over ranks; the loss is already global
        loss_sum += float(loss.detach())
    run.scaler.unscale_(run.opt)
    params = list(run.model.parameters())
    clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    if run.world > 1:
        norm = clip_grad_norm_(params, clip)  # norm of the full, unsharded gradient
    else:
        norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
    loss_val = all_sum(loss_sum, run.device)
    run.summary.tokens += int(all_sum(sum(int((b.document_ids >= 0).sum()) for b in micro), run.device))
    finite = math.isfinite(loss_val) and math.isfinite(norm)
    if not finite and run.scaler.is_enabled() and math.isfinite(loss_val):
        run.scaler.step(run.opt)  # fp16 overflow: the scaler skips this step and lowers the scale (by design)
        run.scaler.update()
        run.opt.zero_grad(set_to_none=True)
        return loss_val, False, norm
    if not finite:
        run.opt.zero_grad(set_to_none=True)
        if cfg.on_nan == "stop":
            raise Diverged(f"step {run.step + 1}: the loss ({loss_val}) or gradient norm ({norm}) is not finite")
        return loss_val, False, norm
    run.scaler.step(run.opt)
    run.scaler.update()
    run.opt.zero_grad(set_to_none=True)
    return loss_val, True, norm


def train(run: Run) -> None:
    """Steps until the budget is spent; raises Interrupted (signal), Diverged or DiskFullError."""
    cfg, s = run.cfg, run.summary
    stream = run.loader
    bar = Progress(run.total, run.start_step, show=run.rank == 0)
    t_train = time.perf_counter()
    step_times: list[float] = []
    skipped_in_a_row = 0
    timed = run.total is None  # a time budget (no --steps / --tokens): the clock says when to stop
    first_estimate = True
    last_row: dict = {}
    logged_step = -1

    def log_row(row: dict) -> None:
        mtp = run.model.mtp_metrics(all_ranks=True)  # every rank: the global batch's, a collective
        if run.rank == 0:
            run.metrics.write({**row, **mtp})

    per_step_tokens = cfg.batch_size * cfg.seq_len * cfg.grad_accum * run.world
    try:
        run.stopper.deferred = True  # from here a signal stops at the next step boundary
        while True:
            if not timed and run.step >= run.total:  # type: ignore[operator]  # done: a late signal changes nothing
                break
            t0 = time.perf_counter()
            spent = run.spent_before + t0 - t_train
            run.step_seconds = recent_step_seconds(step_times) or run.step_seconds
            go_on = fits(spent, cfg.time_budget, run.step_seconds) if timed else False  # type: ignore[arg-type]
            # one collective: any rank's stop request; rank 0's clock (under a time budget), for every rank
            stop, spent, go_on = all_sums([run.stopper.requested, spent * (run.rank == 0), go_on * (run.rank == 0)],
                                          run.device)
            if timed and not go_on:  # the budget is spent (the rule: budget.py)
                run.total, run.saved_step = run.step, -1  # the final checkpoint records the seconds spent
                bar.set_total(run.step)
                if last_row and last_row["step"] != logged_step:
                    log_row(last_row)
                break
            if stop > 0:
                raise Interrupted(run.stopper.signum or 15)
            if timed and run.step == cfg.warmup:  # the decay starts here, from this point of the budget
                run.warmup_seconds = spent
            progress = decay_progress(spent, run.warmup_seconds, cfg.time_budget) if timed else None  # type: ignore[arg-type]
            lr = lr_at(run.step, run.total, cfg, progress=progress)
            loss_val, applied, norm = train_step(run, stream, lr)
            if not applied:
                s.skipped_batches += 1
                skipped_in_a_row += 1
                run.log(f"step {run.step + 1}: non-finite loss or gradient, batch skipped (--on-nan skip)")
                if skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW and not run.scaler.is_enabled():
                    raise Diverged(f"{skipped_in_a_row} batches in a row had a non-finite loss or gradient")
            else:
                skipped_in_a_row = 0
            run.step += 1
            s.final_loss = loss_val
            dt = time.perf_counter() - t0
            step_times.append(dt)
            s.train_seconds = time.perf_counter() - t_train
            if timed and (est := steps_left(run.step - run.start_step, step_times,  # the bar's estimate
                                            cfg.time_budget - run.spent_before - s.train_seconds)):  # type: ignore[operator]
                more, per = est
                if first_estimate:
                    run.log(describe_time_budget(cfg.time_budget, per, run.step + more, per_step_tokens))  # type: ignore[arg-type]
                    first_estimate = False
                bar.set_total(run.step + more)
            last_row = {"step": run.step, "loss": loss_val, "lr": lr, "grad_norm": norm, "tokens": s.tokens,
                        "tok_per_s": s.tokens / s.train_seconds if run.start_step == 0 else None,
                        "elapsed": s.train_seconds}
            if run.step % cfg.log_every == 0 or run.step == run.total:
                log_row(last_row)
                logged_step = run.step
            bar.step(loss_val, per_step_tokens, dt, s.flops_per_token, s.matmul_peak)
            release_free_memory()  # the heap's freed pages back to the system, every 2 s (train/memory.py)
            periodic_validation(run)
            if cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0:
                save(run)
    finally:
        s.train_seconds = time.perf_counter() - t_train
        s.steps = run.step
        bar.close()


def finish(run: Run, ended: str, message: str, t_wall: float) -> Summary:
    """The one ending: checkpoint (when the weights are good), final evaluation (when done),
    summary.json, loss.png, teardown; the exit code says how the run ended."""
    s = run.summary
    run.stopper.deferred = True  # a signal from here on cannot interrupt the save
    s.ended, s.message = ended, message
    release_free_memory(every=0.0)  # the evaluation starts from the memory the run holds, not what it freed
    try:
        save(run)
        if ended in ("SIGINT", "SIGTERM"):
            run.log(f"\ninterrupted at step {run.step} by {ended}: checkpoint saved in {run.out}; continue with "
                    "--resume")
    except DiskFullError as e:
        s.ended, s.message = "disk full", str(e)
    except CheckpointError as e:  # non-finite weights: keep the last good checkpoint
        s.message = f"{message}; {e}" if message else str(e)
    if s.ended == "done" and not run.stopper.requested:
        try:
            run.stopper.deferred = False
            final_evaluation(run)
        except Interrupted as e:
            s.ended = e.name
            s.message = "stopped during the final evaluation (the checkpoint was saved)"
        finally:
            run.stopper.deferred = True
    s.exit_code = EXIT[s.ended]
    run.metrics.close()
    s.peak_rss_mib = peak_rss_mib(since_restart=False)
    s.wall_seconds = time.perf_counter() - t_wall
    teardown()
    if run.rank == 0:
        s.write(run.out, run.log)
    return s


def run(cfg: TrainConfig, resume: bool | str | None = None, log=print, *, given: set[str] | None = None,  # noqa: ANN001
        overwrite: bool = False) -> Summary:
    """Train as configured; returns the summary (also written to `out/summary.json`).

    resume: None/False (a new run), True or "latest" (the run's latest checkpoint), or a
    checkpoint folder. given: the config fields the user set (the others come from the resumed
    run; None: those that differ from the defaults). overwrite: a new run may replace an earlier
    run's results in `out`."""
    t_wall = time.perf_counter()
    resume = "latest" if resume is True else (resume or None)
    with Stopper() as stopper, output_lock(Path(cfg.out)):
        r = build(cfg, resume, given, overwrite, log, stopper)
        ended, message = "done", ""
        try:
            train(r)
        except Interrupted as e:
            ended = e.name
        except Diverged as e:
            ended, message = "diverged", (f"{e}; the run stopped before the optimizer used it, so the weights of "
                                          f"step {r.step} are intact (lower --lr, or --on-nan skip to drop such "
                                          "batches)")
        except DiskFullError as e:
            ended, message = "disk full", str(e)
        return finish(r, ended, message, t_wall)

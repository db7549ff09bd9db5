"""The training run behind `headway train`, in stages: build, train (steps), evaluate, finish.

Every way a run can end goes through `finish`: it writes a checkpoint of the last good weights
(never non-finite ones), `summary.json` with how the run ended, and the exit code:

    0 done · 2 bad input · 3 diverged (non-finite loss or gradient) · 4 disk full
    130 SIGINT · 143 SIGTERM
"""

from __future__ import annotations

import copy
import json
import math
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headway.check import check_causal
from headway.data.loader import Loader, merge_rank_states
from headway.models import build_model
from headway.models.lm import LanguageModel
from headway.objectives import build_objective, text_lead
from headway.recipe import lr_schedule
from headway.train.checkpoint import (
    CheckpointError,
    DiskFullError,
    check_writable,
    disk_full_message,
    load_checkpoint,
    resolve,
    save_checkpoint,
    verify,
)
from headway.train.config import TrainConfig, merge_for_resume
from headway.train.data import RunData, prepare_run_data
from headway.train.distributed import all_gather_object, all_sum, barrier, broadcast_int, setup, teardown
from headway.train.flops import flops_per_token, matmul_peak
from headway.train.loggers import Loggers, check_installed
from headway.train.metrics import EvalResult, compressor_bits_per_byte, evaluate
from headway.train.optim import make_optimizer
from headway.train.outdir import claim_output_folder, output_lock, trim_metrics
from headway.train.parallel import clip_grad_norm_, is_sharded, parallelize
from headway.train.runs import loss_options
from headway.train.sharded_checkpoint import load_sharded_checkpoint, save_sharded_checkpoint
from headway.train.signals import Interrupted, Stopper
from headway.types import Objective

CALIBRATE_AT = 30  # with a time budget, the total step count is first set from the speed of steps 10..30
RECALIBRATE_EVERY = 50  # ... and set again every 50 steps from the time left and the recent speed
MAX_SKIPPED_IN_A_ROW = 20  # --on-nan skip: this many bad batches in a row stop the run anyway
EXIT = {"done": 0, "diverged": 3, "disk full": 4, "SIGINT": 128 + 2, "SIGTERM": 128 + 15}


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


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` at `total` (`headway.recipe.lr_schedule`)."""
    return lr_schedule(step, total, cfg.lr, cfg.warmup, cfg.min_lr_ratio)


def _quiet(*_a: object, **_k: object) -> None:
    pass


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def _planned_steps(cfg: TrainConfig) -> int | None:
    per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum
    if cfg.steps is not None:
        return cfg.steps
    if cfg.tokens is not None:
        return max(1, math.ceil(cfg.tokens / per_step))
    return None


def make_model(cfg: TrainConfig, objective: Objective, vocab) -> LanguageModel:  # noqa: ANN001
    """The model an objective needs: a gated SSM gets its backward branch when the objective needs
    bidirectional context (its direction is in its weights); the transformer follows each batch's
    mask spec. An objective that needs both directions at once on the SSM is refused."""
    bidirectional = objective.needs_bidirectional and cfg.backbone == "gated_ssm"
    if bidirectional and objective.trains_left_to_right:
        raise ValueError(f"--objective {cfg.objective}: mixes MLM (bidirectional) with left-to-right objectives; the "
                         "gated SSM's direction is fixed in its weights, so it cannot do both. Use --backbone "
                         "transformer (its mask follows each example) or train them separately")
    recipe = {"activation": cfg.activation, "qk_norm": cfg.qk_norm, "zero_init": cfg.zero_init} \
        if cfg.backbone == "transformer" else {}
    return build_model(vocab, cfg.backbone, cfg.size, bidirectional=bidirectional, loss=loss_options(cfg), **recipe,
                       tie_head=not cfg.tensor_parallel_head)


def _guard_causality(model: LanguageModel, cfg: TrainConfig, log, objective: Objective | None = None) -> None:  # noqa: ANN001
    if objective is not None and not objective.trains_left_to_right:
        return
    # zero-initialized projections make every output independent of every input at init, which no
    # detector can tell from causal: check a copy whose all-zero matrices are drawn at random instead
    probe = copy.deepcopy(model)
    with torch.no_grad():
        for p in probe.parameters():
            if p.dim() >= 2 and not bool(p.any()):
                p.normal_(0.0, 0.02)
    rep = check_causal(probe, lengths=(16, 17))  # both detectors, train and eval mode
    if not rep.ok:
        msg = (f"the {cfg.backbone} backbone is not causal ({rep}); a causal objective ({cfg.objective}) would "
               "teach it to copy the future. Pass --allow-leak to train anyway.")
        if not cfg.allow_leak:
            raise ValueError(msg)
        log("WARNING: " + msg)


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix products several times faster than float32 on this CPU.
    The environment variable HEADWAY_FAST_BF16=1/0 overrides the reading, so `--precision auto`
    (and a whole test run) can take either CPU kind's path on any machine."""
    forced = os.environ.get("HEADWAY_FAST_BF16")
    if forced is not None:
        return forced != "0"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def _autocast(precision: str, device: torch.device):  # noqa: ANN202
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _progress(total: int | None, initial: int):  # noqa: ANN202
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=1.0)


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
    metrics: Any = None
    loggers: Any = None
    step: int = 0
    saved_step: int = -1
    spent_before: float = 0.0  # training seconds of the earlier parts of a resumed run


def build(cfg: TrainConfig, resume: str | None, given: set[str] | None, overwrite: bool, log,  # noqa: ANN001
          stopper: Stopper) -> Run:
    """Validate everything, then data, model, optimizer and (on resume) their saved state."""
    cfg.check()
    check_installed(cfg.log)
    device = pick_device(cfg.device)
    out = Path(cfg.out)
    rank, world = setup(device)
    if rank != 0:
        log = _quiet  # one process logs
    ck, state, changed = None, {}, {}
    if resume is not None:
        ck = resolve(Path(resume) if resume != "latest" else out)
        try:
            verify(ck, need_optimizer=True)
        except CheckpointError as e:
            from headway.train.checkpoint import newest_intact

            alt = newest_intact(ck.parent)
            hint = f"; the newest intact checkpoint is {alt}: resume from it with --resume {alt}" if alt else ""
            raise CheckpointError(f"{e}{hint}") from None
        saved = TrainConfig.load(ck / "config.json")
        if given is None:  # a library call: the fields set away from their defaults
            given = {k for k, v in vars(cfg).items() if v != getattr(TrainConfig(), k)}
        cfg, changed = merge_for_resume(saved, cfg, given)
        cfg.check()
        check_installed(cfg.log)
    check_writable(out, need_bytes=64 * 2**20)
    if rank == 0:
        claim_output_folder(out, resume is not None, overwrite)
    precision = resolve_precision(cfg.precision, device)
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(cfg.seed)
    if rank == 0:  # rank 0 prepares the shards (on every core); the others then open them
        data = prepare_run_data(cfg, out, log, tokenizer_from=ck)
    barrier()
    if rank != 0:
        data = prepare_run_data(cfg, out, log, tokenizer_from=ck, first=False)
    objective = build_objective(cfg.objective, data.vocab, (data.tokenizer.encode, data.tokenizer.decode))
    model = make_model(cfg, objective, data.vocab).to(device)
    _guard_causality(model, cfg, log, objective)
    sharded = is_sharded(cfg.parallel, cfg.tensor_parallel_head, world)
    fwd: torch.nn.Module = parallelize(model, cfg.parallel, cfg.tensor_parallel_head, world, device)
    if world > 1:
        head = ", vocab-parallel head" if cfg.tensor_parallel_head else ""
        log(f"data parallel: {world} processes ({cfg.parallel.upper()}{head}), each with {torch.get_num_threads()} "
            "threads")
    if cfg.compile:
        fwd = torch.compile(fwd)
    opt = make_optimizer(model, cfg.resolved_optimizer(), cfg.lr, cfg.weight_decay)
    # fp16 gradients underflow without loss scaling; bf16 and fp32 need none (the scaler is then a no-op)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    total = _planned_steps(cfg)
    start_step = 0
    if ck is not None:
        state = load_sharded_checkpoint(ck, model, opt) if (ck / "dcp").is_dir() else load_checkpoint(
            ck, model, opt, device)
        if "scaler" in state and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        start_step = state["step"]
        if total is None and not ({"time_budget"} & set(changed)):
            total = state.get("total_steps")
        if total is not None and total <= start_step:
            raise ValueError(f"--resume: the checkpoint is at step {start_step} and the run's budget is {total} "
                             "steps: nothing to train; pass a larger --steps (or --tokens / --time-budget)")
        log(f"resumed from step {start_step}" + (f" of {total}" if total else "") + (
            f"; changed: {', '.join(f'--{k.replace(chr(95), chr(45))} {v[0]} -> {v[1]}' for k, v in changed.items())}"
            if changed else ""))
    if rank == 0:
        cfg.save(out / "config.json")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    summary = Summary(params=sum(p.numel() for p in model.parameters()), steps=start_step,
                      tokens=state.get("tokens", 0), flops_per_token=flops_per_token(model, cfg.seq_len),
                      matmul_peak=matmul_peak(dtype, device))
    run = Run(cfg, out, device, precision, rank, world, log, data, objective, model, fwd, opt, scaler, sharded,
              start_step, total, summary, stopper, step=start_step, saved_step=start_step if ck else -1,
              spent_before=float(state.get("train_seconds", 0.0)) if ck else 0.0)
    if ck is not None and "data" not in state:
        raise CheckpointError(f"{ck} has no data position (a checkpoint of an older headway); start a new run")
    run.loader = data.loader(objective, cfg, rank, world, state.get("data"))
    if ck is not None and not run.loader.exact:
        log(f"data: the checkpoint was made with {state['data']['streams']} data streams and this run has "
            f"{run.loader.spec.streams} (--loader-workers or the number of processes changed): continuing from the "
            "same position in the data, with other batches than the uninterrupted run")
    if rank == 0:
        trim_metrics(out / "metrics.jsonl", start_step)
        run.metrics = (out / "metrics.jsonl").open("a")
        run.loggers = Loggers(cfg.log, out, cfg, ck is not None)
        if ck is not None:
            _write(run, {"step": start_step, "resumed_from": str(ck), "changed": changed})
    log(f"model: {cfg.backbone}/{cfg.size}, {summary.params / 1e6:.2f}M parameters, vocab {data.vocab.size} "
        f"({data.vocab.base_size} base + {data.vocab.special_size} special), device {device}, "
        f"{precision}, {torch.get_num_threads()} threads")
    tr, va = data.prepared.totals("train"), data.prepared.totals("val")
    log(f"data: {data.corpus_name}: {tr['docs']:,} train / {va['docs']:,} validation documents, "
        f"{tr['tokens'] / 1e6:.2f}M train tokens, objective {cfg.objective}, "
        f"{cfg.resolved_loader_workers()} loader worker(s)")
    return run


def _write(run: Run, rec: dict) -> None:
    if run.loggers is not None:
        run.loggers.log(rec)
    if run.metrics is not None:
        try:
            run.metrics.write(json.dumps(rec) + "\n")
            run.metrics.flush()
        except OSError as e:
            raise DiskFullError(disk_full_message(e, run.out) or f"cannot write {run.out / 'metrics.jsonl'}: "
                                f"{e.strerror or e}") from None


def save(run: Run) -> None:
    """Checkpoint the current step (once per step) with everything needed to resume exactly."""
    if run.saved_step == run.step:
        return
    cfg, s = run.cfg, run.summary
    st = {"total_steps": run.total, "tokens": s.tokens, "seed": cfg.seed, "world_size": run.world,
          "train_seconds": run.spent_before + s.train_seconds}
    if run.scaler.is_enabled():
        st["scaler"] = run.scaler.state_dict()
    if run.loader is not None:  # the data position of every rank: an exact, O(1) resume
        st["data"] = merge_rank_states(all_gather_object(run.loader.state_dict()))
    extras = {"config.json": run.out / "config.json", "tokenizer.json": run.out / "tokenizer.json"}
    if run.sharded:
        save_sharded_checkpoint(run.out, run.step, run.model, run.opt, st, extras, run.rank, cfg.keep_checkpoints)
    else:
        if run.rank == 0:
            save_checkpoint(run.out, run.step, run.model, run.opt, st, extras, cfg.keep_checkpoints)
        barrier()
    run.saved_step = run.step


def validate(run: Run, max_tokens: int | None) -> tuple[EvalResult, list[np.ndarray]]:
    """Bits per byte on the validation documents within `max_tokens` (None: all); also returns them."""
    cfg = run.cfg
    docs, nbytes = run.data.val_docs(max_tokens)
    with _autocast(run.precision, run.device):
        r = evaluate(run.model, docs, nbytes, run.data.vocab.eos, run.data.vocab.pad, cfg.seq_len, cfg.batch_size,
                     run.device, cfg.eval_stride or cfg.seq_len // 2, run.rank, run.world,
                     should_stop=run.stopper.raise_if_requested, lead=text_lead(run.objective, run.data.vocab.eos))
    return r, docs


class Diverged(Exception):
    pass


def train_step(run: Run, stream, lr: float) -> tuple[float, bool, float]:  # noqa: ANN001
    """One optimizer step over `grad_accum` micro-batches: (global loss, whether it was applied,
    gradient norm before clipping).
    A non-finite loss or gradient norm is caught before the optimizer touches the weights."""
    cfg = run.cfg
    micro = [next(stream).to(run.device) for _ in range(cfg.grad_accum)]
    n_items = all_sum(sum(b.num_targets for b in micro), run.device)  # global count: ranks x micro-batches
    for g in run.opt.param_groups:
        g["lr"] = lr
    loss_sum = 0.0
    for b in micro:
        with _autocast(run.precision, run.device):
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
    bar = _progress(run.total, run.start_step) if run.rank == 0 else None
    t_train = time.perf_counter()
    step_times: list[float] = []
    skipped_in_a_row = 0
    timed = run.total is None  # a time budget (no --steps / --tokens): the step count follows the clock
    per_step_tokens = cfg.batch_size * cfg.seq_len * cfg.grad_accum * run.world
    try:
        run.stopper.deferred = True  # from here a signal stops at the next step boundary
        while run.total is None or run.step < run.total:
            if all_sum(1.0 if run.stopper.requested else 0.0, run.device) > 0:  # every rank stops together
                raise Interrupted(run.stopper.signum or 15)
            t0 = time.perf_counter()
            lr = lr_at(run.step, run.total or 10**9, cfg)
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
            done = run.step - run.start_step
            if timed and (done == CALIBRATE_AT or (done > CALIBRATE_AT and done % RECALIBRATE_EVERY == 0)):
                # the budget is wall time of training (evaluations included): when the machine slows down or an
                # evaluation takes a while, the remaining steps shrink so the run still ends on time
                per = float(np.median(step_times[-RECALIBRATE_EVERY:] if done > CALIBRATE_AT else step_times[10:]))
                left = cfg.time_budget - run.spent_before - s.train_seconds  # type: ignore[operator]
                first = run.total is None
                run.total = broadcast_int(run.step + max(0, int(left / per)), run.device)  # every rank stops together
                if bar is not None:
                    bar.total = run.total
                    bar.refresh()
                if first:
                    run.log(f"time budget {cfg.time_budget:.0f}s at {per * 1000:.0f} ms/step: training for about "
                            f"{run.total} steps ({run.total * per_step_tokens / 1e6:.1f}M tokens; re-estimated every "
                            f"{RECALIBRATE_EVERY} steps)")
            if run.rank == 0 and (run.step % cfg.log_every == 0 or run.step == run.total):
                _write(run, {"step": run.step, "loss": loss_val, "lr": lr, "grad_norm": norm, "tokens": s.tokens,
                             "tok_per_s": s.tokens / s.train_seconds if run.start_step == 0 else None,
                             "elapsed": s.train_seconds})
            if bar is not None:
                bar.set_postfix(loss=f"{loss_val:.3f}", tok_s=f"{per_step_tokens / dt:.0f}",
                                mfu=f"{per_step_tokens / dt * s.flops_per_token / s.matmul_peak:.0%}")
                bar.update(1)
            if cfg.eval_every and run.step % cfg.eval_every == 0 and run.step != run.total:
                r, _ = validate(run, cfg.eval_tokens)
                if run.rank == 0:
                    _write(run, {"step": run.step, "val_loss": r.loss, "val_bpb": r.bits_per_byte,
                                 "val_tokens": r.tokens, "subset": cfg.eval_tokens is not None})
                run.log(f"step {run.step}: val loss {r.loss:.4f}, {r.bits_per_byte:.4f} bits/byte")
            if cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0:
                save(run)
    finally:
        s.train_seconds = time.perf_counter() - t_train
        s.steps = run.step
        if bar is not None:
            bar.close()


def final_evaluation(run: Run) -> None:
    """Validation bits per byte (within --final-eval-tokens), the compressors on the same documents,
    the infill demo."""
    s = run.summary
    if not run.objective.trains_left_to_right:
        return  # left-to-right bits per byte mean nothing for a bidirectional (MLM) model
    r, docs = validate(run, run.cfg.final_eval_tokens or None)
    if r.tokens == 0:
        s.val = {"tokens": 0, "note": "no validation tokens (every validation document is empty)"}
        run.log("validation: no tokens (every validation document is empty)")
        return
    s.val = {"loss": r.loss, "perplexity": r.perplexity, "bits_per_byte": r.bits_per_byte, "tokens": r.tokens,
             "bytes": r.bytes, "whole_split": r.tokens >= run.data.prepared.totals("val")["tokens"]}
    texts = [run.data.tokenizer.decode(d.tolist()) for d in docs]
    if run.rank == 0:
        _write(run, {"step": run.step, "val_loss": r.loss, "val_bpb": r.bits_per_byte, "val_tokens": r.tokens,
                     "subset": False})
        s.compressors = compressor_bits_per_byte(texts)
    if (run.rank == 0 or run.sharded) and run.model.backbone.causal:  # sharded: generating is a collective
        s.infill = demo_infill(run.model, run.data)
        if run.cfg.infill_lines:
            from headway.train.infill_eval import infill_lines, pick_lines

            lines = pick_lines(texts, run.cfg.infill_lines, run.cfg.seed)
            run.log(f"scoring single-line infilling on {len(lines)} validation lines")
            with _autocast(run.precision, run.device):
                res = infill_lines(run.model, run.data.tokenizer, run.data.vocab, lines, run.cfg.seq_len,
                                   lead=text_lead(run.objective, run.data.vocab.eos))
            s.infill_eval = {"lines": res.lines, "fim_exact": res.fim_exact, "prefix_exact": res.prefix_exact,
                             "fim_chars": res.fim_chars, "prefix_chars": res.prefix_chars, "layout": res.layout,
                             "fim_bits": res.fim_bits, "prefix_bits": res.prefix_bits, "examples": res.examples}


def finish(run: Run, ended: str, message: str, t_wall: float) -> Summary:
    """The one ending: checkpoint (when the weights are good), final evaluation (when done),
    summary.json, loss.png, teardown; the exit code says how the run ended."""
    s = run.summary
    run.stopper.deferred = True  # a signal from here on cannot interrupt the save
    s.ended, s.message = ended, message
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
    if run.metrics is not None:
        try:
            run.metrics.close()
        except OSError:
            pass  # a full disk: already reported
    if run.loggers is not None:
        run.loggers.close()
    s.peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    s.wall_seconds = time.perf_counter() - t_wall
    teardown()
    if run.rank != 0:
        return s
    try:
        (run.out / "summary.json").write_text(json.dumps({**s.__dict__, "tokens_per_second": s.tokens_per_second,
                                                          "mfu": s.mfu},
                                                         indent=2, default=str))
        from headway.train.plots import plot_metrics

        plot_metrics(run.out / "metrics.jsonl", run.out / "loss.png")
    except ImportError:
        run.log("matplotlib is not installed: no loss.png")
    except OSError as e:
        run.log(f"could not write summary.json / loss.png in {run.out}: {e.strerror or e}")
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


# the prefix ends on a token boundary: a byte-level BPE attaches a word's leading space to the word
# (" sys"), so a prefix ending in "import " would end on a token training never shows there
DEMO = ("import os\nimport", "\n\n\ndef main():\n    print(sys.argv[1:], os.getcwd())\n")


def demo_infill(model: LanguageModel, data: RunData, prefix: str = DEMO[0], suffix: str = DEMO[1]) -> dict:
    """Single-line infilling (greedy, cut at the first line break), as in single-line FIM evals; the
    middle is not empty (its first token is not a special one)."""
    tok, vocab = data.tokenizer, data.vocab
    dev = next(model.parameters()).device
    text_ids = torch.arange(vocab.size, device=dev) < vocab.base_size
    mid = model.infill(torch.tensor(tok.encode(prefix), device=dev), torch.tensor(tok.encode(suffix), device=dev),
                       vocab, max_new_tokens=16, temperature=0.0, first_allowed=text_ids)
    return {"prefix": prefix, "suffix": suffix, "middle": tok.decode(mid.tolist()).split("\n")[0]}



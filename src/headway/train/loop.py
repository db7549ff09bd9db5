"""The training loop behind `headway train`."""

from __future__ import annotations

import json
import math
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from headway.check import check_causal
from headway.models import build_model
from headway.models.lm import LanguageModel
from headway.objectives import build_objective
from headway.train.checkpoint import check_writable, load_checkpoint, resolve, save_checkpoint
from headway.train.config import TrainConfig
from headway.train.data import RunData, batches, prepare
from headway.train.distributed import all_sum, barrier, broadcast_int, setup, teardown
from headway.train.metrics import EvalResult, compressor_bits_per_byte, evaluate
from headway.train.parallel import clip_grad_norm_, is_sharded, parallelize
from headway.train.sharded_checkpoint import load_sharded_checkpoint, save_sharded_checkpoint

CALIBRATE_AT = 30  # with a time budget, the total step count is fixed from the speed of steps 10..30


@dataclass
class Summary:
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
    interrupted: bool = False

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds else 0.0


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` at `total`."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = min(1.0, (step - cfg.warmup) / max(1, total - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


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


def _make_model(cfg: TrainConfig, data: RunData) -> LanguageModel:
    bidirectional = cfg.objective.strip() == "mlm" and cfg.backbone == "gated_ssm"
    return build_model(data.vocab, cfg.backbone, cfg.size, bidirectional=bidirectional, z_loss=cfg.z_loss,
                       tie_head=not cfg.tensor_parallel_head)


def _guard_causality(model: LanguageModel, cfg: TrainConfig, log) -> None:  # noqa: ANN001
    if cfg.objective.strip() == "mlm":
        return
    rep = check_causal(model, seq_len=16)
    if not rep.ok:
        msg = (f"the {cfg.backbone} backbone is not causal ({rep}); a causal objective ({cfg.objective}) would "
               "teach it to copy the future. Pass --allow-leak to train anyway.")
        if not cfg.allow_leak:
            raise ValueError(msg)
        log("WARNING: " + msg)


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix products several times faster than float32 on this CPU."""
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


def run(cfg: TrainConfig, resume: bool = False, log=print) -> Summary:  # noqa: ANN001, C901
    """Train as configured; returns the summary (also written to `out/summary.json`)."""
    t_wall = time.perf_counter()
    cfg.check()
    out = Path(cfg.out)
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    rank, world = setup(device)
    if rank != 0:
        log = _quiet  # one process logs
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(cfg.seed)
    start_step, state = 0, {}
    if resume:
        ck = resolve(out)
        saved = TrainConfig.load(ck / "config.json")
        saved.out, saved.steps, saved.tokens, saved.time_budget = cfg.out, cfg.steps, cfg.tokens, cfg.time_budget
        cfg = saved
    check_writable(out, need_bytes=64 * 2**20)
    if rank == 0:  # rank 0 trains the tokenizer and fills the cache; the others then read it
        data = prepare(cfg, out, log)
    barrier()
    if rank != 0:
        data = prepare(cfg, out, log)
    model = _make_model(cfg, data).to(device)
    _guard_causality(model, cfg, log)
    n_params = sum(p.numel() for p in model.parameters())
    objective = build_objective(cfg.objective, data.vocab, (data.tokenizer.encode, data.tokenizer.decode))
    sharded = is_sharded(cfg.parallel, cfg.tensor_parallel_head, world)
    fwd: torch.nn.Module = parallelize(model, cfg.parallel, cfg.tensor_parallel_head, world, device)
    if world > 1:
        head = ", vocab-parallel head" if cfg.tensor_parallel_head else ""
        log(f"data parallel: {world} processes ({cfg.parallel.upper()}{head}), each with {torch.get_num_threads()} "
            "threads")
    if cfg.compile:
        fwd = torch.compile(fwd)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    total = _planned_steps(cfg)
    if resume:
        if (resolve(out) / "dcp").is_dir():
            state = load_sharded_checkpoint(out, model, opt)
        else:
            state = load_checkpoint(out, model, opt, device)
        start_step = state["step"]
        total = state.get("total_steps") or total
        log(f"resumed from step {start_step} of {total}")
    cfg.save(out / "config.json")
    log(f"model: {cfg.backbone}/{cfg.size}, {n_params / 1e6:.2f}M parameters, vocab {data.vocab.size} "
        f"({data.vocab.base_size} base + {data.vocab.special_size} special), device {device}, "
        f"{precision}, {torch.get_num_threads()} threads")
    log(f"data: {data.corpus_name}: {len(data.train)} train / {len(data.val)} validation documents, "
        f"{sum(len(t) for t in data.train) / 1e6:.2f}M train tokens, objective {cfg.objective}")
    stream = batches(data.train, objective, cfg, data.vocab.pad, skip=start_step * cfg.grad_accum, rank=rank,
                     world=world, starts_char=data.tokenizer.starts_char())
    metrics = (out / "metrics.jsonl").open("a") if rank == 0 else open(os.devnull, "w")
    summary = Summary(params=n_params, steps=start_step, tokens=state.get("tokens", 0))
    bar = _progress(total, start_step) if rank == 0 else None
    extras = {"config.json": out / "config.json", "tokenizer.json": out / "tokenizer.json"}

    def ckpt(step: int) -> None:
        st = {"total_steps": total, "tokens": summary.tokens, "seed": cfg.seed, "world_size": world}
        if sharded:
            save_sharded_checkpoint(out, step, model, opt, st, extras, rank)
            return
        if rank == 0:
            save_checkpoint(out, step, model, opt, st, extras)
        barrier()

    def val(max_tokens: int | None) -> EvalResult:
        with _autocast(precision, device):
                return evaluate(model, data.val, data.val_bytes, data.vocab.eos, data.vocab.pad, cfg.seq_len,
                            cfg.batch_size, device, max_tokens, cfg.eval_stride or cfg.seq_len // 2, rank, world)

    step = start_step
    t_train = time.perf_counter()
    step_times: list[float] = []
    loss_val = float("nan")
    try:
        while total is None or step < total:
            t0 = time.perf_counter()
            micro = [next(stream).to(device) for _ in range(cfg.grad_accum)]
            n_items = all_sum(sum(b.num_targets for b in micro), device)  # global count: ranks x micro-batches
            lr = lr_at(step, total or 10**9, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            loss_sum = 0.0
            for b in micro:
                with _autocast(precision, device):
                    loss = fwd(b, num_items_in_batch=max(n_items, 1))
                (loss * world).backward()  # DDP averages gradients over ranks; the loss is already global
                loss_sum += float(loss.detach())
            if cfg.grad_clip > 0 and world > 1:
                clip_grad_norm_(list(model.parameters()), cfg.grad_clip)  # norm of the full, unsharded gradient
            elif cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            loss_val = all_sum(loss_sum, device)
            summary.tokens += int(all_sum(sum(int((b.document_ids >= 0).sum()) for b in micro), device))
            dt = time.perf_counter() - t0
            step_times.append(dt)
            if total is None and step - start_step == CALIBRATE_AT:
                per = float(np.median(step_times[10:]))
                left = cfg.time_budget - (time.perf_counter() - t_train)  # type: ignore[operator]
                total = broadcast_int(step + max(1, int(left / per)), device)  # every rank stops together
                if bar is not None:
                    bar.total = total
                    bar.refresh()
                log(f"time budget {cfg.time_budget:.0f}s at {per * 1000:.0f} ms/step: training for {total} steps "
                    f"({total * cfg.batch_size * cfg.seq_len * cfg.grad_accum / 1e6:.1f}M tokens)")
            elapsed = time.perf_counter() - t_train
            if rank == 0 and (step % cfg.log_every == 0 or step == total):
                rec = {"step": step, "loss": loss_val, "lr": lr, "tokens": summary.tokens,
                       "tok_per_s": summary.tokens / elapsed if start_step == 0 else None, "elapsed": elapsed}
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
            if bar is not None:
                tok_s = cfg.batch_size * cfg.seq_len * cfg.grad_accum * world / dt
                bar.set_postfix(loss=f"{loss_val:.3f}", tok_s=f"{tok_s:.0f}")
                bar.update(1)
            if cfg.eval_every and step % cfg.eval_every == 0 and step != total:
                r = val(cfg.eval_tokens)
                if rank == 0:
                    metrics.write(json.dumps({"step": step, "val_loss": r.loss, "val_bpb": r.bits_per_byte,
                                              "val_tokens": r.tokens, "subset": cfg.eval_tokens is not None}) + "\n")
                log(f"step {step}: val loss {r.loss:.4f}, {r.bits_per_byte:.4f} bits/byte")
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                ckpt(step)
    except KeyboardInterrupt:
        summary.interrupted = True
        if bar is not None:
            bar.close()
        ckpt(step)
        log(f"\ninterrupted at step {step}: checkpoint saved in {out}; continue with --resume")
        metrics.close()
        summary.steps = step
        return summary
    if bar is not None:
        bar.close()
    summary.train_seconds = time.perf_counter() - t_train
    summary.steps, summary.final_loss = step, loss_val
    ckpt(step)
    if cfg.objective.strip() != "mlm":
        r = val(None)
        summary.val = {"loss": r.loss, "perplexity": r.perplexity, "bits_per_byte": r.bits_per_byte,
                       "tokens": r.tokens, "bytes": r.bytes}
        if rank == 0:
            metrics.write(json.dumps({"step": step, "val_loss": r.loss, "val_bpb": r.bits_per_byte,
                                      "val_tokens": r.tokens, "subset": False}) + "\n")
        if rank == 0:
            summary.compressors = compressor_bits_per_byte(data.val_texts)
        if (rank == 0 or sharded) and model.backbone.causal:  # sharded: generating is a collective
            summary.infill = demo_infill(model, data)
    metrics.close()
    summary.peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary.wall_seconds = time.perf_counter() - t_wall
    teardown()
    if rank != 0:
        return summary
    (out / "summary.json").write_text(json.dumps({**summary.__dict__, "tokens_per_second": summary.tokens_per_second},
                                                 indent=2))
    try:
        from headway.train.plots import plot_metrics

        plot_metrics(out / "metrics.jsonl", out / "loss.png")
    except ImportError:
        log("matplotlib is not installed: no loss.png")
    return summary


DEMO = ("import os\nimport ", "\n\n\ndef main():\n    print(sys.argv[1:], os.getcwd())\n")


def demo_infill(model: LanguageModel, data: RunData, prefix: str = DEMO[0], suffix: str = DEMO[1]) -> dict:
    """Single-line infilling (greedy, cut at the first line break), as in single-line FIM evals."""
    tok = data.tokenizer
    dev = next(model.parameters()).device
    mid = model.infill(torch.tensor(tok.encode(prefix), device=dev), torch.tensor(tok.encode(suffix), device=dev),
                       data.vocab, max_new_tokens=16, temperature=0.0)
    return {"prefix": prefix, "suffix": suffix, "middle": tok.decode(mid.tolist()).split("\n")[0]}

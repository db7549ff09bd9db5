"""Resuming a run exactly: what a checkpoint of a run holds (`save`), and how a new process picks
it up again — the checkpoint to start from and the config merged with the saved one
(`open_resume`), then the weights, optimizer, loss scaler and step budget (`restore`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from headway.data.loader import Loader, merge_rank_states
from headway.train.budget import fits
from headway.train.checkpoint import CheckpointError, load_checkpoint, newest_intact, resolve, save_checkpoint, verify
from headway.train.config import TrainConfig, merge_for_resume
from headway.train.distributed import all_gather_object, barrier
from headway.train.loggers import check_installed
from headway.train.runs import ARCHITECTURE_FILE
from headway.train.sharded_checkpoint import load_sharded_checkpoint, save_sharded_checkpoint

if TYPE_CHECKING:
    from headway.train.loop import Run


def open_resume(resume: str | None, out: Path, cfg: TrainConfig,
                given: set[str] | None) -> tuple[Path | None, TrainConfig, dict[str, list]]:
    """The checkpoint `resume` names ("latest": the newest in `out`; None: a new run), verified (a
    damaged one is refused, naming the newest intact one), the config to run (`cfg`'s `given`
    fields over the saved run's; None: those that differ from the defaults) and what changed."""
    if resume is None:
        return None, cfg, {}
    ck = resolve(Path(resume) if resume != "latest" else out)
    try:
        verify(ck, need_optimizer=True)
    except CheckpointError as e:
        alt = newest_intact(ck.parent)
        hint = f"; the newest intact checkpoint is {alt}: resume from it with --resume {alt}" if alt else ""
        raise CheckpointError(f"{e}{hint}") from None
    saved = TrainConfig.load(ck / "config.json")
    if given is None:  # a library call: the fields set away from their defaults
        given = {k for k, v in vars(cfg).items() if v != getattr(TrainConfig(), k)}
    if "teacher" in given and cfg.teacher:  # as the run pinned it: the checkpoint a run folder names now
        from headway.train.teacher import teacher_folder

        cfg.teacher = str(teacher_folder(cfg.teacher)[1])
    cfg, changed = merge_for_resume(saved, cfg, given)
    cfg.check()
    check_installed(cfg.log)
    return ck, cfg, changed


def restore(ck: Path | None, model: torch.nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
            device: torch.device, total: int | None, time_budget: float | None, changed: dict[str, list],
            log: Callable[[str], object]) -> tuple[dict, int | None]:
    """Load checkpoint `ck` into the model, optimizer and scaler; returns its saved state and the
    run's step budget `total` (None under a time budget: the resumed run trains what is left of
    `time_budget` seconds, the earlier parts' seconds counted). A budget already spent is refused.
    A new run (`ck` None): no state, `total`."""
    if ck is None:
        return {}, total
    state = load_sharded_checkpoint(ck, model, opt) if (ck / "dcp").is_dir() else load_checkpoint(
        ck, model, opt, device)
    if "scaler" in state and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    start_step = state["step"]
    if total is not None and total <= start_step:
        raise ValueError(f"--resume: the checkpoint is at step {start_step} and the run's budget is {total} "
                         "steps: nothing to train; pass a larger --steps (or --tokens / --time-budget)")
    spent = float(state.get("train_seconds", 0.0))
    per_step = float(state.get("step_seconds", 0.0)) or spent / max(1, start_step)  # older checkpoints: an upper bound
    if total is None and time_budget is not None and not fits(spent, time_budget, per_step):
        raise ValueError(f"--resume: the checkpoint has trained {spent:.1f} s of the run's {time_budget:g} s time "
                         f"budget, and a step takes {per_step:.2f} s: nothing to train; pass a larger --time-budget "
                         "(or --steps / --tokens)")
    left = f" of {total}" if total else (f", {time_budget - spent:.0f} s of the time budget left" if time_budget
                                         else "")
    log(f"resumed from step {start_step}" + left + (
        f"; changed: {', '.join(f'--{k.replace(chr(95), chr(45))} {v[0]} -> {v[1]}' for k, v in changed.items())}"
        if changed else ""))
    return state, total


def open_loader(run: Run, ck: Path | None, state: dict) -> Loader:
    """The run's batch stream, from the checkpoint's data position on resume (a checkpoint without
    one is refused); with another number of data streams than the checkpoint's it continues from the
    same position with other batches than the uninterrupted run, and says so."""
    if ck is not None and "data" not in state:
        raise CheckpointError(f"{ck} has no data position (a checkpoint of an older headway); start a new run")
    loader = run.data.loader(run.objective, run.cfg, run.rank, run.world, state.get("data"))
    if ck is not None and not loader.exact:
        run.log(f"data: the checkpoint was made with {state['data']['streams']} data streams and this run has "
                f"{loader.spec.streams} (--loader-workers or the number of processes changed): continuing from the "
                "same position in the data, with other batches than the uninterrupted run")
    return loader


def save(run: Run) -> None:
    """Checkpoint the current step (once per step) with everything needed to resume exactly."""
    if run.saved_step == run.step:
        return
    cfg, s = run.cfg, run.summary
    st = {"total_steps": run.total, "tokens": s.tokens, "seed": cfg.seed, "world_size": run.world,
          "train_seconds": run.spent_before + s.train_seconds, "step_seconds": run.step_seconds,
          "warmup_seconds": run.warmup_seconds}
    if run.scaler.is_enabled():
        st["scaler"] = run.scaler.state_dict()
    if run.loader is not None:  # the data position of every rank: an exact, O(1) resume
        st["data"] = merge_rank_states(all_gather_object(run.loader.state_dict()))
    extras = {"config.json": run.out / "config.json", "tokenizer.json": run.out / "tokenizer.json"}
    if (run.out / ARCHITECTURE_FILE).exists():  # an hf: backbone's resolved transformers config
        extras[ARCHITECTURE_FILE] = run.out / ARCHITECTURE_FILE
    if run.sharded:
        save_sharded_checkpoint(run.out, run.step, run.model, run.opt, st, extras, run.rank, cfg.keep_checkpoints)
    else:
        if run.rank == 0:
            save_checkpoint(run.out, run.step, run.model, run.opt, st, extras, cfg.keep_checkpoints)
        barrier()
    run.saved_step = run.step

"""Checkpoints: `model.safetensors` + `optimizer.pt` + `state.json` (+ config, tokenizer) per folder.

A checkpoint is written to a temporary folder and renamed into place, and `latest` is updated by
an atomic rename too, so an interrupted or failed write never replaces the last good checkpoint.
`state.json` records the SHA-256 of every file in the folder; a missing or altered file is refused
by name, and `newest_intact` finds the newest checkpoint that still verifies. Weights that are
not finite are never written. A full disk is reported as such, naming the folder.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
SPACE_MESSAGES = ("No space left", "File too large", "Disk quota", "unexpected pos", "PytorchStreamWriter failed")


class CheckpointError(RuntimeError):
    pass


class DiskFullError(CheckpointError):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "state.json")


def save_weights(model: nn.Module | dict[str, torch.Tensor], path: Path) -> None:
    """Model weights (a module or its state dict) as safetensors. Tied parameters are stored once
    (the others recorded as aliases in the metadata); views of one buffer are saved separately."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    sd = model if isinstance(model, dict) else model.state_dict()
    for k, v in sd.items():
        key = (v.data_ptr(), tuple(v.shape), tuple(v.stride()), v.dtype)
        if key in seen:
            aliases[k] = seen[key]
            continue
        seen[key] = k
        tensors[k] = v.detach().contiguous().clone()
    save_file(tensors, str(path), metadata={"aliases": json.dumps(aliases)})


def load_weights(model: nn.Module, path: Path, device: str | torch.device = "cpu") -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=str(device)) as f:
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
        sd = {k: f.get_tensor(k) for k in f.keys()}
    for k, src in aliases.items():
        sd[k] = sd[src]
    model.load_state_dict(sd, strict=True)


def non_finite(model: nn.Module) -> list[str]:
    """Names of the parameters holding a NaN or an infinity (a diverged model)."""
    bad = []
    for n, p in model.named_parameters():
        t = p.to_local() if hasattr(p, "to_local") else p
        if not bool(torch.isfinite(t.detach()).all()):
            bad.append(n)
    return bad


def disk_full_message(e: BaseException, folder: Path) -> str | None:
    """A clear message when `e` is a write failure for lack of space, else None."""
    if isinstance(e, OSError) and e.errno in NO_SPACE:
        reason = os.strerror(e.errno)
    elif isinstance(e, Exception) and any(s in str(e) for s in SPACE_MESSAGES):  # torch.save, safetensors
        reason = str(e).splitlines()[0]
    else:
        return None
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    return (f"the disk holding {folder} is full ({reason}; {free}): the checkpoint was not written and the last "
            "good one is kept; free some space (or use --keep-checkpoints N) and resume with --resume")


def save_checkpoint(out: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    state: dict, extra_files: dict[str, Path] | None = None, keep: int = 0) -> Path:
    """Write `out/step-{step}` atomically and point `out/latest` at it; keep the newest `keep`
    checkpoints (0: all). Refuses non-finite weights. Returns the folder."""
    bad = non_finite(model)
    if bad:
        raise CheckpointError(f"refusing to save step {step}: parameters {bad[:3]} are not finite (the run "
                              "diverged); the last good checkpoint is kept")
    tmp, final = checkpoint_folders(out, step)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_weights(model, tmp / "model.safetensors")
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        finish_checkpoint(out, tmp, final, state, step, keep)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        msg = disk_full_message(e, out)
        if msg:
            raise DiskFullError(msg) from None
        raise
    return final


def checkpoint_folders(out: Path, step: int) -> tuple[Path, Path]:
    """(temporary, final) folder of the checkpoint at `step`."""
    return out / f".tmp-step-{step:07d}", out / f"step-{step:07d}"


def finish_checkpoint(out: Path, tmp: Path, final: Path, state: dict, step: int, keep: int = 0) -> None:
    """Write state.json (the SHA-256 of every file) into `tmp`, rename it to `final`, point
    `out/latest` at it by an atomic rename, then prune to the newest `keep` checkpoints.

    An older folder of the same step is renamed away first and deleted only after `latest` points
    at the new one, so no crash leaves `latest` pointing at nothing."""
    files = {p.relative_to(tmp).as_posix(): _sha256(p) for p in _files(tmp)}
    meta = dict(state, step=step, files=files, weights_sha256=files.get("model.safetensors"))
    (tmp / "state.json").write_text(json.dumps(meta, indent=2))
    old = None
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    link = out / ".latest.tmp"
    link.write_text(final.name)
    os.replace(link, out / "latest")
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    if keep:
        for folder in checkpoints(out)[:-keep]:
            if folder != final:
                shutil.rmtree(folder, ignore_errors=True)


def checkpoints(out: Path) -> list[Path]:
    """The run's checkpoint folders, oldest first."""
    return sorted(p for p in out.glob("step-*") if p.is_dir() and not p.name.endswith(".old"))


def resolve(path: Path) -> Path:
    """A checkpoint folder, or a run folder (whose `latest` names the checkpoint)."""
    if (path / "state.json").exists():
        return path
    if (path / "latest").exists():
        return path / (path / "latest").read_text().strip()
    raise CheckpointError(f"{path} is neither a checkpoint folder (no state.json) nor a run folder (no latest)")


def saved_rows(ck: Path, name: str) -> int | None:
    """Rows of the saved weight `name` (e.g. "embedding.weights.special") in checkpoint `ck`, read from
    the safetensors header without loading it; None where the checkpoint has no such file or weight
    (sharded checkpoints)."""
    p = ck / "model.safetensors"
    if not p.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(p), "pt") as f:
        return int(f.get_slice(name).get_shape()[0]) if name in f.keys() else None


def verify(ck: Path, need_optimizer: bool = False) -> dict:
    """state.json of checkpoint `ck` after checking every file it lists; CheckpointError naming the
    first missing or altered file."""
    try:
        state = json.loads((ck / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {ck}: state.json is missing or unreadable ({e})") from None
    files = state.get("files") or {"model.safetensors": state.get("weights_sha256")}  # older checkpoints: weights
    required = ["model.safetensors"] + (["optimizer.pt"] if need_optimizer and not state.get("sharded") else [])
    for name in required:
        if name not in files:
            raise CheckpointError(f"checkpoint {ck}: {name} is not part of it")
    for name, digest in files.items():
        p = ck / name
        if not p.is_file():
            raise CheckpointError(f"checkpoint {ck}: {name} is missing")
        if _sha256(p) != digest:
            raise CheckpointError(f"checkpoint {ck}: {name} is corrupt (checksum mismatch); refusing to load it")
    return state


def newest_intact(out: Path, need_optimizer: bool = True) -> Path | None:
    for ck in reversed(checkpoints(out)):
        try:
            verify(ck, need_optimizer)
            return ck
        except CheckpointError:
            continue
    return None


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    device: str | torch.device = "cpu") -> dict:
    """Load weights (and optimizer) into the given objects after verifying every file; returns
    state.json. A bad checkpoint is refused naming the file and the newest intact one."""
    from safetensors import SafetensorError

    ck = resolve(path)
    try:
        state = verify(ck, need_optimizer=optimizer is not None)
    except CheckpointError as e:
        alt = newest_intact(ck.parent, optimizer is not None) if ck.parent.is_dir() else None
        hint = f"; the newest intact checkpoint is {alt}: resume from it with --resume {alt}" if alt else ""
        raise CheckpointError(f"{e}{hint}") from None
    try:
        load_weights(model, ck / "model.safetensors", device)
    except (SafetensorError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {ck}: weights do not fit this model ({e})") from None
    if optimizer is not None and (ck / "optimizer.pt").exists():
        try:
            optimizer.load_state_dict(torch.load(ck / "optimizer.pt", map_location=device, weights_only=True))
        except (RuntimeError, ValueError, KeyError, EOFError) as e:
            raise CheckpointError(f"checkpoint {ck}: optimizer.pt does not fit this optimizer ({e})") from None
    return state


def check_writable(out: Path, need_bytes: int) -> None:
    """Fail before training when the output folder cannot be written or the disk is too full."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as e:
        raise CheckpointError(f"output folder {out} is not writable: {e.strerror or e}") from None
    free = shutil.disk_usage(out).free
    if free < need_bytes:
        raise CheckpointError(f"output folder {out}: only {free / 2**20:.0f} MiB free, a checkpoint needs about "
                              f"{need_bytes / 2**20:.0f} MiB")

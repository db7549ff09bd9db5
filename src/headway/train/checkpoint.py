"""Checkpoints: `model.safetensors` + `optimizer.pt` + `state.json` (+ config, tokenizer) per folder.

A checkpoint is written to a temporary folder and renamed into place, and `latest` is updated by
an atomic rename too, so an interrupted or failed write never replaces the last good checkpoint.
`state.json` records the SHA-256 of the weights; a file that does not match is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn


class CheckpointError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def save_checkpoint(out: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    state: dict, extra_files: dict[str, Path] | None = None) -> Path:
    """Write `out/step-{step}` atomically and point `out/latest` at it. Returns the folder."""
    tmp, final = checkpoint_folders(out, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_weights(model, tmp / "model.safetensors")
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        finish_checkpoint(out, tmp, final, state, step)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def checkpoint_folders(out: Path, step: int) -> tuple[Path, Path]:
    """(temporary, final) folder of the checkpoint at `step`."""
    return out / f".tmp-step-{step:07d}", out / f"step-{step:07d}"


def finish_checkpoint(out: Path, tmp: Path, final: Path, state: dict, step: int) -> None:
    """Write state.json (with the weights' checksum) into `tmp`, rename it to `final`, then
    point `out/latest` at it by an atomic rename."""
    meta = dict(state, step=step, weights_sha256=_sha256(tmp / "model.safetensors"))
    (tmp / "state.json").write_text(json.dumps(meta, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    link = out / ".latest.tmp"
    link.write_text(final.name)
    os.replace(link, out / "latest")


def resolve(path: Path) -> Path:
    """A checkpoint folder, or a run folder (whose `latest` names the checkpoint)."""
    if (path / "state.json").exists():
        return path
    if (path / "latest").exists():
        return path / (path / "latest").read_text().strip()
    raise CheckpointError(f"{path} is neither a checkpoint folder (no state.json) nor a run folder (no latest)")


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    device: str | torch.device = "cpu") -> dict:
    """Load weights (and optimizer) into the given objects; returns state.json. Refuses corrupt files."""
    from safetensors import SafetensorError

    ck = resolve(path)
    try:
        state = json.loads((ck / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {ck}: state.json is unreadable ({e})") from None
    weights = ck / "model.safetensors"
    if not weights.exists() or _sha256(weights) != state.get("weights_sha256"):
        raise CheckpointError(f"checkpoint {ck}: model.safetensors is missing or corrupt (checksum mismatch); "
                              "refusing to load it")
    try:
        load_weights(model, weights, device)
    except (SafetensorError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {ck}: weights do not fit this model ({e})") from None
    if optimizer is not None and (ck / "optimizer.pt").exists():
        optimizer.load_state_dict(torch.load(ck / "optimizer.pt", map_location=device, weights_only=True))
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

"""Checkpoints of runs whose parameters differ between ranks (FSDP2, the vocab-parallel head).

Every rank writes its own shards of the model and optimizer with `torch.distributed.checkpoint`
(DCP) into `step-N/dcp/`; rank 0 also writes the full weights gathered from the shards as
`step-N/model.safetensors`, so `headway sample | infill | eval` read a sharded run's checkpoint like
any other. The folder is assembled under a temporary name and renamed into place by rank 0, as in
`checkpoint.py`. Multi-node runs need `--out` on a filesystem every node sees.
Resuming loads the DCP shards (DCP re-shards them if the world size changed).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from headway.train.checkpoint import (
    CheckpointError,
    checkpoint_folders,
    finish_checkpoint,
    resolve,
    save_weights,
    verify,
)
from headway.train.distributed import barrier


def save_sharded_checkpoint(out: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict,
                            extra_files: dict[str, Path], rank: int, keep: int = 0) -> None:
    """Called by every rank; writes `out/step-{step}` and points `out/latest` at it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    tmp, final = checkpoint_folders(out, step)
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    msd, osd = get_state_dict(model, _parts(optimizer))
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp / "dcp"))
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        save_weights(full, tmp / "model.safetensors")
        for name, src in extra_files.items():
            shutil.copyfile(src, tmp / name)
        finish_checkpoint(out, tmp, final, dict(state, sharded=True), step, keep)
    barrier()


def load_sharded_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Called by every rank after the model is sharded and the optimizer built; returns state.json."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    ck = resolve(path)
    state = verify(ck)  # every shard file's checksum
    if not (ck / "dcp").is_dir():
        raise CheckpointError(f"checkpoint {ck} has no dcp/ shards: it was written by an unsharded run; resume it "
                              "without --parallel fsdp / --tensor-parallel-head")
    msd, osd = get_state_dict(model, _parts(optimizer))
    sd = {"model": msd, "optim": osd}
    dcp.load(sd, checkpoint_id=str(ck / "dcp"))
    set_state_dict(model, _parts(optimizer), model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    return state


def _parts(optimizer):  # noqa: ANN001, ANN202
    """The optimizers DCP should see: a `Combined` optimizer's parts (DCP takes several), else it."""
    parts = getattr(optimizer, "parts", None)
    return tuple(parts.values()) if parts else optimizer

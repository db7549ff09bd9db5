"""How the model is spread over the ranks under torchrun: DDP or FSDP2, and the vocabulary-parallel head.

Gradient scaling. The trainer backpropagates `world * loss_r`, where loss_r is this rank's share of
the global loss (its targets' summed NLL over the global target count): DDP and FSDP2 average
gradients over ranks, so the backbone receives exactly the gradient of the global loss. The
vocabulary-parallel head's shard is not averaged by either (each rank holds different rows, and its
gradient is already that of the sum of all ranks' losses), so a hook divides it by `world`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from headway.heads.vocab_parallel import VocabParallelLMHead

PARALLEL = ("ddp", "fsdp")


def _is_dtensor(t: Tensor) -> bool:
    return hasattr(t, "to_local") and hasattr(t, "placements")



def parallelize(model: nn.Module, parallel: str, tensor_parallel_head: bool, world: int,
                device: torch.device) -> nn.Module:
    """Spread `model` over the `world` ranks in place; returns the module the training step calls
    (the DDP wrapper, or the model itself under FSDP2). A single process gets `model` back."""
    if parallel not in PARALLEL:
        raise ValueError(f"--parallel must be one of {PARALLEL}, got {parallel!r}")
    if world == 1:
        return model
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (world,))
    sharded_head: set[nn.Parameter] = set()
    if tensor_parallel_head:
        model.head = VocabParallelLMHead(model.head, mesh)
        model.head.weight.register_hook(lambda g: g / world)  # see the module docstring
        sharded_head = {model.head.weight}
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        mtp = getattr(model, "mtp", None)  # multi-token prediction: each depth's block is sharded as a layer
        for layer in [*model.backbone.layers, *(d.block for d in (mtp.depths if mtp is not None else ()))]:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh, ignored_params=sharded_head or None)
        return model
    from torch.nn.parallel import DistributedDataParallel

    if sharded_head:
        names = [n for n, p in model.named_parameters() if p in sharded_head]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
    return DistributedDataParallel(model)


def is_sharded(parallel: str, tensor_parallel_head: bool, world: int) -> bool:
    """Whether parameters differ between ranks (then checkpoints are distributed and every rank
    takes part in forward passes, evaluation and generation alike)."""
    return world > 1 and (parallel == "fsdp" or tensor_parallel_head)


@torch.no_grad()
def clip_grad_norm_(params: list[nn.Parameter], max_norm: float) -> float:
    """`torch.nn.utils.clip_grad_norm_` for a mix of replicated tensors and DTensors sharded over
    ranks (FSDP2, the vocab-parallel head): the norm is over the full, unsharded gradient."""
    grads = [p.grad for p in params if p.grad is not None]
    dev = grads[0].device if grads else torch.device("cpu")
    sharded = torch.zeros((), dtype=torch.float64, device=dev)
    replicated = torch.zeros((), dtype=torch.float64, device=dev)
    for g in grads:
        if _is_dtensor(g) and any(pl.is_shard() for pl in g.placements):
            sharded += g.to_local().double().square().sum()
        else:
            replicated += (g.to_local() if _is_dtensor(g) else g).double().square().sum()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sharded)
    total = float((sharded + replicated).sqrt())
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for g in grads:
            (g.to_local() if _is_dtensor(g) else g).mul_(coef)
    return total

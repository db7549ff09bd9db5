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

from headway.constants import IGNORE_INDEX
from headway.heads.lm_head import LMHead
from headway.loss.vocab_parallel import vocab_parallel_linear_cross_entropy

PARALLEL = ("ddp", "fsdp")


def _is_dtensor(t: Tensor) -> bool:
    return hasattr(t, "to_local") and hasattr(t, "placements")


class VocabParallelLMHead(LMHead):
    """An `LMHead` whose (V, H) weight is a DTensor sharded by vocabulary rows over all ranks.

    forward: each rank's own tokens are scored against the whole vocabulary with
    `vocab_parallel_linear_cross_entropy(..., gather_tokens=True)` and the rank gets its tokens'
    loss — the same number a replicated `LMHead` gives — while no rank holds more than V / world
    rows of the weight, its gradient and its optimizer state, or of a chunk's logits.
    logits: gathers the full weight (generation; a collective, so every rank must call it).
    """

    def __init__(self, head: LMHead, mesh) -> None:  # noqa: ANN001
        from torch.distributed.tensor import Shard, distribute_tensor

        nn.Module.__init__(self)
        if head.bias is not None or head.tied:
            raise ValueError("VocabParallelLMHead: needs an untied head without bias")
        self.weight = nn.Parameter(distribute_tensor(head.weight.detach(), mesh, [Shard(0)]))
        self.bias, self.tied = None, False
        self.softcap, self.z_loss, self.label_smoothing = head.softcap, head.z_loss, head.label_smoothing

    def forward(self, hidden: Tensor, labels: Tensor, *, num_items_in_batch: Tensor | int | None = None,
                reduction: str = "mean", shift: bool = False) -> Tensor:
        weight = self.weight.to_local()
        dev = hidden.device.type
        if torch.is_autocast_enabled(dev):
            dt = torch.get_autocast_dtype(dev)
            hidden, weight = hidden.to(dt), weight.to(dt)
        return vocab_parallel_linear_cross_entropy(
            hidden, weight, labels, ignore_index=IGNORE_INDEX, reduction=reduction, shift=shift,
            label_smoothing=self.label_smoothing, z_loss=self.z_loss, softcap=self.softcap,
            num_items_in_batch=num_items_in_batch, group=self.weight.device_mesh.get_group(), gather_tokens=True)

    def logits(self, hidden: Tensor, keep_last: int = 0) -> Tensor:
        if keep_last:
            hidden = hidden[..., -keep_last:, :]
        z = (hidden @ self.weight.full_tensor().t()).float()
        if self.softcap is not None:
            z = self.softcap * torch.tanh(z / self.softcap)
        return z


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

        for layer in model.backbone.layers:
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

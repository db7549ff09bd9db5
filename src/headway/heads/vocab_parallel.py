"""The vocabulary-parallel LM head: its (V, H) weight sharded by rows over the ranks."""

from __future__ import annotations

from torch import Tensor, nn

from headway.heads.lm_head import HeadBase, LMHead
from headway.loss.vocab_parallel import vocab_parallel_linear_cross_entropy


class VocabParallelLMHead(HeadBase):
    """An LM head whose (V, H) weight is a DTensor sharded by vocabulary rows over all ranks.

    forward: each rank's own tokens are scored against the whole vocabulary with
    `vocab_parallel_linear_cross_entropy(..., gather_tokens=True)` and the rank gets its tokens'
    loss — the same number a replicated `LMHead` gives — while no rank holds more than V / world
    rows of the weight, its gradient and its optimizer state, or of a chunk's logits.
    logits: gathers the full weight (generation; a collective, so every rank must call it).
    """

    def __init__(self, head: LMHead, mesh) -> None:  # noqa: ANN001
        from torch.distributed.tensor import Shard, distribute_tensor

        super().__init__(softcap=head.softcap, z_loss=head.z_loss, label_smoothing=head.label_smoothing)
        if head.bias is not None or head.tied:
            raise ValueError("VocabParallelLMHead: needs an untied head without bias")
        self.weight = nn.Parameter(distribute_tensor(head.weight.detach(), mesh, [Shard(0)]))
        self.bias = None

    def loss_weight(self) -> Tensor:
        return self.weight.to_local()

    def full_weight(self) -> Tensor:
        return self.weight.full_tensor()

    def _loss(self, hidden: Tensor, weight: Tensor, labels: Tensor, **kw: object) -> Tensor:
        out = vocab_parallel_linear_cross_entropy(
            hidden, weight, labels, label_smoothing=self.label_smoothing, z_loss=self.z_loss, softcap=self.softcap,
            group=self.weight.device_mesh.get_group(), gather_tokens=True, **kw)  # type: ignore[arg-type]
        assert isinstance(out, Tensor)
        return out

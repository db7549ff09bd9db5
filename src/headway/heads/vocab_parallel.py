"""The vocabulary-parallel LM head: its (V, H) weight sharded by rows over the ranks."""

from __future__ import annotations

from torch import Tensor, nn

from headway.heads.lm_head import HeadBase, LMHead
from headway.loss.rank_agreement import VOCAB_PARALLEL_IMPLS
from headway.loss.vocab_parallel import vocab_parallel_linear_cross_entropy


class VocabParallelLMHead(HeadBase):
    """An LM head whose (V, H) weight is a DTensor sharded by vocabulary rows over all ranks.

    forward: each rank's own tokens are scored against the whole vocabulary with
    `vocab_parallel_linear_cross_entropy(..., gather_tokens=True, options=head.loss_options)` and the
    rank gets its tokens' loss — the same number a replicated `LMHead` gives — while no rank holds more
    than V / world rows of the weight, its gradient and its optimizer state, or of a chunk's logits.
    The loss options are `head`'s; their `impl` must be "auto" or "chunked" (the vocab-parallel loss
    runs the chunk driver only), else ValueError here.
    logits: gathers the full weight (generation; a collective, so every rank must call it).
    Every rank must pass the same number of tokens (`equal_tokens_on_every_rank`).
    """

    equal_tokens_on_every_rank = True

    def __init__(self, head: LMHead, mesh) -> None:  # noqa: ANN001
        from torch.distributed.tensor import Shard, distribute_tensor

        super().__init__(loss=head.loss_options)
        if head.bias is not None or head.tied:
            raise ValueError("VocabParallelLMHead: needs an untied head without bias")
        if self.loss_options.impl not in VOCAB_PARALLEL_IMPLS:
            raise ValueError(f"VocabParallelLMHead: the head's loss `impl` must be one of {VOCAB_PARALLEL_IMPLS} (the "
                             f"vocab-parallel loss runs the chunk driver only), got {self.loss_options.impl!r}")
        self.weight = nn.Parameter(distribute_tensor(head.weight.detach(), mesh, [Shard(0)]))
        self.bias = None

    def loss_weight(self) -> Tensor:
        return self.weight.to_local()

    def full_weight(self) -> Tensor:
        return self.weight.full_tensor()

    def _loss(self, hidden: Tensor, weight: Tensor, labels: Tensor, **kw: object) -> Tensor:
        out = vocab_parallel_linear_cross_entropy(
            hidden, weight, labels, options=self.loss_options, group=self.weight.device_mesh.get_group(),
            gather_tokens=True, **kw)  # type: ignore[arg-type]
        assert isinstance(out, Tensor)
        return out

"""Heads: the fused LM head, split-vocabulary heads, the vocab-parallel head, MLM and classification heads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headway.heads.classification import ClassificationHead, MLMHead
from headway.heads.lm_head import HeadBase, LMHead
from headway.heads.split import SplitEmbedding, SplitLMHead

__all__ = ["HeadBase", "LMHead", "SplitEmbedding", "SplitLMHead", "MLMHead", "ClassificationHead",
           "VocabParallelLMHead"]


def __getattr__(name: str) -> Any:  # the vocab-parallel head imports torch.distributed: on first use only
    if name == "VocabParallelLMHead":
        from headway.heads.vocab_parallel import VocabParallelLMHead

        return VocabParallelLMHead
    raise AttributeError(f"module 'headway.heads' has no attribute {name!r}")


if TYPE_CHECKING:
    from headway.heads.vocab_parallel import VocabParallelLMHead

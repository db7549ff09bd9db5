"""Heads: the fused LM head, split-vocabulary heads, MLM and classification heads."""

from headway.heads.classification import ClassificationHead, MLMHead
from headway.heads.lm_head import LMHead
from headway.heads.split import SplitEmbedding, SplitLMHead

__all__ = ["LMHead", "SplitEmbedding", "SplitLMHead", "MLMHead", "ClassificationHead"]

"""Heads: the fused LM head, split-vocabulary heads, MLM and classification heads."""

from headway.heads.classification import ClassificationHead, MLMHead
from headway.heads.lm_head import HeadBase, LMHead
from headway.heads.split import SplitEmbedding, SplitLMHead

__all__ = ["HeadBase", "LMHead", "SplitEmbedding", "SplitLMHead", "MLMHead", "ClassificationHead"]

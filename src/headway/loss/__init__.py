"""Fused linear cross-entropy and distillation: the LM loss straight from hidden states, never the N×V logits."""

from headway.loss.api import linear_cross_entropy, token_logprobs
from headway.loss.distill import distillation_loss
from headway.loss.options import LossOptions
from headway.loss.validate import shift_labels

__all__ = ["linear_cross_entropy", "token_logprobs", "distillation_loss", "LossOptions", "shift_labels"]

"""headway: train language models with any objective on any backbone, without the N×V logits."""

from headway.constants import IGNORE_INDEX
from headway.loss import linear_cross_entropy, token_logprobs

__version__ = "0.1.0"
__all__ = ["IGNORE_INDEX", "linear_cross_entropy", "token_logprobs", "__version__"]

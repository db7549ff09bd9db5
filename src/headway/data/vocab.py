"""A split vocabulary: `base` ids [0, base_size) from the tokenizer, then a `special` split.

The class lives in `headway.types` (the shared contracts); this module re-exports it.
"""

from headway.types import DEFAULT_SPECIALS, Vocab, sentinel

__all__ = ["DEFAULT_SPECIALS", "Vocab", "sentinel"]

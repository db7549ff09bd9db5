"""Causal language modeling: every token, then EOS, is predicted from the tokens before it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from headway.objectives.base import decoder_only
from headway.types import Example


@dataclass
class CLM:
    """input = [eos, x_1 .. x_n], labels = [x_1 .. x_n, eos]; causal (prefix 0).

    The leading EOS separates documents and lets the first token be a target; the closing EOS is a
    target so the model learns to stop. Padding is never a target (the collator pads with -100).
    """

    eos: int
    name: str = "clm"
    needs_bidirectional = False  # (class attributes, not fields: what the objective needs of the model)
    trains_left_to_right = True

    def __call__(self, tokens: np.ndarray, rng: np.random.Generator) -> Example:
        return decoder_only(np.array([self.eos]), tokens, self.eos, bidirectional_inputs=False)

    @property
    def text_lead(self) -> int:
        """The id before a document's text where it is predicted left to right (see `text_lead`)."""
        return self.eos

    def max_tokens(self, row_length: int) -> int:
        return row_length - 1

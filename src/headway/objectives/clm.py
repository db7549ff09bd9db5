"""Causal language modeling: every token, then EOS, is predicted from the tokens before it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from headway.objectives.base import base_size_of, check_document, decoder_only
from headway.objectives.registry import Codec, register
from headway.types import Example, Vocab


@dataclass
class CLM:
    """input = [eos, x_1 .. x_n], labels = [x_1 .. x_n, eos]; causal (prefix 0).

    The leading EOS separates documents and lets the first token be a target; the closing EOS is a
    target so the model learns to stop. Padding is never a target (the collator pads with -100).

    `eos`: the `Vocab` (or its EOS id, whose base vocabulary is then every id below it). A document
    holding an id outside the base vocabulary is refused with a ValueError.
    """

    eos: int | Vocab
    name: str = "clm"
    needs_bidirectional = False  # (class attributes, not fields: what the objective needs of the model)
    trains_left_to_right = True

    def __post_init__(self) -> None:
        self.eos, self.base_size = base_size_of(self.eos, "CLM")

    def __call__(self, tokens: np.ndarray, rng: np.random.Generator) -> Example:
        tokens = check_document(tokens, self.base_size, self.name)
        return decoder_only(np.array([self.eos]), tokens, self.eos, bidirectional_inputs=False)

    @property
    def text_lead(self) -> int:
        """The id before a document's text where it is predicted left to right (see `text_lead`)."""
        return self.eos

    def max_tokens(self, row_length: int) -> int:
        return row_length - 1


@register("clm", "causal LM: every token, then EOS, from the tokens before it")
def _clm(vocab: Vocab, codec: Codec) -> CLM:
    return CLM(vocab)

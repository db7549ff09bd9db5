"""Prefix-LM: a bidirectional prefix, then causal targets; loss on the targets only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from headway.objectives.base import base_size_of, check_document, decoder_only
from headway.objectives.registry import Codec, register
from headway.types import Example, Vocab


@dataclass
class PrefixLM:
    """Split point k uniform in [1, L) (or `split` fixed): inputs x[:k] (bidirectional), targets
    x[k:] then EOS. A one-token document has no split; its single token becomes the prefix.

    `eos`: the `Vocab` (or its EOS id, whose base vocabulary is then every id below it). A document
    holding an id outside the base vocabulary is refused with a ValueError."""

    eos: int | Vocab
    split: int | None = None
    mode_id: int | None = None  # e.g. UL2's [S2S]: prepended to the bidirectional prefix
    name: str = "prefix_lm"
    needs_bidirectional = False  # (class attributes, not fields: what the objective needs of the model)
    trains_left_to_right = True

    def __post_init__(self) -> None:
        self.eos, self.base_size = base_size_of(self.eos, "PrefixLM")
        if self.split is not None and self.split < 1:
            raise ValueError(f"PrefixLM: `split` must be >= 1, got {self.split}")

    def __call__(self, tokens: np.ndarray, rng: np.random.Generator) -> Example:
        tokens = check_document(tokens, self.base_size, self.name)
        L = len(tokens)
        if L == 0:
            raise ValueError("PrefixLM: empty document")
        k = min(self.split, L) if self.split is not None else (int(rng.integers(1, L)) if L > 1 else 1)
        inputs = tokens[:k] if self.mode_id is None else np.concatenate([[self.mode_id], tokens[:k]])
        return decoder_only(inputs, tokens[k:], self.eos, bidirectional_inputs=True)

    def max_tokens(self, row_length: int) -> int:
        return row_length - 1 - (self.mode_id is not None)

    @property
    def text_lead(self) -> int:
        """The id before a document's text where it is predicted left to right (see `text_lead`)."""
        return self.eos if self.mode_id is None else self.mode_id


@register("prefix_lm", "a bidirectional prefix, then its continuation predicted left to right")
def _prefix_lm(vocab: Vocab, codec: Codec) -> PrefixLM:
    return PrefixLM(vocab)

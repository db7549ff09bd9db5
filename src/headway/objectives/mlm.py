"""Masked language modeling (BERT): corrupt 15% of tokens, predict them from both sides."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from headway.constants import IGNORE_INDEX
from headway.objectives.base import check_document, check_rate
from headway.objectives.registry import Codec, register
from headway.types import Example, Vocab


@dataclass
class MLM:
    """Select `rate` of the non-special tokens; of those `mask_rate` -> <mask>, `random_rate` ->
    a random *base* token (never a special one), the rest kept. Labels only at selected positions
    (not shifted); the whole example is one bidirectional prefix.

    `word_starts(tokens) -> bool array` enables whole-word masking: words (a start token and the
    tokens that follow it up to the next start) are selected together.
    """

    vocab: Vocab
    rate: float = 0.15
    mask_rate: float = 0.8
    random_rate: float = 0.1
    word_starts: Callable[[np.ndarray], np.ndarray] | None = None
    name: str = "mlm"
    needs_bidirectional = True  # (class attributes, not fields: what the objective needs of the model)
    trains_left_to_right = False
    text_lead = None

    def __post_init__(self) -> None:
        check_rate("MLM: `rate`", self.rate)
        check_rate("MLM: `mask_rate`", self.mask_rate)
        check_rate("MLM: `random_rate`", self.random_rate)
        check_rate("MLM: `mask_rate + random_rate`", self.mask_rate + self.random_rate)
        self.mask_id = self.vocab.id("<mask>")

    def _select(self, tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        candidates = ~self.vocab.is_special(tokens)
        if self.word_starts is None:
            return candidates & (rng.random(len(tokens)) < self.rate)
        starts = np.asarray(self.word_starts(tokens), dtype=bool).copy()
        if starts.shape != tokens.shape:
            raise ValueError(f"MLM: word_starts returned shape {starts.shape}, expected {tokens.shape}")
        starts[0] = True
        word = np.cumsum(starts) - 1  # word index of each token
        chosen = rng.random(int(word[-1]) + 1) < self.rate
        return candidates & chosen[word]

    def __call__(self, tokens: np.ndarray, rng: np.random.Generator) -> Example:
        tokens = check_document(tokens, self.vocab.base_size, self.name)
        selected = self._select(tokens, rng)
        labels = np.where(selected, tokens, IGNORE_INDEX)
        u = rng.random(len(tokens))
        ids = tokens.copy()
        to_mask = selected & (u < self.mask_rate)
        to_random = selected & (u >= self.mask_rate) & (u < self.mask_rate + self.random_rate)
        ids[to_mask] = self.mask_id
        ids[to_random] = rng.integers(0, self.vocab.base_size, int(to_random.sum()))
        return Example(ids, labels, prefix_length=len(ids))

    def max_tokens(self, row_length: int) -> int:
        return row_length


@register("mlm", "masked LM: 15% of tokens corrupted, predicted from both sides")
def _mlm(vocab: Vocab, codec: Codec) -> MLM:
    return MLM(vocab)

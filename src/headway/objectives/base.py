"""What every objective returns, and the decoder-only layout they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from headway.constants import IGNORE_INDEX


@dataclass
class Example:
    """One training example: `labels[t]` is the target of position t (aligned, never shifted later).

    `prefix_length` leading positions attend bidirectionally (0: causal; len: fully bidirectional).
    """

    input_ids: np.ndarray  # (L,) int64
    labels: np.ndarray  # (L,) int64, IGNORE_INDEX where no target
    prefix_length: int = 0

    def __post_init__(self) -> None:
        self.input_ids = np.asarray(self.input_ids, dtype=np.int64)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.input_ids.shape != self.labels.shape or self.input_ids.ndim != 1:
            raise ValueError(f"Example: input_ids {self.input_ids.shape} and labels {self.labels.shape} "
                             "must be 1-D of equal length")
        if not 0 <= self.prefix_length <= len(self.input_ids):
            raise ValueError(f"Example: prefix_length must be in [0, {len(self.input_ids)}], "
                             f"got {self.prefix_length}")

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_targets(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


def decoder_only(inputs: np.ndarray, targets: np.ndarray, eos: int, bidirectional_inputs: bool) -> Example:
    """Lay out `inputs ++ targets` for a decoder: each target, then EOS, is predicted from the
    position before it; inputs are never targets. With `bidirectional_inputs` the inputs form a
    bidirectional prefix (prefix-LM); otherwise the whole example is causal.

        input_ids = [i_0 .. i_{P-1}, t_0 .. t_{T-1}]
        labels    = [-100 .. -100,   t_0, t_1 .. t_{T-1}, eos]   (the last P-1 ignores, then T+1 targets)
    """
    inputs = np.asarray(inputs, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    if len(inputs) < 1:
        raise ValueError("decoder_only: `inputs` must hold at least one token (the first position predicts t_0)")
    ids = np.concatenate([inputs, targets])
    labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
    labels[len(inputs) - 1 : len(ids) - 1] = targets
    labels[-1] = eos
    return Example(ids, labels, len(inputs) if bidirectional_inputs else 0)


class Objective(Protocol):
    """`objective(tokens, rng) -> Example` for one document's base token ids (no EOS)."""

    name: str

    def __call__(self, tokens: np.ndarray, rng: np.random.Generator) -> Example: ...

    def max_tokens(self, row_length: int) -> int:
        """The longest document chunk whose example still fits in a row of `row_length`."""
        ...


def check_rate(name: str, value: float, low: float = 0.0, high: float = 1.0) -> float:
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return float(value)

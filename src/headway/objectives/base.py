"""The decoder-only layout objectives share (`Example` and `Objective` are in `headway.types`)."""

from __future__ import annotations

import numpy as np

from headway.constants import IGNORE_INDEX
from headway.types import Example, Objective, Vocab

__all__ = ["Example", "Objective", "decoder_only", "check_rate", "check_document", "base_size_of", "text_lead"]


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


def check_document(tokens: np.ndarray, base_size: int, who: str) -> np.ndarray:
    """One document's token ids as int64, or a ValueError before any work when it holds an id outside
    the base vocabulary [0, base_size): objectives take document text only, and an id at or above
    `base_size` would silently become a special token (<eos>, <pad>, <mask>, a sentinel, ...) and be
    trained as one. The usual cause is a `Vocab` not built from the tokenizer (`Vocab.from_tokenizer`)."""
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"{who}: `tokens` must be one document's 1-D token ids, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{who}: `tokens` must be integer token ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= base_size:
            bad = int(np.flatnonzero((arr < 0) | (arr >= base_size))[0])
            raise ValueError(f"{who}: document token ids must be in the base vocabulary [0, {base_size}), got id "
                             f"{int(arr[bad])} at position {bad} (ids in [{lo}, {hi}]); build the Vocab from the "
                             "tokenizer that made the ids: Vocab.from_tokenizer(tokenizer)")
    return arr


def base_size_of(vocab_or_eos: Vocab | int, who: str) -> tuple[int, int]:
    """(eos id, base size) from a `Vocab`, or from a bare EOS id, whose base vocabulary is then every id
    below it (a headway `Vocab` appends its specials after the base ids, <eos> first)."""
    if isinstance(vocab_or_eos, Vocab):
        return vocab_or_eos.eos, vocab_or_eos.base_size
    if isinstance(vocab_or_eos, (int, np.integer)) and not isinstance(vocab_or_eos, bool) and vocab_or_eos >= 1:
        return int(vocab_or_eos), int(vocab_or_eos)
    raise ValueError(f"{who}: expected a Vocab (or the EOS id, an int >= 1), got {vocab_or_eos!r}")


def check_rate(name: str, value: float, low: float = 0.0, high: float = 1.0) -> float:
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return float(value)


def text_lead(objective: Objective, eos: int) -> int:
    """The id that opens a document where `objective` predicts its text left to right, and so the
    one validation, sampling and infilling must open documents with: EOS for CLM and FIM, the mode id
    of a prefix-LM denoiser (UL2's [S2S]) for a mixture that opens most of its left-to-right text with
    it, EOS for an objective that declares none (`text_lead` = None, or no such attribute). A model
    scored behind another lead is scored on inputs it never saw: UL2 trains no row that starts with EOS."""
    lead = getattr(objective, "text_lead", None)
    return eos if lead is None else int(lead)

"""The decoder-only layout objectives share (`Example` and `Objective` are in `headway.types`)."""

from __future__ import annotations

import numpy as np

from headway.constants import IGNORE_INDEX
from headway.types import Example, Objective

__all__ = ["Example", "Objective", "decoder_only", "check_rate", "text_lead"]


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

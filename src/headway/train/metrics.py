"""Validation: loss and bits per byte, and what general-purpose compressors get on the same files."""

from __future__ import annotations

import gzip
import lzma
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from headway.constants import IGNORE_INDEX
from headway.models.lm import LanguageModel
from headway.types import Batch


def to_bits_per_byte(nats: float, tokens: int, num_bytes: int) -> float:
    """A code length of `nats` over a text of `num_bytes` bytes, in bits per byte: nats / (ln 2 · num_bytes);
    NaN when the text has no token or no byte."""
    return nats / math.log(2) / num_bytes if tokens and num_bytes else float("nan")


@dataclass
class EvalResult:
    """A validation result: loss in nats per target token, token and byte counts, and from them
    perplexity and bits per byte."""

    loss: float  # nats per target token
    tokens: int
    bytes: int
    nats: float

    @property
    def bits_per_byte(self) -> float:
        return to_bits_per_byte(self.nats, self.tokens, self.bytes)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.tokens else float("nan")


def eval_windows(docs: list[np.ndarray], eos: int, seq_len: int, stride: int | None = None,
                 lead: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each document as `[lead] doc [eos]` (`lead`: the objective's `text_lead`, default EOS) in
    windows of `seq_len` inputs that start every `stride`
    positions (sliding-window evaluation; default: non-overlapping). Every document token and the
    closing EOS is a target exactly once, in the first window that has it, so with a stride below
    seq_len each target after the first window sees at least seq_len - stride tokens of context."""
    stride = stride or seq_len
    if not 1 <= stride <= seq_len:
        raise ValueError(f"eval stride must be in [1, {seq_len}], got {stride}")
    out = []
    for d in docs:
        seq = np.concatenate([[eos if lead is None else lead], d, [eos]]).astype(np.int64)
        n = len(seq) - 1  # number of targets
        done = 0
        s = 0
        while done < n:
            y = seq[s + 1 : s + seq_len + 1].copy()
            x = seq[s : s + len(y)]
            y[: done - s] = IGNORE_INDEX  # already predicted with more context
            out.append((x, y))
            done = s + len(y)
            s += stride
    return out


@torch.no_grad()
def evaluate(model: LanguageModel, docs: list[np.ndarray], num_bytes: int, eos: int, pad: int, seq_len: int,
             batch_size: int, device: torch.device, stride: int | None = None, rank: int = 0, world: int = 1,
             should_stop: Callable[[], None] | None = None, lead: int | None = None) -> EvalResult:
    """Summed next-token NLL over the documents (CLM, no FIM), in nats, and bits per byte of text.
    Each document opens with `lead` (the objective's `text_lead`: EOS, or UL2's [S2S]; default EOS).
    Under torch.distributed each rank scores every world-th window and the sums are all-reduced.

    Each forward pass is as long as its longest window, not `seq_len`: memory follows the data
    (a short file evaluated with a huge window costs what the file costs). No tokens (empty
    documents): tokens=0 and NaN loss, never a division by zero. `should_stop` is called between
    batches (it raises to abandon the evaluation)."""
    was_training = model.training
    model.eval()
    windows = eval_windows(docs, eos, seq_len, stride, lead)
    nats, count = 0.0, 0
    n_batches = math.ceil(math.ceil(len(windows) / world) / batch_size)  # the same on every rank
    per_rank = [windows[r::world] for r in range(world)]
    for i in range(0, n_batches * batch_size, batch_size):
        if should_stop is not None:
            should_stop()
        chunk = per_rank[rank][i : i + batch_size]
        # under torch.distributed every rank runs the same number of equal-size forward passes (FSDP and
        # the vocab-parallel head communicate inside them); padding rows have no targets
        L = max([len(x) for r in range(world) for x, _ in per_rank[r][i : i + batch_size]] or [1])
        B = batch_size if world > 1 else len(chunk)
        ids = np.full((B, L), pad, dtype=np.int64)
        lab = np.full((B, L), IGNORE_INDEX, dtype=np.int64)
        doc = np.full((B, L), -1, dtype=np.int64)
        doc[len(chunk) :] = 0  # a padding row is one document of pad tokens (no fully masked attention row)
        for b, (x, y) in enumerate(chunk):
            ids[b, : len(x)], lab[b, : len(y)], doc[b, : len(x)] = x, y, 0
        pos = np.broadcast_to(np.arange(L), (B, L)).copy()
        t = torch.from_numpy
        batch = Batch(t(ids), t(lab), t(pos), t(doc), torch.zeros(B, 1, dtype=torch.long)).to(device)
        nats += float(model(batch, reduction="sum"))
        count += batch.num_targets
    if was_training:
        model.train()
    if world > 1:
        from headway.train.distributed import all_sum

        nats, count = all_sum(nats, device), int(all_sum(count, device))
    return EvalResult(nats / count if count else float("nan"), count, num_bytes, nats)


def compressor_bits_per_byte(texts: list[str]) -> dict[str, float]:
    """gzip -9 and xz -9e per file, and xz over all files concatenated, in bits per byte."""
    raw = [t.encode("utf-8") for t in texts]
    n = sum(len(r) for r in raw)
    xz = lambda b: len(lzma.compress(b, preset=9 | lzma.PRESET_EXTREME))  # noqa: E731
    return {
        "gzip -9 (per file)": sum(len(gzip.compress(r, 9)) for r in raw) * 8 / n,
        "xz -9e (per file)": sum(xz(r) for r in raw) * 8 / n,
        "xz -9e (whole split)": xz(b"".join(raw)) * 8 / n,
    }

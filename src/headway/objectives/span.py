"""T5 span corruption, laid out for a decoder: `inputs (with sentinels) + targets`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from headway.data.vocab import Vocab
from headway.objectives.base import Example, check_rate, decoder_only


def _segments(rng: np.random.Generator, total: int, parts: int, allow_empty_ends: bool) -> np.ndarray:
    """Random composition of `total` into `parts` lengths (all >= 1; with `allow_empty_ends` the
    first and last may be 0)."""
    if allow_empty_ends:
        # compose total + 2 into positive parts, then take one away from the ends
        seg = _segments(rng, total + 2, parts, False)
        seg[0] -= 1
        seg[-1] -= 1
        return seg
    if parts > total:
        raise ValueError(f"cannot split {total} tokens into {parts} non-empty parts")
    cuts = np.sort(rng.choice(np.arange(1, total), size=parts - 1, replace=False)) if parts > 1 else np.array([], int)
    return np.diff(np.concatenate([[0], cuts, [total]]))


@dataclass
class SpanCorruption:
    """Corrupt `noise_density` of the tokens in spans of mean length `mean_span_length`.

    inputs  = kept tokens with each span replaced by a sentinel <extra_id_i>
    targets = <extra_id_0> span_0 <extra_id_1> span_1 ... ; then EOS is predicted last.
    The example is `[mode] inputs targets` with a bidirectional prefix over `[mode] inputs` and
    loss on the targets only. Spans may fall anywhere, including at the very start or end.
    """

    vocab: Vocab
    noise_density: float = 0.15
    mean_span_length: float = 3.0
    mode_token: str | None = None
    name: str = "span"

    def __post_init__(self) -> None:
        check_rate("SpanCorruption: `noise_density`", self.noise_density)
        if not self.mean_span_length >= 1:
            raise ValueError(f"SpanCorruption: `mean_span_length` must be >= 1, got {self.mean_span_length}")
        self.mode_id = None if self.mode_token is None else self.vocab.id(self.mode_token)
        self.vocab.sentinel_id(0)  # fails clearly when the vocabulary has no sentinels

    def counts(self, length: int) -> tuple[int, int]:
        """(noise tokens, spans) for a document of `length` tokens."""
        if length < 2:
            return 0, 0
        noise = min(max(int(round(length * self.noise_density)), 1), length - 1)
        spans = min(max(int(round(noise / self.mean_span_length)), 1), noise, self.vocab.num_sentinels)
        return noise, spans

    def example_length(self, length: int) -> int:
        noise, spans = self.counts(length)
        return length + 2 * spans + (self.mode_id is not None)

    def max_tokens(self, row_length: int) -> int:
        """Largest raw length whose example fills at most `row_length` (exactly, when one exists)."""
        lo, hi = 1, row_length
        while lo < hi:  # example_length is non-decreasing in length
            mid = (lo + hi + 1) // 2
            if self.example_length(mid) <= row_length:
                lo = mid
            else:
                hi = mid - 1
        if self.example_length(lo) > row_length:
            raise ValueError(f"SpanCorruption: a row of {row_length} tokens cannot hold any example")
        return lo

    def __call__(self, tokens: np.ndarray, rng: np.random.Generator) -> Example:
        tokens = np.asarray(tokens, dtype=np.int64)
        L = len(tokens)
        noise, spans = self.counts(L)
        prefix = [] if self.mode_id is None else [self.mode_id]
        if spans == 0:  # too short to corrupt: predict the document from the mode token
            return decoder_only(np.array(prefix or [self.vocab.eos]), tokens, self.vocab.eos, True)
        noise_len = _segments(rng, noise, spans, False)
        keep_len = _segments(rng, L - noise, spans + 1, True)
        inputs, targets, pos = list(prefix), [], 0
        for i in range(spans):
            inputs.extend(tokens[pos : pos + keep_len[i]])
            pos += keep_len[i]
            sid = self.vocab.sentinel_id(i)
            inputs.append(sid)
            targets.append(sid)
            targets.extend(tokens[pos : pos + noise_len[i]])
            pos += noise_len[i]
        inputs.extend(tokens[pos:])
        return decoder_only(np.array(inputs), np.array(targets), self.vocab.eos, bidirectional_inputs=True)


def reconstruct(inputs: np.ndarray, targets: np.ndarray, vocab: Vocab) -> np.ndarray:
    """Undo span corruption: put each sentinel's span back in place of the sentinel."""
    spans: dict[int, list[int]] = {}
    cur = None
    for t in targets.tolist():
        if vocab.is_special(np.array(t)) and (vocab.name(t) or "").startswith("<extra_id_"):
            cur = t
            spans[cur] = []
        elif cur is not None:
            spans[cur].append(t)
    out: list[int] = []
    for t in inputs.tolist():
        out.extend(spans[t] if t in spans else [t])
    return np.array(out, dtype=np.int64)

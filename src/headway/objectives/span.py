"""T5 span corruption, laid out for a decoder: `inputs (with sentinels) + targets`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from headway.objectives.base import check_document, decoder_only
from headway.objectives.registry import Codec, register
from headway.types import Example, Vocab


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

    The statistics are kept exactly as configured: noise = round(L * noise_density) tokens (at
    least 1, at most L - 1) in spans = round(noise / mean_span_length) spans (at least 1), spans
    separated by at least one kept token. They are never bent to fit the vocabulary's sentinels:
    `max_tokens(S)` shortens the chunks instead, and a direct call on a document that would need
    more sentinels than the vocabulary has raises. An example is `L + 2 * spans + (mode token)`
    tokens long (`L + 1` when L < 2: nothing to corrupt); since that length grows by 1 or 3 from one
    L to the next, the longest example that fits a row of S tokens fills it exactly or leaves 1 or 2
    positions free.
    """

    vocab: Vocab
    noise_density: float = 0.15
    mean_span_length: float = 3.0
    mode_token: str | None = None
    name: str = "span"
    needs_bidirectional = False  # (class attributes, not fields: what the objective needs of the model)
    trains_left_to_right = True
    text_lead = None  # never predicts a document's text from its start

    def __post_init__(self) -> None:
        d, mu = self.noise_density, self.mean_span_length
        if not (isinstance(d, (int, float)) and 0 < d < 1):
            raise ValueError(f"SpanCorruption: `noise_density` must be in (0, 1), got {d}")
        if not (isinstance(mu, (int, float)) and math.isfinite(mu) and mu >= 1):
            raise ValueError(f"SpanCorruption: `mean_span_length` must be a finite number >= 1, got {mu}")
        # spans need a kept token between them: (1 - d) * L >= d * L / mu - 1 for long documents
        if (1 - d) * mu < d:
            raise ValueError(f"SpanCorruption: noise_density={d} with mean_span_length={mu} leaves fewer kept "
                             f"tokens than spans need to stay apart; use mean_span_length >= {d / (1 - d):.3g} "
                             f"or noise_density <= {mu / (1 + mu):.3g}")
        self.mode_id = None if self.mode_token is None else self.vocab.id(self.mode_token)
        self.vocab.sentinel_id(0)  # fails clearly when the vocabulary has no sentinels

    def counts(self, length: int) -> tuple[int, int]:
        """(noise tokens, spans) for a document of `length` tokens (not capped by the sentinels)."""
        if length < 2:
            return 0, 0
        noise = min(max(int(round(length * self.noise_density)), 1), length - 1)
        spans = min(max(int(round(noise / self.mean_span_length)), 1), noise, length - noise + 1)
        return noise, spans

    def example_length(self, length: int) -> int:
        """Tokens in the example made from a `length`-token document."""
        noise, spans = self.counts(length)
        if spans == 0:
            return length + 1  # [mode or eos] + the document
        return length + 2 * spans + (self.mode_id is not None)

    def sentinels_needed(self, row_length: int) -> int:
        """Sentinels the longest document whose example fits `row_length` tokens needs: a `Vocab` with
        at least this many lets `max_tokens` fill rows exactly or leave 1-2 positions free."""
        return self.counts(self._longest(row_length, None))[1]

    def max_tokens(self, row_length: int) -> int:
        """Largest document length whose example fits `row_length` tokens and whose spans fit the
        vocabulary's sentinels (with `sentinels_needed(row_length)` of them, the example then fills the
        row or leaves at most 2 positions; with fewer, the chunks are shorter)."""
        return self._longest(row_length, self.vocab.num_sentinels)

    def _longest(self, row_length: int, sentinels: int | None) -> int:
        cap = row_length if sentinels is None else sentinels
        ok = lambda n: self.example_length(n) <= row_length and self.counts(n)[1] <= cap  # noqa: E731
        lo, hi = 0, row_length
        while lo < hi:  # both lengths are non-decreasing in n
            mid = (lo + hi + 1) // 2
            if ok(mid):
                lo = mid
            else:
                hi = mid - 1
        if lo < 1:
            raise ValueError(f"SpanCorruption: a row of {row_length} tokens cannot hold any example")
        return lo

    def __call__(self, tokens: np.ndarray, rng: np.random.Generator) -> Example:
        tokens = check_document(tokens, self.vocab.base_size, self.name)
        L = len(tokens)
        noise, spans = self.counts(L)
        if spans > self.vocab.num_sentinels:
            raise ValueError(f"SpanCorruption {self.name!r}: a {L}-token document needs {spans} sentinels, the "
                             f"vocabulary has {self.vocab.num_sentinels}; cut documents to at most "
                             f"max_tokens(row_length) tokens or give the Vocab more sentinels")
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


@register("span", "T5 span corruption: 15% of tokens in spans of mean 3, behind sentinels")
def _span(vocab: Vocab, codec: Codec) -> SpanCorruption:
    return SpanCorruption(vocab)

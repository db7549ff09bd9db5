"""Fill-in-the-middle (Bavarian et al. 2022): move a random middle to the end, train causally."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from headway.objectives.base import check_document, check_rate, decoder_only
from headway.objectives.registry import Codec, register
from headway.types import Example, Vocab

FIM_LINE_RATE = 0.5  # the `fim` spec: the share of examples split at line breaks (FIM.line_rate)
RETOKENIZE_MARGIN = 8  # tokens a character-level split may add when the parts are re-encoded
CUT_WINDOW = 8  # tokens decoded on each side of a cut to tell whether it splits a character (<= 4 bytes)


@dataclass
class FIM:
    """With probability `rate` split the document into (prefix, middle, suffix) and emit

        PSM: <fim_prefix> pre <fim_suffix> suf <fim_middle> mid            (share 1 - spm_rate)
        SPM: <fim_prefix> <fim_suffix> suf <fim_middle> pre mid            (share spm_rate)

    as a causal example whose every token after the first, then EOS, is a target; otherwise a plain
    CLM example. With `encode`/`decode` the two split points are *character* positions (the parts
    are re-encoded; empty parts allowed): with probability `line_rate` both are drawn uniformly
    from the positions right before a line break (and the end), so the middle is whole lines
    opening with "\n" — the shape of line infilling; else uniformly from all positions. Without
    a codec, uniform token positions. No filler token is ever emitted (FIM examples pack like any
    other; padding is never a target).
    """

    vocab: Vocab
    rate: float = 0.5
    spm_rate: float = 0.5
    line_rate: float = 0.0
    encode: Callable[[str], list[int]] | None = None
    decode: Callable[[list[int]], str] | None = None
    name: str = "fim"
    needs_bidirectional = False  # (class attributes, not fields: what the objective needs of the model)
    trains_left_to_right = True

    def __post_init__(self) -> None:
        check_rate("FIM: `rate`", self.rate)
        check_rate("FIM: `spm_rate`", self.spm_rate)
        check_rate("FIM: `line_rate`", self.line_rate)
        if (self.encode is None) != (self.decode is None):
            raise ValueError("FIM: give both `encode` and `decode` (character-level splits) or neither")
        self.pre, self.mid, self.suf = (self.vocab.id(n) for n in ("<fim_prefix>", "<fim_middle>", "<fim_suffix>"))
        self.eos = self.vocab.eos

    def is_character_boundary(self, tokens: np.ndarray, i: int) -> bool | None:
        """Whether cutting `tokens` before position i keeps every character whole (each side decodes to
        exactly its own text), so a character-level split of a piece never alters the document: the two
        sides of the cut, `CUT_WINDOW` tokens each, decoded apart give the same text as decoded together
        (a cut inside a multi-byte character gives U+FFFD on both sides instead). None without a codec:
        token-level FIM may cut anywhere. `examples_from_documents` cuts pieces only where this holds."""
        if self.decode is None:
            return None
        a, b = tokens[max(0, i - CUT_WINDOW) : i].tolist(), tokens[i : i + CUT_WINDOW].tolist()
        return self.decode(a) + self.decode(b) == self.decode(a + b)

    def split(self, tokens: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(prefix, middle, suffix) token arrays whose concatenated text is the document's. A piece whose
        text does not survive decoding (it begins or ends inside a character: the text then holds U+FFFD
        and re-encodes to other ids) is split at token positions instead, so its ids are kept exactly."""
        if self.decode is not None and self.encode is not None:
            text = self.decode(tokens.tolist())
            if "\ufffd" in text and not np.array_equal(np.asarray(self.encode(text), dtype=np.int64), tokens):
                i, j = sorted(rng.integers(0, len(tokens) + 1, size=2))
                return tokens[:i], tokens[i:j], tokens[j:]
            if self.line_rate and rng.random() < self.line_rate:
                cuts = [k for k, c in enumerate(text) if c == "\n"] + [len(text)]  # right before each line break
                i, j = sorted(rng.choice(cuts, size=2))
            else:
                i, j = sorted(rng.integers(0, len(text) + 1, size=2))
            base = self.vocab.base_size
            return tuple(check_document(np.asarray(self.encode(s), dtype=np.int64), base, f"{self.name} (encode)")
                         for s in (text[:i], text[i:j], text[j:]))  # type: ignore[return-value]
        i, j = sorted(rng.integers(0, len(tokens) + 1, size=2))
        return tokens[:i], tokens[i:j], tokens[j:]

    def __call__(self, tokens: np.ndarray, rng: np.random.Generator) -> Example:
        tokens = check_document(tokens, self.vocab.base_size, self.name)
        if rng.random() >= self.rate:
            return decoder_only(np.array([self.eos]), tokens, self.eos, bidirectional_inputs=False)
        pre, mid, suf = self.split(tokens, rng)
        P, M, S = np.array([self.pre]), np.array([self.mid]), np.array([self.suf])
        if rng.random() < self.spm_rate:
            targets = np.concatenate([S, suf, M, pre, mid])
        else:
            targets = np.concatenate([pre, S, suf, M, mid])
        return decoder_only(P, targets, self.eos, bidirectional_inputs=False)

    def max_tokens(self, row_length: int) -> int:
        return row_length - 4 - (RETOKENIZE_MARGIN if self.encode is not None else 0)

    @property
    def text_lead(self) -> int:
        """The id before a document's text where it is predicted left to right (see `text_lead`)."""
        return self.eos


def fim_parts(input_ids: np.ndarray, vocab: Vocab) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """Parse a FIM example back into ("psm"|"spm", prefix, middle, suffix) token arrays.

    For SPM the prefix and middle are contiguous; they come back as (pre+mid, empty, suf) with
    the mode "spm", since the boundary between them is not marked.
    """
    ids = np.asarray(input_ids)
    pre_t, mid_t, suf_t = (vocab.id(n) for n in ("<fim_prefix>", "<fim_middle>", "<fim_suffix>"))
    p = int(np.flatnonzero(ids == pre_t)[0])
    s = int(np.flatnonzero(ids == suf_t)[0])
    m = int(np.flatnonzero(ids == mid_t)[0])
    if s == p + 1:  # SPM
        return "spm", ids[m + 1 :], ids[:0], ids[s + 1 : m]
    return "psm", ids[p + 1 : s], ids[m + 1 :], ids[s + 1 : m]


@register("fim", "fill-in-the-middle, always (rate 1), half the splits at line breaks; mix it with clm")
def _fim(vocab: Vocab, codec: Codec) -> FIM:
    enc, dec = codec if codec is not None else (None, None)
    return FIM(vocab, rate=1.0, line_rate=FIM_LINE_RATE, encode=enc, decode=dec)

"""Mixtures of objectives, and the UL2 mixture-of-denoisers presets (Tay et al. 2022)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from headway.objectives.clm import CLM
from headway.objectives.prefix_lm import PrefixLM
from headway.objectives.registry import Codec, register
from headway.objectives.span import SpanCorruption
from headway.types import Example, Objective, Vocab


class Mixture:
    """Draws one member per document with probability proportional to its weight."""

    def __init__(self, members: Sequence[tuple[Objective, float]], name: str = "mixture") -> None:
        if not members:
            raise ValueError("Mixture: needs at least one (objective, weight) member")
        weights = np.array([w for _, w in members], dtype=np.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"Mixture: weights must be >= 0 with a positive sum, got {weights.tolist()}")
        self.members = [m for m, _ in members]
        self.probs = weights / weights.sum()
        self.name = name
        live = [m for m, p in zip(self.members, self.probs) if p > 0]
        self.needs_bidirectional = any(m.needs_bidirectional for m in live)
        self.trains_left_to_right = any(m.trains_left_to_right for m in live)
        self.masked_diffusion = any(getattr(m, "masked_diffusion", False) for m in live)
        # lead id -> the probability that an example opens the document's text with it (nested mixtures
        # pass on their own shares); `text_lead` is the most likely one
        self.lead_shares: dict[int, float] = {}
        for m, p in zip(self.members, self.probs):
            shares = getattr(m, "lead_shares", None)
            if shares is None:
                lead = getattr(m, "text_lead", None)
                shares = {} if lead is None or p == 0 else {int(lead): 1.0}
            for k, q in shares.items():
                self.lead_shares[k] = self.lead_shares.get(k, 0.0) + float(p) * q
        self.text_lead = max(self.lead_shares, key=self.lead_shares.__getitem__) if self.lead_shares else None

    def __call__(self, tokens: np.ndarray, rng: np.random.Generator) -> Example:
        i = int(rng.choice(len(self.members), p=self.probs))
        return self.members[i](tokens, rng)

    def max_tokens(self, row_length: int) -> int:
        return min(m.max_tokens(row_length) for m in self.members)

    def is_character_boundary(self, tokens: np.ndarray, i: int) -> bool | None:
        """A cut is allowed where every member that works on characters allows it (None: none does)."""
        said = [f(tokens, i) for m in self.members if (f := getattr(m, "is_character_boundary", None)) is not None]
        said = [x for x in said if x is not None]
        return all(said) if said else None


def _r(v: Vocab) -> list[SpanCorruption]:
    return [SpanCorruption(v, 0.15, 3, "[NLU]", name="R(3,.15)"), SpanCorruption(v, 0.15, 8, "[NLU]", name="R(8,.15)")]


def _x(v: Vocab) -> list[SpanCorruption]:
    return [SpanCorruption(v, r, mu, "[NLG]", name=f"X({mu},{r})") for mu, r in ((3, .5), (8, .5), (64, .15), (64, .5))]


def _s(v: Vocab) -> PrefixLM:
    return PrefixLM(v, mode_id=v.id("[S2S]"), name="S")


def ul2(vocab: Vocab) -> Mixture:
    """The seven UL2 denoisers, uniform: R (μ=3, 8; r=.15) [NLU], X (3,.5), (8,.5), (64,.15), (64,.5)
    [NLG], S (prefix-LM) [S2S]."""
    members: list[Objective] = [*_r(vocab), *_x(vocab), _s(vocab)]
    return Mixture([(m, 1.0) for m in members], name="ul2")


def ul2r(vocab: Vocab) -> Mixture:
    """UL2R (Tay et al. 2022b): 50% S, 25% R, 25% X."""
    r, x = _r(vocab), _x(vocab)
    return Mixture([(_s(vocab), 0.5), *[(m, 0.25 / len(r)) for m in r], *[(m, 0.25 / len(x)) for m in x]], "ul2r")


def ul2_decoder(vocab: Vocab) -> Mixture:
    """A CLM-heavy mix for decoder-only models: 50% CLM, 20% S, 15% R, 15% X."""
    r, x = _r(vocab), _x(vocab)
    return Mixture([(CLM(vocab), 0.5), (_s(vocab), 0.2), *[(m, 0.15 / len(r)) for m in r],
                    *[(m, 0.15 / len(x)) for m in x]], "ul2_decoder")


@register("ul2", "UL2's seven denoisers, uniform (R, X: span corruption; S: prefix LM)")
def _ul2(vocab: Vocab, codec: Codec) -> Mixture:
    return ul2(vocab)


@register("ul2r", "UL2R: 50% S, 25% R, 25% X")
def _ul2r(vocab: Vocab, codec: Codec) -> Mixture:
    return ul2r(vocab)


@register("ul2_decoder", "50% CLM, 20% S, 15% R, 15% X, for decoder-only models")
def _ul2_decoder(vocab: Vocab, codec: Codec) -> Mixture:
    return ul2_decoder(vocab)

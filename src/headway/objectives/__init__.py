"""Pre-training objectives: each is a callable `objective(tokens, rng) -> Example`."""

from __future__ import annotations

from headway.objectives.base import Example, Objective, decoder_only, text_lead
from headway.objectives.clm import CLM
from headway.objectives.diffusion import MaskedDiffusion, is_masked_diffusion
from headway.objectives.distill import Distill  # noqa: F401 - registers "distill"
from headway.objectives.fim import FIM, FIM_LINE_RATE, fim_parts  # noqa: F401 - FIM_LINE_RATE: kept importable
from headway.objectives.mlm import MLM
from headway.objectives.prefix_lm import PrefixLM
from headway.objectives.registry import Codec, make, names, register
from headway.objectives.span import SpanCorruption, reconstruct
from headway.objectives.ul2 import Mixture, ul2, ul2_decoder, ul2r
from headway.types import Vocab

__all__ = ["CLM", "FIM", "MLM", "PrefixLM", "SpanCorruption", "Mixture", "MaskedDiffusion", "is_masked_diffusion",
           "Example", "Objective", "decoder_only",
           "ul2", "ul2r", "ul2_decoder", "fim_parts", "reconstruct", "build_objective", "check_spec", "text_lead",
           "sentinels_for", "vocab_for", "register"]

SINGLE = names()  # the spec names registered by headway's own objectives (live list: registry.names())


def _single(name: str, vocab: Vocab, codec: Codec) -> Objective:
    return make(name, vocab, codec)


def check_spec(spec: str) -> list[tuple[str, float]]:
    """Parse an objective spec without a vocabulary: [(name, weight)], or a ValueError naming the
    bad part (unknown name, a weight that is not a finite number >= 0, no positive weight)."""
    import math

    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"objective spec is empty; choose from {list(names())} or a mix like 'clm:0.5,fim:0.5'")
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    out = []
    for p in parts:
        name, colon, w = p.partition(":")
        name = name.strip()
        if name not in names():
            raise ValueError(f"unknown objective {name!r} in {spec!r}; choose from {list(names())} or a mix like "
                             "'clm:0.5,fim:0.5'")
        try:
            weight = float(w) if colon else 1.0
        except ValueError:
            raise ValueError(f"objective spec {spec!r}: weight {w!r} of {name!r} is not a number") from None
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"objective spec {spec!r}: weight of {name!r} must be a finite number >= 0, got {w!r}")
        out.append((name, weight))
    if sum(w for _, w in out) <= 0:
        raise ValueError(f"objective spec {spec!r}: the weights must have a positive sum")
    return out


def build_objective(spec: str, vocab: Vocab, codec: Codec = None, *, row_length: int | None = None) -> Objective:
    """'clm' -> CLM; 'clm:0.5,fim:0.5' -> a 50/50 Mixture. `fim` alone always transforms (rate 1);
    mix it with clm for the usual FIM rate. `codec` = (encode, decode) for character-level FIM.
    With `row_length`, a vocabulary with fewer sentinels than span corruption needs to fill rows of that
    length is refused (`sentinels_for(spec, row_length)` says how many; `vocab_for` builds one)."""
    parsed = check_spec(spec)
    if row_length is not None and (need := sentinels_for(spec, row_length)) > vocab.num_sentinels:
        raise ValueError(f"build_objective: {spec!r} at rows of {row_length} tokens needs {need} sentinels to fill "
                         f"them; the Vocab has {vocab.num_sentinels}. Build it with vocab_for(tokenizer, {spec!r}, "
                         f"{row_length}) or Vocab.from_tokenizer(tokenizer, num_sentinels={need})")
    if len(parsed) == 1 and ":" not in spec:
        return _single(parsed[0][0], vocab, codec)
    return Mixture([(_single(name, vocab, codec), weight) for name, weight in parsed], name=spec)


DEFAULT_SENTINELS = 100  # T5's count; enough for span corruption in rows of up to ~800 tokens


def sentinels_for(spec: str, row_length: int) -> int:
    """Sentinels a run of `spec` at rows of `row_length` tokens gets: T5's 100, or more where a span
    denoiser's longest document that fits a row has more spans (UL2's X(μ=3, r=0.5) needs about S/8,
    so 256 at S=2048), so that every denoiser fills its rows exactly or leaves 1-2 positions free.
    Each sentinel above 100 is one more vocabulary id (an embedding row and a head row)."""
    if not isinstance(row_length, int) or row_length < 2:
        raise ValueError(f"sentinels_for: `row_length` must be an int >= 2, got {row_length!r}")
    probe = Vocab(2, num_sentinels=1)
    need = 0
    for name, _ in check_spec(spec):
        for m in _span_members(_single(name, probe, None)):
            need = max(need, m.sentinels_needed(row_length))
    return max(DEFAULT_SENTINELS, need)


def _span_members(objective: Objective) -> list[SpanCorruption]:
    if isinstance(objective, SpanCorruption):
        return [objective]
    return [s for m in getattr(objective, "members", []) for s in _span_members(m)]


def vocab_for(tokenizer: object, spec: str, row_length: int) -> Vocab:
    """The vocabulary a run of `spec` at rows of `row_length` trains with: the tokenizer's whole
    vocabulary as the base split, then headway's specials and `sentinels_for(spec, row_length)`
    sentinels. The trainer, `headway eval/sample/infill` and export all build it here, so they agree."""
    return Vocab.from_tokenizer(tokenizer, num_sentinels=sentinels_for(spec, row_length))

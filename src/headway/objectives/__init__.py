"""Pre-training objectives: each is a callable `objective(tokens, rng) -> Example`."""

from __future__ import annotations

from collections.abc import Callable

from headway.objectives.base import Example, Objective, decoder_only
from headway.objectives.clm import CLM
from headway.objectives.fim import FIM, fim_parts
from headway.objectives.mlm import MLM
from headway.objectives.prefix_lm import PrefixLM
from headway.objectives.span import SpanCorruption, reconstruct
from headway.objectives.ul2 import Mixture, ul2, ul2_decoder, ul2r
from headway.types import Vocab

__all__ = ["CLM", "FIM", "MLM", "PrefixLM", "SpanCorruption", "Mixture", "Example", "Objective", "decoder_only",
           "ul2", "ul2r", "ul2_decoder", "fim_parts", "reconstruct", "build_objective"]

Codec = tuple[Callable[[str], list[int]], Callable[[list[int]], str]] | None


def _single(name: str, vocab: Vocab, codec: Codec) -> Objective:
    enc, dec = codec if codec is not None else (None, None)
    makers: dict[str, Callable[[], Objective]] = {
        "clm": lambda: CLM(vocab.eos),
        "mlm": lambda: MLM(vocab),
        "prefix_lm": lambda: PrefixLM(vocab.eos),
        "fim": lambda: FIM(vocab, rate=1.0, encode=enc, decode=dec),
        "span": lambda: SpanCorruption(vocab),
        "ul2": lambda: ul2(vocab),
        "ul2r": lambda: ul2r(vocab),
        "ul2_decoder": lambda: ul2_decoder(vocab),
    }
    if name not in makers:
        raise ValueError(f"unknown objective {name!r}; choose from {sorted(makers)} or a mix like 'clm:0.5,fim:0.5'")
    return makers[name]()



def build_objective(spec: str, vocab: Vocab, codec: Codec = None) -> Objective:
    """'clm' -> CLM; 'clm:0.5,fim:0.5' -> a 50/50 Mixture. `fim` alone always transforms (rate 1);
    mix it with clm for the usual FIM rate. `codec` = (encode, decode) for character-level FIM."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise ValueError("objective spec is empty")
    if len(parts) == 1 and ":" not in parts[0]:
        return _single(parts[0], vocab, codec)
    members = []
    for p in parts:
        name, _, w = p.partition(":")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise ValueError(f"objective spec {spec!r}: weight {w!r} of {name!r} is not a number") from None
        members.append((_single(name.strip(), vocab, codec), weight))
    return Mixture(members, name=spec)

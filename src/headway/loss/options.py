"""`LossOptions`: the loss's settings as one checked, immutable object that a head, a model, a config
or a training run carries, instead of six loose keywords."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from headway.constants import IGNORE_INDEX
from headway.loss.validate import check_options

__all__ = ["LossOptions", "merge_options"]


@dataclass(frozen=True)
class LossOptions:
    """How `linear_cross_entropy` turns hidden states into a loss, apart from the tensors and the
    reduction. For one valid token t (label y_t != ignore_index) with logits z = h_t @ W.T + b over
    a vocabulary of V words:

    softcap c (None: no capping): the logits become ``c * tanh(z / c)`` before the softmax (Gemma-2's
        final-logit soft-capping); every term below uses the capped logits. Must be a finite number > 0.
    label_smoothing ε in [0, 1]: with lse = logsumexp(z), the token's loss is
        ``(1 - ε) * (lse - z[y_t]) + ε * (lse - mean(z))``: cross-entropy against the target mixed
        with the uniform distribution, as ``F.cross_entropy(label_smoothing=ε)``.
    z_loss ζ >= 0 (finite): adds ``ζ * lse**2`` to the token's loss (PaLM's auxiliary z-loss, which
        keeps the log-partition function near 0).
    ignore_index: the label value that is no target: such a token adds 0 to the loss and is not
        counted by the mean (default `headway.IGNORE_INDEX`, -100).
    chunk_size (None: chosen per call by `headway.loss.core.default_chunk_size`, within a 64 MiB
        float32 logits budget): tokens per chunk of the chunked loss. It changes memory and speed,
        not the value beyond float rounding.
    impl: which backend computes it: "auto" (chunked; on CUDA Cut-Cross-Entropy or Liger when
        installed and the options allow), "chunked", "reference" (the materializing oracle), "cce",
        "liger" (`headway.constants.LOSS_IMPLS`).

    So with the defaults, the loss of the whole call is ``F.cross_entropy((h @ W.T + b).float(), y,
    ignore_index=-100)``. Every field is checked when the object is made: a bad value raises a
    ValueError naming the field, what it must be and what it got (the same checks as
    `linear_cross_entropy`'s keywords). Numbers are stored as floats, so the object is plain JSON
    through `to_dict` / `from_dict`.

        opts = LossOptions(z_loss=1e-4, softcap=30.0)
        loss = linear_cross_entropy(hidden, weight, labels, options=opts)
        head = LMHead(64, 1000, loss=opts)
    """

    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None
    ignore_index: int = IGNORE_INDEX
    chunk_size: int | None = None
    impl: str = "auto"

    def __post_init__(self) -> None:
        check_options(label_smoothing=self.label_smoothing, z_loss=self.z_loss, softcap=self.softcap,
                      chunk_size=self.chunk_size, impl=self.impl, ignore_index=self.ignore_index, fn="LossOptions")
        object.__setattr__(self, "label_smoothing", float(self.label_smoothing))
        object.__setattr__(self, "z_loss", float(self.z_loss))
        object.__setattr__(self, "softcap", None if self.softcap is None else float(self.softcap))
        object.__setattr__(self, "ignore_index", int(self.ignore_index))

    def replace(self, **changes: Any) -> LossOptions:
        """A copy with `changes` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain (JSON-able) dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LossOptions:
        """Options from `to_dict`'s output; an unknown key is a ValueError naming it."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"LossOptions: unknown field(s) {unknown}; the fields are {sorted(names)}")
        return cls(**d)


DEFAULTS = LossOptions()
"""The default options: plain cross-entropy, `ignore_index=-100`, chunk size chosen per call, impl "auto"."""


def merge_options(fn: str, options: LossOptions | None, **keywords: Any) -> dict[str, Any]:
    """The option values a loss call runs with, from its `options` object and its keywords.

    Without `options` the keywords are returned as they are (they are checked with the call's other
    arguments). With it, each option comes from `options`; a keyword left at its default defers to
    it, and a keyword set to a value other than the default and other than `options`' raises a
    ValueError naming both (``fn: z_loss=0.001 and options.z_loss=0.0001 disagree``)."""
    if options is None:
        return keywords
    if not isinstance(options, LossOptions):
        raise ValueError(f"{fn}: `options` must be a headway.LossOptions or None, got {type(options).__name__}")
    out: dict[str, Any] = {}
    for name, value in keywords.items():
        default, chosen = getattr(DEFAULTS, name), getattr(options, name)
        if _differs(value, default) and _differs(value, chosen):
            raise ValueError(f"{fn}: {name}={value!r} and options.{name}={chosen!r} disagree; give the option once "
                             f"(in `options`, or as the keyword without `options`)")
        out[name] = chosen
    return out


def _differs(a: object, b: object) -> bool:
    """Whether two option values differ (None only equals None; 1 equals 1.0)."""
    if a is None or b is None:
        return (a is None) != (b is None)
    try:
        return bool(a != b)
    except Exception:  # noqa: BLE001 - an incomparable value differs
        return True

"""A split vocabulary: `base` ids [0, base_size) from the tokenizer, then a `special` split.

Special tokens never come out of the tokenizer's base range, so an objective can tell them apart
by id alone (``id >= base_size``) and MLM never draws one as a random replacement.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_SPECIALS: tuple[str, ...] = (
    "<eos>", "<pad>", "<mask>",
    "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>",
    "[NLU]", "[NLG]", "[S2S]",
)


def sentinel(i: int) -> str:
    """Name of the i-th T5 sentinel (`<extra_id_i>`)."""
    return f"<extra_id_{i}>"


@dataclass(frozen=True)
class Vocab:
    """Ids of a split vocabulary. `specials` are named in order after the base ids."""

    base_size: int
    specials: tuple[str, ...] = DEFAULT_SPECIALS
    num_sentinels: int = 100
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.base_size < 2:
            raise ValueError(f"Vocab: `base_size` must be >= 2, got {self.base_size}")
        names = list(self.specials) + [sentinel(i) for i in range(self.num_sentinels)]
        if len(set(names)) != len(names):
            raise ValueError("Vocab: special token names must be unique")
        object.__setattr__(self, "_ids", {n: self.base_size + i for i, n in enumerate(names)})

    @property
    def special_size(self) -> int:
        return len(self._ids)

    @property
    def size(self) -> int:
        return self.base_size + self.special_size

    @property
    def split_sizes(self) -> dict[str, int]:
        return {"base": self.base_size, "special": self.special_size}

    def id(self, name: str) -> int:
        """Id of a special token; a clear error when the vocabulary lacks it."""
        try:
            return self._ids[name]
        except KeyError:
            raise ValueError(f"Vocab: special token {name!r} is missing; have {sorted(self._ids)[:12]}...") from None

    def sentinel_id(self, i: int) -> int:
        if not 0 <= i < self.num_sentinels:
            raise ValueError(f"Vocab: sentinel index must be in [0, {self.num_sentinels}), got {i}")
        return self._ids[sentinel(i)]

    def is_special(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids) >= self.base_size

    def name(self, i: int) -> str | None:
        """The special token's name for id i, None for a base id."""
        for n, j in self._ids.items():
            if j == i:
                return n
        return None

    @property
    def eos(self) -> int:
        return self.id("<eos>")

    @property
    def pad(self) -> int:
        return self.id("<pad>")

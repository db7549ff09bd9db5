"""Deprecated import path: `Vocab`, `DEFAULT_SPECIALS` and `sentinel` live in `headway.types`
(`Vocab` also as `headway.Vocab`). Importing them from here works until 0.3.0, with a
`DeprecationWarning`."""

from __future__ import annotations

import warnings
from typing import Any

__all__: list[str] = []  # nothing public here any more
_MOVED = ("DEFAULT_SPECIALS", "Vocab", "sentinel")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import headway.types

        warnings.warn(f"headway.data.vocab.{name} is deprecated and will be removed in 0.3.0; import it from "
                      f"headway.types (or use headway.{name})" if name == "Vocab" else
                      f"headway.data.vocab.{name} is deprecated and will be removed in 0.3.0; import it from "
                      "headway.types", DeprecationWarning, stacklevel=2)
        return getattr(headway.types, name)
    raise AttributeError(f"module 'headway.data.vocab' has no attribute {name!r}")

"""Render what an objective trains on: inputs, targets, ignored positions, attention kind."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from headway.constants import IGNORE_INDEX
from headway.types import Example, Vocab

COLORS = {"target": "\033[32m", "ignored": "\033[90m", "prefix": "\033[36m", "reset": "\033[0m"}


def token_text(i: int, vocab: Vocab, decode: Callable[[list[int]], str] | None) -> str:
    name = vocab.name(int(i))
    if name is not None:
        return name
    return repr(decode([int(i)]))[1:-1].replace(" ", "␣") if decode else str(int(i))


def render_example(ex: Example, vocab: Vocab, decode: Callable[[list[int]], str] | None = None,
                   color: bool = False) -> str:
    """One line per position: position, attention kind (bi = bidirectional prefix, causal),
    input token, and the target it is trained to predict ('-' when ignored)."""
    c = COLORS if color else dict.fromkeys(COLORS, "")
    lines = [f"{'pos':>4}  {'attn':<6} {'input':<24} target",
             f"{'':>4}  prefix={ex.prefix_length}  targets={ex.num_targets}/{len(ex)}"]
    for t, (i, y) in enumerate(zip(ex.input_ids.tolist(), ex.labels.tolist())):
        kind = "bi" if t < ex.prefix_length else "causal"
        inp = token_text(i, vocab, decode)
        tgt = "-" if y == IGNORE_INDEX else token_text(y, vocab, decode)
        col = c["target"] if y != IGNORE_INDEX else c["ignored"]
        pre = c["prefix"] if kind == "bi" else ""
        lines.append(f"{t:>4}  {pre}{kind:<6}{c['reset']} {inp[:24]:<24} {col}{tgt}{c['reset']}")
    return "\n".join(lines)


def loss_mask_image(ex: Example) -> np.ndarray:
    """(1, L) array: 1 where position t has a target."""
    return (ex.labels != IGNORE_INDEX).astype(np.float32)[None, :]

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
    input token, and the target it is trained to predict ('-' when ignored); for an example with
    loss weights (masked diffusion: 1/t) also each target's weight."""
    c = COLORS if color else dict.fromkeys(COLORS, "")
    w = ex.loss_weights
    head = f"{'pos':>4}  {'attn':<6} {'input':<24} target"
    info = f"{'':>4}  prefix={ex.prefix_length}  targets={ex.num_targets}/{len(ex)}"
    if w is not None:
        head = f"{head:<46} weight"
        given = sorted({float(x) for x in w[ex.labels != IGNORE_INDEX]})
        if len(given) == 1:
            info += f"  weight {given[0]:.4g} on every target (1/t: t = {1 / given[0]:.4g})"
    lines = [head, info]
    for t, (i, y) in enumerate(zip(ex.input_ids.tolist(), ex.labels.tolist())):
        kind = "bi" if t < ex.prefix_length else "causal"
        inp = token_text(i, vocab, decode)
        tgt = "-" if y == IGNORE_INDEX else token_text(y, vocab, decode)
        col = c["target"] if y != IGNORE_INDEX else c["ignored"]
        pre = c["prefix"] if kind == "bi" else ""
        line = f"{t:>4}  {pre}{kind:<6}{c['reset']} {inp[:24]:<24} {col}{tgt}{c['reset']}"
        if w is not None and y != IGNORE_INDEX:
            line += " " * max(1, 9 - len(tgt)) + f"{float(w[t]):.4g}"
        lines.append(line)
    return "\n".join(lines)


def loss_mask_image(ex: Example) -> np.ndarray:
    """(1, L) array: 1 where position t has a target."""
    return (ex.labels != IGNORE_INDEX).astype(np.float32)[None, :]

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
                   color: bool = False, depth_targets: list[np.ndarray] | None = None) -> str:
    """One line per position: position, attention kind (bi = bidirectional prefix, causal),
    input token, and the target it is trained to predict ('-' when ignored); for an example with
    loss weights (masked diffusion: 1/t) also each target's weight. `depth_targets`: the (L,) targets
    of each multi-token prediction depth k = 1..K (`headway.models.mtp.depth_labels`), one more
    column each ("t+k+1": the token k + 1 ahead)."""
    c = COLORS if color else dict.fromkeys(COLORS, "")
    w = ex.loss_weights
    depths = [np.asarray(d) for d in depth_targets or []]
    extra = "".join(f" {f't+{k + 1}':<12}" for k in range(1, len(depths) + 1))
    head = f"{'pos':>4}  {'attn':<6} {'input':<24} {'target':<12}{extra}".rstrip()
    info = (f"{'':>4}  prefix={ex.prefix_length}  targets={ex.num_targets}/{len(ex)}"
            + "".join(f"  depth {k}: {int((d != IGNORE_INDEX).sum())}" for k, d in enumerate(depths, 1)))
    if w is not None:
        head = f"{head:<46} weight"
        given = sorted({float(x) for x in w[ex.labels != IGNORE_INDEX]})
        if len(given) == 1:
            info += f"  weight {given[0]:.4g} on every target (1/t: t = {1 / given[0]:.4g})"
    lines = [head, info]
    for t, (i, y) in enumerate(zip(ex.input_ids.tolist(), ex.labels.tolist())):
        kind = "bi" if t < ex.prefix_length else "causal"
        inp = token_text(i, vocab, decode)
        pre = c["prefix"] if kind == "bi" else ""
        cells = []
        for yy in [y] + [int(d[t]) for d in depths]:
            tgt = "-" if yy == IGNORE_INDEX else token_text(yy, vocab, decode)
            col = c["target"] if yy != IGNORE_INDEX else c["ignored"]
            cells.append(f"{col}{tgt[:12] if depths else tgt:<{12 if depths else 0}}{c['reset']}")
        line = f"{t:>4}  {pre}{kind:<6}{c['reset']} {inp[:24]:<24} {' '.join(cells)}".rstrip()
        if w is not None and y != IGNORE_INDEX:
            tgt = token_text(y, vocab, decode)
            line += " " * max(1, 9 - len(tgt)) + f"{float(w[t]):.4g}"
        lines.append(line)
    return "\n".join(lines)


def loss_mask_image(ex: Example, depth_targets: list[np.ndarray] | None = None) -> np.ndarray:
    """(1 + K, L) array: 1 where position t has a target (row 0), a depth-k target (row k)."""
    rows = [ex.labels] + [np.asarray(d) for d in depth_targets or []]
    return np.stack([(r != IGNORE_INDEX).astype(np.float32) for r in rows])

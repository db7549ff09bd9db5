"""The two leak detectors. Both look at row 0's outputs of a (B, S) layout and ask which inputs
they depend on; an output t may depend on input (b, k) only when b = 0, k <= t + offset and k is
in t's document (the mask spec: docs/concepts.md; offset 0 for a model's outputs, offset k for a
multi-token prediction depth k, which sees the inputs up to t + k).

gradient (exact, float64): dep[t, b, k] = max_h |d (r . y[0, t]) / d x[b, k, h]| for a random
    projection r; a leak is dep > atol + rtol * scale, where scale is the largest *allowed*
    dependence anywhere (so an output with no legitimate dependence, like output 0 of a causal
    convolution without a residual, cannot be flagged by its own round-off).
black-box (no gradient, the model's own dtype): replace every input after position c by random
    tokens / vectors (several draws) and compare every output up to c; also replace another row
    entirely, and the first packed document. A leak is |y' - y| > atol + rtol * max|y|. It sees
    leaks without a gradient path (a detached sequence mean, top-k routing over the sequence).
    The input behind a leak is found by bisection: of the replaced inputs, keep replacing the
    half that still moves the output (about log2 of their number extra forward passes), then
    confirm with that one input replaced alone. A leak that needs several inputs replaced together
    (an interaction) names the output and no input, never a guessed one.

Randomness is reseeded before every forward pass, so dropout draws the same masks in both runs
(train mode is checked too: BatchNorm over time leaks only there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from headway.check.adapters import Probe


@dataclass(frozen=True)
class Tolerance:
    """A dependence counts as a leak when it exceeds `atol + rtol * scale` (scale: the largest
    legitimate dependence, or the output's magnitude for the black-box detector)."""

    atol: float
    rtol: float


GRADIENT_TOL = Tolerance(atol=1e-12, rtol=1e-7)  # float64: round-off is ~1e-15 of the scale
"""The gradient detector's tolerance (float64 copies: round-off is ~1e-15 of the scale)."""
BLACKBOX_TOL = Tolerance(atol=1e-6, rtol=1e-4)  # float32: FFT / reduction round-off is ~1e-7 of the scale
"""The black-box detector's tolerance (the model's dtype: FFT / reduction round-off is ~1e-7 of the scale)."""


@dataclass
class Finding:
    """One leak: which detector, mode, length and kind found it, and where.

    Every pair is a dependence the detector saw: the gradient detector's nonzero entries; the
    black-box detector's input cell replaced alone moving the output. `pairs` is empty when the
    black-box detector saw `outputs` move but no single input moved them alone.
    """

    detector: str  # "gradient" | "black-box"
    mode: str  # "train" | "eval"
    length: int
    kind: str  # "future" | "other row" | "other document"
    pairs: list[tuple[int, int]]  # (output, input) positions, first ones: both in row 0, but the input in
    # another row for kind "other row"
    magnitude: float  # the largest forbidden dependence relative to the scale
    module: str | None = None  # the first submodule (in execution order) whose output leaks
    matrix: np.ndarray | None = field(default=None, repr=False)  # (S, S) output x input dependence of row 0
    allowed: np.ndarray | None = field(default=None, repr=False)  # (S, S) bool: allowed region
    outputs: list[int] = field(default_factory=list)  # black-box: the output positions that moved, first ones

    def describe(self, n: int = 5, more: bool = True) -> str:
        """The first `n` pairs as text ("out t <- in k"; "... of another row" for that kind), with
        " ..." when there are more and `more`; "out t <- input not isolated ..." when the outputs
        moved but no single input moved them alone; "whole row" when neither is known."""
        if self.pairs:
            of = " of another row" if self.kind == "other row" else ""
            s = ", ".join(f"out {t} <- in {k}{of}" for t, k in self.pairs[:n])
            return s + (" ..." if more and len(self.pairs) > n else "")
        if self.outputs:
            outs = ", ".join(str(t) for t in self.outputs[:n]) + (" ..." if more and len(self.outputs) > n else "")
            return f"out {outs} <- input not isolated (no single input moves it alone)"
        return "whole row"


def layout(S: int, rows: int, packed: bool) -> Tensor | None:
    """docs (rows, S): two documents per row (cut at S // 2) when packed, else None."""
    if not packed:
        return None
    d = torch.zeros(rows, S, dtype=torch.long)
    d[:, S // 2 :] = 1
    return d


def allowed_map(S: int, rows: int, docs: Tensor | None, offset: int = 0) -> Tensor:
    """(S, rows, S) bool: may output t of row 0 depend on input (b, k)? (b = 0, k <= t + offset, same document)"""
    ar = torch.arange(S)
    ok = torch.zeros(S, rows, S, dtype=torch.bool)
    ok[:, 0] = ar[None, :] <= ar[:, None] + offset
    if docs is not None:
        ok[:, 0] &= docs[0][:, None] == docs[0][None, :]
    return ok


class Recorder:
    """Forward hooks on every submodule: the (B, S, ...) tensor each call returned, in call order."""

    def __init__(self, module: nn.Module | None, B: int, S: int) -> None:
        self.outs: list[tuple[str, Tensor]] = []
        self.hooks = []
        if module is None:
            return
        top = type(module).__name__
        for name, m in module.named_modules():
            self.hooks.append(m.register_forward_hook(lambda mod, i, o, n=name or top: self._keep(n, o, B, S)))

    def _keep(self, name: str, o: object, B: int, S: int) -> None:
        for t in (o if isinstance(o, (tuple, list)) else (o,)):
            if isinstance(t, Tensor) and t.dim() >= 2 and tuple(t.shape[:2]) == (B, S) and t.is_floating_point():
                self.outs.append((name, t))
                return

    def close(self) -> None:
        for h in self.hooks:
            h.remove()


def _seed(seed: int) -> None:
    torch.manual_seed(seed)


def gradient(probe: Probe, S: int, rows: int, packed: bool, mode: str, seed: int,
             tol: Tolerance = GRADIENT_TOL, offset: int = 0) -> list[Finding]:
    """The exact detector on a float64 copy of the model."""
    assert probe.vectors is not None and probe.hidden_size is not None
    docs = layout(S, rows, packed)
    g = torch.Generator().manual_seed(seed)
    dev = probe.device
    x = torch.randn(rows, S, probe.hidden_size, dtype=torch.float64, generator=g).to(dev).requires_grad_()
    probe.train(mode == "train")
    rec = Recorder(probe.module, rows, S)
    try:
        _seed(seed)
        y = probe.vectors(x, None if docs is None else docs.to(dev))
    finally:
        rec.close()
    r = torch.randn(y.shape[-1], dtype=y.dtype, generator=g).to(y.device)
    dep = torch.zeros(S, rows, S, dtype=torch.float64)
    for t in range(S):
        (gx,) = torch.autograd.grad((y[0, t] * r).sum(), x, retain_graph=True, allow_unused=True)
        if gx is not None:
            dep[t] = gx.abs().amax(-1).double().cpu()
    ok = allowed_map(S, rows, docs, offset)
    scale = float(dep[ok].max()) if bool(ok.any()) else 0.0
    bad = (~ok) & (dep > tol.atol + tol.rtol * scale)
    out = []
    for kind, sel in _kinds(S, rows, docs, offset):
        hits = (bad & sel).nonzero().tolist()  # [t, b, k]
        if not hits:
            continue
        pairs = [(t, k) for t, _, k in hits[:20]]
        t, b, k = hits[0]
        module = _first_module_gradient(rec.outs, x, r, t, b, k, ok, tol)
        mag = float((dep * (bad & sel)).max()) / max(scale, tol.atol)
        out.append(Finding("gradient", mode, S, kind, pairs, mag, module, dep[:, 0].numpy(), ok[:, 0].numpy()))
    return out


def _kinds(S: int, rows: int, docs: Tensor | None, offset: int = 0) -> list[tuple[str, Tensor]]:
    """(kind, (S, rows, S) selector) for the three kinds of forbidden dependence of row 0's outputs
    ("future": an input after t + offset)."""
    ar = torch.arange(S)
    future = torch.zeros(S, rows, S, dtype=torch.bool)
    future[:, 0] = ar[None, :] > ar[:, None] + offset
    other_row = torch.zeros(S, rows, S, dtype=torch.bool)
    other_row[:, 1:] = True
    kinds = [("future", future), ("other row", other_row)]
    if docs is not None:
        other_doc = torch.zeros(S, rows, S, dtype=torch.bool)
        other_doc[:, 0] = (docs[0][:, None] != docs[0][None, :]) & ~future[:, 0]
        kinds.append(("other document", other_doc))
    return kinds


def _first_module_gradient(outs: list[tuple[str, Tensor]], x: Tensor, r: Tensor, t: int, b: int, k: int,
                           ok: Tensor, tol: Tolerance) -> str | None:
    for name, o in outs:
        if not o.requires_grad:
            continue
        proj = torch.randn(o[0, t].numel(), dtype=o.dtype, generator=torch.Generator().manual_seed(1)).to(o.device)
        (gx,) = torch.autograd.grad((o[0, t].reshape(-1) * proj).sum(), x, retain_graph=True, allow_unused=True)
        if gx is None:
            continue
        dep = gx.abs().amax(-1).double().cpu()  # (B, S)
        scale = float(dep[ok[t]].max()) if bool(ok[t].any()) else 0.0
        if float(dep[b, k]) > tol.atol + tol.rtol * max(scale, float(dep.max())):
            return name
    return None


def _random_like(probe: Probe, base: Tensor, g: torch.Generator) -> Tensor:
    if base.dtype == torch.long:
        return torch.randint(0, probe.vocab_size or 2, base.shape, generator=g).to(base.device)
    return torch.randn(base.shape, generator=g, dtype=base.dtype).to(base.device)


def black_box(probe: Probe, S: int, rows: int, packed: bool, mode: str, seed: int, draws: int = 2,
              tol: Tolerance = BLACKBOX_TOL, dtype: torch.dtype = torch.float32, offset: int = 0) -> list[Finding]:
    """The perturbation detector: no gradients, no float64. Each kind of forbidden dependence is a
    (rows, S) set of input cells to replace and a (rows, S) set of output cells that must not move;
    a finding's pairs name an input cell that moves an output alone (`_isolate`): in the output's
    own row for "future" and "other document", in another row for "other row"."""
    g = torch.Generator().manual_seed(seed)
    on_ids = probe.ids is not None
    run_fn = probe.ids if on_ids else probe.vectors
    assert run_fn is not None
    docs = layout(S, rows, packed)
    if on_ids:
        base = torch.randint(0, probe.vocab_size or 2, (rows, S), generator=g)
    else:
        base = torch.randn(rows, S, probe.hidden_size or 1, generator=g, dtype=dtype)
    dev = probe.device
    base = base.to(dev)
    docs_dev = None if docs is None else docs.to(dev)
    probe.train(mode == "train")

    def run(inp: Tensor, record: bool = False) -> tuple[Tensor, list[tuple[str, Tensor]]]:
        rec = Recorder(probe.module if record else None, rows, S)
        try:
            _seed(seed)
            with torch.no_grad():
                y = run_fn(inp, docs_dev)
        finally:
            rec.close()
        return y.float().cpu(), [(n, o.detach().float().cpu()) for n, o in rec.outs]

    y0, outs0 = run(base, record=True)
    thr = tol.atol + tol.rtol * float(y0.abs().max())

    def change(inp: Tensor) -> Tensor:
        """(rows, S): how far each output moved from the unperturbed run."""
        return (run(inp)[0] - y0).abs().reshape(rows, S, -1).amax(-1)

    def attempt(kind: str, replace: Tensor, watch: Tensor) -> Finding | None:
        for _ in range(draws):
            inp = base.clone()
            sel = replace.to(dev)
            inp[sel] = _random_like(probe, inp[sel], g)
            diff = change(inp)
            moved = (diff > thr) & watch
            if not bool(moved.any()):
                continue
            b0 = 0 if bool(moved[0].any()) else int(moved.any(1).nonzero()[0])
            ts = moved[b0].nonzero().flatten().tolist()
            pairs = _isolate(change, base, inp, replace, watch, b0, ts[0], diff, thr, own_row=kind != "other row")
            module = _first_module_black_box(run, inp, outs0, lambda o: o[watch], tol)
            return Finding("black-box", mode, S, kind, pairs, float(diff[watch].max()) / max(thr, 1e-30), module,
                           outputs=ts[:20])
        return None

    found: list[Finding] = []
    # future: every input after c + offset replaced; every output up to c must stay
    last = S - 1 - offset  # cuts c < last leave some input to replace
    cuts = list(range(last)) if S <= 64 else sorted({*(2**i - 1 for i in range(1, 12)), *(2**i for i in range(12)),
                                                      S // 2, last - 1} & set(range(last)))
    for c in cuts:
        replace = torch.zeros(rows, S, dtype=torch.bool)
        replace[:, c + 1 + offset :] = True
        watch = torch.zeros(rows, S, dtype=torch.bool)
        watch[:, : c + 1] = True
        f = attempt("future", replace, watch)
        if f is not None:
            found.append(f)
            break
    if rows > 1:
        replace = torch.zeros(rows, S, dtype=torch.bool)
        replace[1:] = True
        f = attempt("other row", replace, ~replace)
        if f is not None:
            found.append(f)
    if docs is not None:
        replace = (docs == 0).expand(rows, S).clone()  # the first document of every row
        f = attempt("other document", replace, ~replace)
        if f is not None:
            found.append(f)
    if found and found[0].kind == "future":
        found[0].matrix, found[0].allowed = _single_position_map(run, base, y0, probe, g, S, docs, offset)
    return found


def _isolate(change: Callable[[Tensor], Tensor], base: Tensor, inp: Tensor, replace: Tensor, watch: Tensor,
             b0: int, t0: int, diff: Tensor, thr: float, own_row: bool) -> list[tuple[int, int]]:
    """[(t, k)]: output positions t of row b0 (in `watch`) that move when one input cell of `replace`
    (of row b0 when `own_row`) alone takes its value in `inp`; [] when no single cell is found.

    Bisection on output (b0, t0), which moved with every cell of `replace` replaced (`diff`): replace
    the first half of the candidate cells; keep it if (b0, t0) still moves, else keep the other half;
    the last cell is confirmed alone. At most ceil(log2 n) + 1 forward passes for n candidate cells;
    a dependence that needs several cells replaced together yields [].
    """
    cells = replace.nonzero().tolist()  # [[b, k]] row-major
    if own_row:
        cells = [c for c in cells if c[0] == b0]
    last, confirmed = diff, len(cells) == int(replace.sum())  # `diff` replaced exactly these cells
    while len(cells) > 1:
        half = cells[: len(cells) // 2]
        d = change(_with_cells(base, inp, half))
        if float(d[b0, t0]) > thr:
            cells, last, confirmed = half, d, True
        else:
            cells, confirmed = cells[len(half) :], False
    if not cells:
        return []
    if not confirmed:
        last = change(_with_cells(base, inp, cells))
        if not float(last[b0, t0]) > thr:
            return []
    k = cells[0][1]
    return [(t, k) for t in (((last[b0] > thr) & watch[b0]).nonzero().flatten().tolist())[:20]]


def _with_cells(base: Tensor, inp: Tensor, cells: list[list[int]]) -> Tensor:
    """`base` with the (b, k) `cells` taken from `inp`."""
    x = base.clone()
    idx = torch.tensor(cells, dtype=torch.long, device=base.device)
    x[idx[:, 0], idx[:, 1]] = inp[idx[:, 0], idx[:, 1]]
    return x


def _first_module_black_box(run, inp: Tensor, outs0: list[tuple[str, Tensor]], keep, tol: Tolerance) -> str | None:  # noqa: ANN001
    _, outs = run(inp, record=True)
    if len(outs) != len(outs0):
        return None
    for (name, a), (_, b) in zip(outs0, outs):
        if a.shape != b.shape:
            continue
        ka, kb = keep(a), keep(b)
        if bool(((ka - kb).abs() > tol.atol + tol.rtol * float(a.abs().max())).any()):
            return name
    return None


def _single_position_map(run, base: Tensor, y0: Tensor, probe: Probe, g: torch.Generator, S: int,  # noqa: ANN001
                         docs: Tensor | None, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(S, S) |change of row 0's output t| when input k alone is replaced: the heat map's data."""
    m = np.zeros((S, S))
    for k in range(S):
        inp = base.clone()
        inp[:, k : k + 1] = _random_like(probe, inp[:, k : k + 1], g)
        y, _ = run(inp)
        m[:, k] = (y[0] - y0[0]).abs().reshape(S, -1).amax(-1).numpy()
    return m, allowed_map(S, base.shape[0], docs, offset)[:, 0].numpy()

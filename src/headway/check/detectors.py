"""The two leak detectors. Both look at row 0's outputs of a (B, S) layout and ask which inputs
they depend on; an output t may depend on input (b, k) only when b = 0, k <= t and k is in t's
document (the mask spec of DESIGN.md).

gradient (exact, float64): dep[t, b, k] = max_h |d (r . y[0, t]) / d x[b, k, h]| for a random
    projection r; a leak is dep > atol + rtol * scale, where scale is the largest *allowed*
    dependence anywhere (so an output with no legitimate dependence, like output 0 of a causal
    convolution without a residual, cannot be flagged by its own round-off).
black-box (no gradient, the model's own dtype): replace every input after position c by random
    tokens / vectors (several draws) and compare every output up to c; also replace another row
    entirely, and the first packed document. A leak is |y' - y| > atol + rtol * max|y|. It sees
    leaks without a gradient path (a detached sequence mean, top-k routing over the sequence).

Randomness is reseeded before every forward pass, so dropout draws the same masks in both runs
(train mode is checked too: BatchNorm over time leaks only there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from headway.check.adapters import Probe


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


GRADIENT_TOL = Tolerance(atol=1e-12, rtol=1e-7)  # float64: round-off is ~1e-15 of the scale
BLACKBOX_TOL = Tolerance(atol=1e-6, rtol=1e-4)  # float32: FFT / reduction round-off is ~1e-7 of the scale


@dataclass
class Finding:
    """One leak: which detector, mode, length and kind found it, and where."""

    detector: str  # "gradient" | "black-box"
    mode: str  # "train" | "eval"
    length: int
    kind: str  # "future" | "other row" | "other document"
    pairs: list[tuple[int, int]]  # (output position of row 0, input position) pairs that leak, first ones
    magnitude: float  # the largest forbidden dependence relative to the scale
    module: str | None = None  # the first submodule (in execution order) whose output leaks
    matrix: np.ndarray | None = field(default=None, repr=False)  # (S, S) output x input dependence of row 0
    allowed: np.ndarray | None = field(default=None, repr=False)  # (S, S) bool: allowed region


def layout(S: int, rows: int, packed: bool) -> Tensor | None:
    """docs (rows, S): two documents per row (cut at S // 2) when packed, else None."""
    if not packed:
        return None
    d = torch.zeros(rows, S, dtype=torch.long)
    d[:, S // 2 :] = 1
    return d


def allowed_map(S: int, rows: int, docs: Tensor | None) -> Tensor:
    """(S, rows, S) bool: may output t of row 0 depend on input (b, k)?"""
    ar = torch.arange(S)
    ok = torch.zeros(S, rows, S, dtype=torch.bool)
    ok[:, 0] = ar[None, :] <= ar[:, None]
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
             tol: Tolerance = GRADIENT_TOL) -> list[Finding]:
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
    ok = allowed_map(S, rows, docs)
    scale = float(dep[ok].max()) if bool(ok.any()) else 0.0
    bad = (~ok) & (dep > tol.atol + tol.rtol * scale)
    out = []
    for kind, sel in _kinds(S, rows, docs):
        hits = (bad & sel).nonzero().tolist()  # [t, b, k]
        if not hits:
            continue
        pairs = [(t, k) for t, _, k in hits[:20]]
        t, b, k = hits[0]
        module = _first_module_gradient(rec.outs, x, r, t, b, k, ok, tol)
        mag = float((dep * (bad & sel)).max()) / max(scale, tol.atol)
        out.append(Finding("gradient", mode, S, kind, pairs, mag, module, dep[:, 0].numpy(), ok[:, 0].numpy()))
    return out


def _kinds(S: int, rows: int, docs: Tensor | None) -> list[tuple[str, Tensor]]:
    """(kind, (S, rows, S) selector) for the three kinds of forbidden dependence of row 0's outputs."""
    ar = torch.arange(S)
    future = torch.zeros(S, rows, S, dtype=torch.bool)
    future[:, 0] = ar[None, :] > ar[:, None]
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
              tol: Tolerance = BLACKBOX_TOL, dtype: torch.dtype = torch.float32) -> list[Finding]:
    """The perturbation detector: no gradients, no float64."""
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
    found: list[Finding] = []
    # future: every input after c replaced; every output up to c must stay
    cuts = list(range(S - 1)) if S <= 64 else sorted({*(2**i - 1 for i in range(1, 12)), *(2**i for i in range(12)),
                                                      S // 2, S - 2} & set(range(S - 1)))
    for c in cuts:
        for _ in range(draws):
            inp = base.clone()
            inp[:, c + 1 :] = _random_like(probe, inp[:, c + 1 :], g)
            y, _ = run(inp)
            diff = (y[:, : c + 1] - y0[:, : c + 1]).abs().reshape(rows, c + 1, -1).amax(-1)  # (rows, c+1)
            if bool((diff > thr).any()):
                ts = (diff[0] > thr).nonzero().flatten().tolist() or (diff.amax(0) > thr).nonzero().flatten().tolist()
                module = _first_module_black_box(run, inp, outs0, lambda o, c=c: o[:, : c + 1], tol)
                found.append(Finding("black-box", mode, S, "future", [(t, c + 1) for t in ts[:20]],
                                     float(diff.max()) / max(thr, 1e-30), module))
                break
        if found:
            break
    checks = []
    if rows > 1:
        checks.append(("other row", lambda inp: _replace_rows(inp, probe, g), lambda o: o[0]))
    if docs is not None:
        first = docs[0] == 0
        checks.append(("other document", lambda inp: _replace_where(inp, first.to(dev), probe, g),
                       lambda o: o[:, ~first]))
    for kind, perturb, keep in checks:
        for _ in range(draws):
            inp = perturb(base.clone())
            y, _ = run(inp)
            diff = (keep(y) - keep(y0)).abs()
            if bool((diff > thr).any()):
                module = _first_module_black_box(run, inp, outs0, keep, tol)
                found.append(Finding("black-box", mode, S, kind, [], float(diff.max()) / max(thr, 1e-30), module))
                break
    if found and found[0].kind == "future":
        found[0].matrix, found[0].allowed = _single_position_map(run, base, y0, probe, g, S, docs)
    return found


def _replace_rows(inp: Tensor, probe: Probe, g: torch.Generator) -> Tensor:
    inp[1:] = _random_like(probe, inp[1:], g)
    return inp


def _replace_where(inp: Tensor, cols: Tensor, probe: Probe, g: torch.Generator) -> Tensor:
    inp[:, cols] = _random_like(probe, inp[:, cols], g)
    return inp


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
                         docs: Tensor | None) -> tuple[np.ndarray, np.ndarray]:
    """(S, S) |change of row 0's output t| when input k alone is replaced: the heat map's data."""
    m = np.zeros((S, S))
    for k in range(S):
        inp = base.clone()
        inp[:, k : k + 1] = _random_like(probe, inp[:, k : k + 1], g)
        y, _ = run(inp)
        m[:, k] = (y[0] - y0[0]).abs().reshape(S, -1).amax(-1).numpy()
    return m, allowed_map(S, base.shape[0], docs)[:, 0].numpy()

"""The causality check: does any output position depend on a later input position?

For a backbone f: (1, S, H) -> (1, S, H) run in float64, the check computes for every output
position t the gradient of a random projection of f(x)[t] with respect to every input x[k]
(one backward pass per position and layer, exact up to float64 round-off). Output t *leaks*
if that gradient is non-zero for some k > t (or, with `packed=True`, for any k in another
document of the same row). The report names the first leaking positions and the first layer
whose output already leaks.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from headway.types import Batch

REL_TOL = 1e-7  # of the largest legitimate dependence; float64 FFT round-off is ~1e-15


@dataclass
class CausalityReport:
    ok: bool
    leaks: list[tuple[int, int]] = field(default_factory=list)  # (output position, input position)
    layer: str | None = None
    seq_len: int = 0

    def __str__(self) -> str:
        if self.ok:
            return f"causal: no output depends on a later input ({self.seq_len} positions checked)"
        where = f" first in layer {self.layer!r};" if self.layer else ""
        pairs = ", ".join(f"out {t} <- in {k}" for t, k in self.leaks[:5])
        return f"NOT causal:{where} {pairs}{' ...' if len(self.leaks) > 5 else ''}"


def _two_documents(S: int) -> Batch:
    cut = S // 2
    doc = torch.tensor([[0] * cut + [1] * (S - cut)])
    pos = torch.tensor([list(range(cut)) + list(range(S - cut))])
    return Batch(torch.zeros(1, S, dtype=torch.long), torch.zeros(1, S, dtype=torch.long), pos, doc,
                 torch.zeros(1, 2, dtype=torch.long))


def _allowed(S: int, batch: Batch | None) -> Tensor:
    """(S, S) bool: output t may depend on input k."""
    ar = torch.arange(S)
    ok = ar[None, :] <= ar[:, None]
    if batch is not None:
        d = batch.document_ids[0]
        ok &= d[:, None] == d[None, :]
    return ok


def check_causal(model: nn.Module, seq_len: int = 24, packed: bool = True, seed: int = 0) -> CausalityReport:
    """Check a backbone (or a `LanguageModel`, whose `.backbone` is used) for dependence on the future.

    `packed=True` also checks that a row packed with two documents keeps them apart.
    """
    backbone = getattr(model, "backbone", model)
    net = copy.deepcopy(backbone).double().eval()
    H = next(p for p in net.parameters() if p.dim() == 2).shape[1]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, seq_len, H, dtype=torch.float64, generator=g, requires_grad=True)
    batch = _two_documents(seq_len) if packed else None
    outs: list[tuple[str, Tensor]] = []
    hooks = []
    for name, child in net.named_children():
        if isinstance(child, nn.ModuleList):  # the layers: find the first one whose output leaks
            for j, layer in enumerate(child):
                hooks.append(layer.register_forward_hook(lambda m, i, o, n=f"{name}.{j}": outs.append((n, o))))
    try:
        final = net(x, batch)
    finally:
        for h in hooks:
            h.remove()
    allowed = _allowed(seq_len, batch)
    r = torch.randn(H, dtype=torch.float64, generator=g)
    for name, out in [*outs, ("output", final)]:
        leaks = []
        for t in range(seq_len):
            (gx,) = torch.autograd.grad((out[0, t] * r).sum(), x, retain_graph=True)
            dep = gx[0].abs().amax(dim=-1)  # (S,) dependence of output t on each input
            scale = dep[allowed[t]].max().clamp(min=1e-300)
            bad = (~allowed[t]) & (dep > REL_TOL * scale)
            leaks.extend((t, int(k)) for k in bad.nonzero().flatten())
        if leaks:
            return CausalityReport(False, leaks, None if name == "output" else name, seq_len)
    return CausalityReport(True, [], None, seq_len)

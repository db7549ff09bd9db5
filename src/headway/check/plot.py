"""The heat map of a causality report: row 0's output x input dependence, allowed region outlined."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from headway.check.detectors import Finding


def heatmap(f: Finding, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(f.matrix, dtype=np.float64)
    S = m.shape[0]
    scale = m[f.allowed].max() if f.allowed is not None and f.allowed.any() else m.max()
    rel = np.log10(np.maximum(m / max(scale, 1e-300), 1e-16))  # dependence relative to the largest allowed one
    fig, ax = plt.subplots(figsize=(5.2, 4.6), dpi=120)
    im = ax.imshow(rel, cmap="magma", vmin=-16, vmax=0, origin="upper", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="log10 dependence / largest allowed")
    if f.allowed is not None:  # outline the allowed region cell by cell
        a = f.allowed.astype(bool)
        for t in range(S):
            for k in range(S):
                if not a[t, k]:
                    continue
                for dt, dk, edge in ((-1, 0, "top"), (1, 0, "bottom"), (0, -1, "left"), (0, 1, "right")):
                    tt, kk = t + dt, k + dk
                    if 0 <= tt < S and 0 <= kk < S and a[tt, kk]:
                        continue
                    y0, x0 = t - 0.5, k - 0.5
                    xs, ys = {"top": ([x0, x0 + 1], [y0, y0]), "bottom": ([x0, x0 + 1], [y0 + 1, y0 + 1]),
                              "left": ([x0, x0], [y0, y0 + 1]), "right": ([x0 + 1, x0 + 1], [y0, y0 + 1])}[edge]
                    ax.plot(xs, ys, color="cyan", linewidth=0.8)
    for t, k in f.pairs[:20]:
        ax.plot(k, t, marker="x", color="lime", markersize=4)
    ax.set_xlabel("input position k")
    ax.set_ylabel("output position t")
    where = f"\nfirst in {f.module}" if f.module else ""
    ax.set_title(f"{f.kind} leak: {f.detector}, {f.mode}, L={f.length}{where}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

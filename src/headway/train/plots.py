"""Pictures: the loss curve of a run, and an objective's attention and loss masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def centred_mean(x: np.ndarray, half: int | None = None) -> np.ndarray:
    """Each point's mean over a window centred on it, of `half` points each side (about 2% of the
    points by default), narrowed symmetrically at the ends: y[i] = mean(x[i-k : i+k+1]) with
    k = min(half, i, n-1-i). It has no lag, so it follows a falling loss from the first point (an
    exponential average started at the first loss trails the raw curve for its first hundreds of steps)."""
    n = len(x)
    if half is None:
        half = max(1, n // 50)
    c = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
    i = np.arange(n)
    k = np.minimum(half, np.minimum(i, n - 1 - i))
    return (c[i + k + 1] - c[i - k]) / (2 * k + 1)


def plot_metrics(metrics: Path, png: Path) -> Path:
    """Training loss (and validation loss) against step, from `metrics.jsonl`."""
    plt = _plt()
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    tr = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    sub = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r and r.get("subset")]
    full = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r and not r.get("subset")]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if tr:
        steps, loss = zip(*tr)
        ax.plot(steps, loss, label="train loss (objective mix)", lw=0.6, alpha=0.35, color="C0")
        ax.plot(steps, centred_mean(np.asarray(loss, dtype=np.float64)), lw=1.6, color="C0",
                label="train loss, smoothed (centred mean)")
    if sub:
        ax.plot(*zip(*sub), "o-", label="validation, first tokens (CLM)", ms=4, color="C1")
    if full:
        ax.plot(*zip(*full), "s", label="validation, whole split (CLM)", ms=7, color="C3")
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


def plot_example_masks(attn: np.ndarray, loss_mask: np.ndarray, title: str, png: Path) -> Path:
    """Attention mask (S, S) and loss mask (S,) side by side; a (1 + K, S) loss mask draws one
    column per row: the main targets, then each multi-token prediction depth's (t+2 .. t+K+1)."""
    plt = _plt()
    cols = loss_mask.reshape(-1, attn.shape[0]).T  # (S, 1 + K)
    K = cols.shape[1] - 1
    fig, (a, b) = plt.subplots(1, 2, figsize=(10 + 0.4 * K, 4.6), dpi=110,
                               gridspec_kw={"width_ratios": [1, 0.12 * (1 + K)]})
    a.imshow(attn, cmap="Blues", interpolation="nearest", vmin=0, vmax=1)  # all-True (MLM) is dark, not blank
    a.set_title("attention: query (row) may see key (column)")
    a.set_xlabel("key position")
    a.set_ylabel("query position")
    b.imshow(cols, cmap="Greens", aspect="auto", interpolation="nearest", vmin=0, vmax=1)
    b.set_title("target?")
    if K:
        b.set_xticks(range(1 + K), ["t+1"] + [f"t+{k + 1}" for k in range(1, K + 1)], fontsize=7)
    else:
        b.set_xticks([])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png

"""The loss plot's smoothed curve follows the raw loss from the first step (no lag, no start bias)."""

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from headway.train.plots import centred_mean, plot_metrics


def test_a_falling_loss_is_followed_from_the_first_step():
    steps = np.arange(1, 2001)
    rng = np.random.default_rng(0)
    raw = 5.0 + 3.7 * np.exp(-steps / 40.0) + rng.normal(0, 0.05, steps.size)  # 8.7 -> ~5 by step 100
    smooth = centred_mean(raw)
    assert smooth[0] == raw[0]
    truth = 5.0 + 3.7 * np.exp(-steps / 40.0)
    assert abs(smooth[99] - truth[99]) < 0.1  # an EMA(0.9) started at 8.7 is still far above by then
    assert np.std(smooth[500:] - truth[500:]) < np.std(raw[500:] - truth[500:]) / 2  # and it smooths


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=300), st.integers(1, 20))
def test_centred_mean_is_a_centred_window_mean(values, half):
    x = np.asarray(values)
    y = centred_mean(x, half)
    for i in range(len(x)):
        k = min(half, i, len(x) - 1 - i)
        assert np.isclose(y[i], x[i - k : i + k + 1].mean(), rtol=1e-9, atol=1e-9)


def test_plot_metrics_writes_a_png(tmp_path):
    rows = [{"step": s, "loss": 8.0 / (1 + s / 10)} for s in range(1, 60)] + [{"step": 59, "val_loss": 2.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    png = plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "loss.png")
    assert png.read_bytes()[:4] == b"\x89PNG"

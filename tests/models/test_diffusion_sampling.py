"""The reverse process of masked diffusion: every mask filled in `steps` steps, the most confident
predictions kept (low-confidence remasking), blocks left to right, the given tokens untouched."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from headway.models import build_model
from headway.models.diffusion_sampling import (
    bidirectional_row,
    diffusion_generate,
    diffusion_infill,
    transfer_counts,
    unmask,
)
from headway.types import Vocab

V = Vocab(base_size=61, num_sentinels=4)
MASK = V.id("<mask>")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(V, "transformer", "32x2", zero_init=False).eval()  # no ties: every output depends on the input


@given(masked=st.integers(0, 300), steps=st.integers(1, 400))
def test_transfer_counts_spread_every_position_over_the_steps(masked, steps):
    c = transfer_counts(masked, steps)
    assert sum(c) == masked and len(c) == (min(steps, masked) if masked else 0)
    assert all(a >= b for a, b in zip(c, c[1:])) and (not c or max(c) - min(c) <= 1) and all(x >= 1 for x in c)


def _spy(model, monkeypatch):  # noqa: ANN001, ANN202
    """Record the canvas of every forward pass."""
    seen = []
    real = model.hidden

    def hidden(ids, batch=None, cache=None):  # noqa: ANN001, ANN202
        seen.append(ids[0].clone())
        return real(ids, batch, cache)

    monkeypatch.setattr(model, "hidden", hidden)
    return seen


def test_low_confidence_remasking_keeps_the_most_confident_prediction(model, monkeypatch):
    prompt = torch.tensor([3, 14, 15, 9, 26])
    canvas = torch.cat([prompt, torch.full((6,), MASK)])
    seen = _spy(model, monkeypatch)
    out = unmask(model, canvas, V)  # one token per step
    assert len(seen) == 6 and (out[:5] == prompt).all() and (out != MASK).all() and (out < V.base_size).all()
    for j, c in enumerate(seen):  # step j sees 6 - j masks; the next canvas has the most confident one filled
        masked = (c == MASK).nonzero().squeeze(1)
        assert len(masked) == 6 - j
        nxt = seen[j + 1] if j + 1 < len(seen) else out
        filled = masked[nxt[masked] != MASK]
        assert len(filled) == 1
        with torch.no_grad():  # the step's confidences, recomputed with the model's own (unspied) forward
            h = type(model).hidden(model, c[None], bidirectional_row(c))[0, masked]
            z = model.head.logits(h).float()
        z[:, V.base_size:] = float("-inf")
        conf, guess = torch.softmax(z, -1).max(-1)
        assert int(filled[0]) == int(masked[conf.argmax()]) and int(nxt[filled[0]]) == int(guess[conf.argmax()])


def test_steps_and_blocks(model, monkeypatch):
    canvas = torch.cat([torch.tensor([1, 2]), torch.full((9,), MASK)])
    seen = _spy(model, monkeypatch)
    out = unmask(model, canvas, V, steps=3)
    assert len(seen) == 3 and (out != MASK).all()
    assert [int((c == MASK).sum()) for c in seen] == [9, 6, 3]
    seen.clear()
    out = unmask(model, canvas, V, steps=6, block_length=4)  # blocks of 4, 4, 1 positions, 2 + 2 + 2 steps
    assert (out != MASK).all() and len(seen) == 5  # the last block of 1 position takes 1 step
    for c in seen:  # a later block starts only once the earlier ones are full
        m = (c[2:] == MASK).tolist()
        first = m.index(True)
        assert all(m[(first // 4 + 1) * 4 + k] for k in range(len(m) - (first // 4 + 1) * 4))


def test_generate_and_infill_fill_exactly_their_length(model):
    g = torch.Generator().manual_seed(0)
    new = diffusion_generate(model, torch.tensor([5, 6, 7]), 8, V, temperature=0.9, top_k=5, generator=g)
    assert new.shape == (8,) and (new < V.base_size).all()
    mid = diffusion_infill(model, torch.tensor([5, 6]), torch.tensor([7, 8, 9]), V, 4, steps=2)
    assert mid.shape == (4,) and (mid < V.base_size).all()
    again = diffusion_infill(model, torch.tensor([5, 6]), torch.tensor([7, 8, 9]), V, 4, steps=2)
    assert torch.equal(mid, again)  # greedy: deterministic
    allowed = torch.zeros(V.size, dtype=torch.bool)
    allowed[42] = True
    assert int(diffusion_infill(model, torch.tensor([5]), torch.tensor([7]), V, 3, first_allowed=allowed)[0]) == 42
    with pytest.raises(ValueError, match="length"):
        diffusion_infill(model, torch.tensor([5]), torch.tensor([7]), V, 0)


def test_a_bidirectional_ssm_samples_too():
    torch.manual_seed(0)
    ssm = build_model(V, "gated_ssm", "32x1", bidirectional=True).eval()
    out = diffusion_generate(ssm, torch.tensor(np.arange(5)), 6, V, steps=3)
    assert out.shape == (6,) and (out < V.base_size).all()

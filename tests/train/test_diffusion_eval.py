"""The validation ELBO of masked diffusion: an unbiased estimate of the continuous-time bound, with an
honest standard error; the same masks at every evaluation."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from headway.models import build_model
from headway.models.diffusion_sampling import bidirectional_row
from headway.train.diffusion_eval import ElboResult, evaluate_elbo, pieces
from headway.types import Vocab

V = Vocab(base_size=31, num_sentinels=4)
MASK = V.id("<mask>")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(V, "transformer", "32x1", zero_init=False).double().eval()


@torch.no_grad()
def exact_bound(model, x: np.ndarray) -> float:  # noqa: ANN001
    """B(x) = ∫_0^1 (1/t) E[Σ_masked CE] dt by enumeration: each mask set S of size l has probability
    t^l (1-t)^(L-l), and ∫_0^1 t^(l-1) (1-t)^(L-l) dt = (l-1)! (L-l)! / L!."""
    L, total = len(x), 0.0
    xs = torch.from_numpy(x)
    for l in range(1, L + 1):
        beta = math.factorial(l - 1) * math.factorial(L - l) / math.factorial(L)
        for S in itertools.combinations(range(L), l):
            m = torch.zeros(L, dtype=torch.bool)
            m[list(S)] = True
            c = torch.where(m, MASK, xs)
            z = model.head.logits(model.hidden(c[None], bidirectional_row(c)))[0, m]
            total += beta * float(F.cross_entropy(z, xs[m], reduction="sum"))
    return total


def test_the_estimate_is_unbiased_for_the_continuous_time_bound(model):
    x = np.array([3, 17, 5, 9, 22, 1], dtype=np.int64)
    want = exact_bound(model, x)
    r = evaluate_elbo(model, [x], 10, MASK, V.pad, 64, 256, torch.device("cpu"), draws=800)
    assert r.tokens == 6 and r.draws == 800 and r.se_nats > 0
    assert abs(r.nats - want) < 4 * r.se_nats, (r.nats, want, r.se_nats)
    assert r.bits_per_byte == pytest.approx(r.nats / math.log(2) / 10)


def test_the_standard_error_is_what_repeated_evaluations_scatter_by(model):
    """Across independent seeds the totals scatter by about the reported standard error."""
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 31, n) for n in (7, 12, 3, 20)]
    runs = [evaluate_elbo(model, docs, 50, MASK, V.pad, 16, 64, torch.device("cpu"), draws=4, seed=s)
            for s in range(40)]
    spread = float(np.std([r.nats for r in runs], ddof=1))
    se = float(np.sqrt(np.mean([r.se_nats ** 2 for r in runs])))
    assert 0.6 < spread / se < 1.6  # the ratio of two estimates of one standard deviation (40 and 160 draws)


def test_documents_are_cut_at_seq_len_and_the_masks_are_fixed_by_the_seed(model):
    docs = [np.arange(25) % 31, np.arange(3), np.zeros(0, dtype=np.int64)]
    assert [len(p) for p in pieces(docs, 10)] == [10, 10, 5, 3]
    a = evaluate_elbo(model, docs, 40, MASK, V.pad, 10, 3, torch.device("cpu"))
    b = evaluate_elbo(model, docs, 40, MASK, V.pad, 10, 5, torch.device("cpu"))  # other batches, same masks
    assert a.tokens == 28 and a.nats == pytest.approx(b.nats, rel=1e-12) and a.se_nats == pytest.approx(b.se_nats)
    assert a.as_dict()["note"].startswith("upper bound")
    with pytest.raises(ValueError, match="draws"):
        evaluate_elbo(model, docs, 40, MASK, V.pad, 10, 3, torch.device("cpu"), draws=1)


def test_no_tokens_gives_nan_not_an_error(model):
    r = evaluate_elbo(model, [np.zeros(0, dtype=np.int64)], 0, MASK, V.pad, 10, 3, torch.device("cpu"))
    assert r.tokens == 0 and math.isnan(r.bits_per_byte) and isinstance(r, ElboResult)


def test_every_rank_runs_forward_passes_of_one_shape_and_the_shares_add_up(model, monkeypatch):
    """Under torch.distributed each rank scores its own pieces, in as many forward passes as every other
    rank and of the same shapes (FSDP and the vocabulary-parallel head communicate inside them); the
    ranks' sums add up to the one-process bound (here each rank's share is computed alone, unreduced)."""
    docs = [np.arange(25) % 31, np.arange(3), np.arange(17) % 7, np.arange(9) % 5]
    one = evaluate_elbo(model, docs, 60, MASK, V.pad, 10, 3, torch.device("cpu"))
    shapes: dict[int, list] = {}
    shares = []
    real = type(model).forward
    for rank in (0, 1):
        seen = shapes.setdefault(rank, [])
        monkeypatch.setattr(type(model), "forward",
                            lambda self, b, *a, _seen=seen, **k: _seen.append(tuple(b.input_ids.shape))
                            or real(self, b, *a, **k))
        shares.append(evaluate_elbo(model, docs, 60, MASK, V.pad, 10, 3, torch.device("cpu"), rank=rank, world=2))
    assert shapes[0] == shapes[1] and all(B == 3 for B, _ in shapes[0])
    assert sum(s.nats for s in shares) == pytest.approx(one.nats, rel=1e-12)
    assert sum(s.se_nats**2 for s in shares) == pytest.approx(one.se_nats**2, rel=1e-12)
    assert sum(s.tokens for s in shares) == one.tokens

"""Masked diffusion: the mask rate follows U(ε, 1), the weights are exactly 1/t on masked positions and 0
elsewhere, labels only where masked, packed rows keep documents apart, and the batch mean over
`num_items` is LLaDA's estimator."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from headway.constants import IGNORE_INDEX
from headway.data.collate import collate
from headway.data.packing import Packer, examples_from_documents
from headway.masks import dense_mask
from headway.models import build_model
from headway.objectives import MaskedDiffusion, build_objective, is_masked_diffusion
from headway.objectives.diffusion import EPS as EPS_DIFFUSION
from headway.types import Vocab

V = Vocab(base_size=97, num_sentinels=8)
docs_st = st.lists(st.lists(st.integers(0, 96), min_size=1, max_size=70), min_size=1, max_size=20)


def ks_distance(sample: np.ndarray, cdf) -> float:  # noqa: ANN001
    """sup_x |F_n(x) - F(x)| of a sample against a continuous CDF."""
    x = np.sort(sample)
    n = len(x)
    f = cdf(x)
    return float(max((np.arange(1, n + 1) / n - f).max(), (f - np.arange(n) / n).max()))


def uniform_cdf(x: np.ndarray) -> np.ndarray:
    return np.clip((x - EPS_DIFFUSION) / (1 - EPS_DIFFUSION), 0, 1)


def ks_critical(n: int, alpha: float = 1e-3) -> float:
    """Kolmogorov-Smirnov: P(sup |F_n - F| > c) <= alpha for c = sqrt(ln(2 / alpha) / (2n)) (the DKW
    inequality, a bound for every n)."""
    return math.sqrt(math.log(2 / alpha) / (2 * n))


def test_t_is_drawn_from_u_eps_1():
    obj = MaskedDiffusion(V)
    rng = np.random.default_rng(0)
    ts = np.array([obj.draw_t(rng) for _ in range(20000)])
    assert ts.min() >= EPS_DIFFUSION and ts.max() < 1
    assert ks_distance(ts, uniform_cdf) < ks_critical(len(ts))


def test_the_mask_rate_of_examples_follows_u_eps_1():
    """Each example's masked fraction f = M / L, with M ~ Binomial(L, t), t ~ U(ε, 1). Tolerance: the DKW
    bound for n examples at α = 1e-3, plus the binomial noise: |f - t| <= δ = 4·sqrt(1/(4L)) except with
    probability < 1e-4 per example, which moves the CDF by at most δ·(density 1/(1-ε)) + that probability."""
    obj = MaskedDiffusion(V)
    rng = np.random.default_rng(1)
    L, n = 10_000, 2000
    doc = np.arange(L) % 97
    frac = np.array([(obj(doc, rng).labels != IGNORE_INDEX).mean() for _ in range(n)])
    delta = 4 * math.sqrt(1 / (4 * L))
    tol = ks_critical(n) + delta / (1 - EPS_DIFFUSION) + 1e-4
    assert ks_distance(frac, uniform_cdf) < tol
    # binned: each tenth of [ε, 1] holds its share of the examples, within the same tolerance
    hist, _ = np.histogram(frac, bins=np.linspace(EPS_DIFFUSION, 1, 11))
    assert np.abs(hist / n - 0.1).max() < 2 * tol


@settings(max_examples=80)
@given(doc=st.lists(st.integers(0, 96), min_size=1, max_size=200), seed=st.integers(0, 2**32 - 1))
def test_weights_are_exactly_one_over_t_on_masked_positions_and_labels_only_there(doc, seed):
    obj = MaskedDiffusion(V)
    t = obj.draw_t(np.random.default_rng(seed))  # the t the call below draws first
    ex = obj(np.array(doc), np.random.default_rng(seed))
    doc = np.array(doc)
    masked = ex.input_ids == V.id("<mask>")
    assert ex.prefix_length == len(doc) and ex.num_items == len(doc)  # bidirectional; every position counts
    assert (ex.input_ids[~masked] == doc[~masked]).all()
    assert (ex.labels[masked] == doc[masked]).all() and (ex.labels[~masked] == IGNORE_INDEX).all()
    assert ex.loss_weights is not None and ex.loss_weights.dtype == np.float32
    assert (ex.loss_weights[masked] == np.float32(1 / t)).all() and (ex.loss_weights[~masked] == 0).all()


@given(t=st.floats(EPS_DIFFUSION, 1.0), seed=st.integers(0, 10**6))
def test_a_given_t_masks_at_that_rate_and_weights_by_it(t, seed):
    ex = MaskedDiffusion(V).example(np.arange(50) % 97, t, np.random.default_rng(seed))
    w = ex.loss_weights[ex.labels != IGNORE_INDEX]
    assert (w == np.float32(1 / t)).all()
    if t == 1.0:
        assert (ex.labels != IGNORE_INDEX).all()


@settings(max_examples=40)
@given(docs_st, st.sampled_from(["bfd", "concat", "single"]), st.integers(8, 48), st.integers(0, 10**6),
       st.sampled_from(["diffusion", "clm:0.5,diffusion:0.5", "mlm:0.5,diffusion:0.5"]))
def test_packed_rows_keep_documents_apart(docs, strategy, row, seed, spec):
    obj = build_objective(spec, V)
    exs = list(examples_from_documents([np.array(d) for d in docs], obj, row, np.random.default_rng(seed)))
    rows = list(Packer(row, strategy, buffer_size=8).pack(iter(exs)))
    batch = collate(rows, row, V.pad)
    if all(e.loss_weights is None for e in exs):  # a mix that drew no diffusion example: an unweighted batch
        assert batch.loss_weights is None and batch.row_items is None
        return
    assert batch.loss_weights is not None and batch.row_items is not None
    lab, doc, w = batch.labels, batch.document_ids, batch.loss_weights
    attn = dense_mask(doc, batch.position_ids, batch.prefix_lengths)
    for b, segs in enumerate(rows):
        items, start = 0, 0
        for d, seg in enumerate(segs):
            n = len(seg)
            sl = slice(start, start + n)
            assert (doc[b, sl] == d).all()
            assert torch.equal(lab[b, sl], torch.from_numpy(seg.labels))
            if seg.loss_weights is not None:  # a diffusion segment: one t, seen whole both ways, nothing else
                assert torch.equal(w[b, sl], torch.from_numpy(seg.loss_weights))
                assert len(set(seg.loss_weights[seg.labels != IGNORE_INDEX].tolist())) <= 1
                assert seg.prefix_length == n
                assert attn[b, sl, sl].all() and not attn[b, sl][:, doc[b] != d].any()
            else:  # an unweighted segment's targets weigh 1
                assert torch.equal(w[b, sl], torch.from_numpy((seg.labels != IGNORE_INDEX).astype(np.float32)))
            items += seg.num_items
            start += n
        assert int(batch.row_items[b]) == items
        assert (w[b, start:] == 0).all() and (lab[b, start:] == IGNORE_INDEX).all()
    assert (w[lab == IGNORE_INDEX] == 0).all()
    # nothing lost: a diffusion example's items are its positions, another's its targets, however it was cut
    assert batch.num_items == sum(e.num_items for e in exs)


def test_a_batch_without_weighted_examples_is_what_it_always_was():
    exs = list(examples_from_documents([np.arange(30) % 97], build_objective("clm:0.5,mlm:0.5", V), 16,
                                       np.random.default_rng(0)))
    batch = collate(list(Packer(16).pack(iter(exs))), 16, V.pad)
    assert batch.loss_weights is None and batch.row_items is None and batch.num_items == batch.num_targets


def test_the_batch_mean_over_num_items_is_llada_s_estimator():
    """loss = Σ_e Σ_{i masked in e} CE_i / t_e / Σ_e L_e: each example's (1/L_e) Σ CE/t_e, weighted by L_e;
    for rows of one length, LLaDA's `(CE / p_mask).sum() / (B·L)` and the plain mean of the per-example
    estimates."""
    torch.manual_seed(0)
    model = build_model(V, "transformer", "32x1").double()
    obj = MaskedDiffusion(V)
    rng = np.random.default_rng(3)
    for lengths in ([20, 20, 20], [5, 31, 12, 17]):
        ts = [0.05, 0.5, 0.9, 0.3][: len(lengths)]
        exs = [obj.example(rng.integers(0, 97, n), t, rng) for n, t in zip(lengths, ts)]
        batch = collate([[e] for e in exs], max(lengths), V.pad)
        with torch.no_grad():
            got = model(batch)
        est, total = [], 0.0
        with torch.no_grad():
            for e, t in zip(exs, ts):  # each example alone, logits materialized, float64
                ids = torch.from_numpy(e.input_ids)[None]
                one = collate([[e]], len(e), V.pad)
                z = model.head.logits(model.hidden(ids, one))[0].double()
                m = torch.from_numpy(e.labels != IGNORE_INDEX)
                ce = F.cross_entropy(z[m], torch.from_numpy(e.labels)[m], reduction="sum")
                w = float(np.float32(1 / t))  # the weight as the example stores it (float32)
                est.append(float(ce) * w / len(e))
                total += float(ce) * w
        assert batch.num_items == sum(lengths)
        assert float(got) == pytest.approx(total / sum(lengths), rel=1e-9)
        assert float(got) == pytest.approx(np.average(est, weights=lengths), rel=1e-9)
        if len(set(lengths)) == 1:
            assert float(got) == pytest.approx(np.mean(est), rel=1e-9)


def test_gradient_accumulation_over_num_items_equals_the_whole_batch():
    torch.manual_seed(0)
    model = build_model(V, "transformer", "32x1").double()
    exs = list(examples_from_documents([np.arange(40) % 97, np.arange(23) % 97, np.arange(9) % 97],
                                       build_objective("clm:0.5,diffusion:0.5", V), 32, np.random.default_rng(5)))
    rows = [[e] for e in exs]
    whole = collate(rows, 32, V.pad)
    parts = [collate(rows[:1], 32, V.pad), collate(rows[1:], 32, V.pad)]
    n = sum(p.num_items for p in parts)
    assert n == whole.num_items
    with torch.no_grad():
        acc = sum(model(p, num_items_in_batch=n) for p in parts)
        assert float(acc) == pytest.approx(float(model(whole)), rel=1e-12)


def test_it_is_registered_declared_and_mixable():
    obj = build_objective("diffusion", V)
    assert isinstance(obj, MaskedDiffusion) and is_masked_diffusion(obj)
    assert obj.needs_bidirectional and not obj.trains_left_to_right and obj.max_tokens(64) == 64
    mix = build_objective("clm:0.7,diffusion:0.3", V)
    assert is_masked_diffusion(mix) and mix.trains_left_to_right and mix.needs_bidirectional
    assert not is_masked_diffusion(build_objective("clm:1,diffusion:0", V))
    with pytest.raises(ValueError, match="eps"):
        MaskedDiffusion(V, eps=0.0)


def _Cfg(objective: str, backbone: str):  # noqa: N802, ANN202
    from headway.train.config import TrainConfig

    return TrainConfig(objective=objective, backbone=backbone, size="32x1")


def test_the_backbone_serves_it_or_the_run_is_refused_with_the_reason():
    from headway.train.runs import model_for_run

    ssm = model_for_run(_Cfg("diffusion", "gated_ssm"), build_objective("diffusion", V), V)
    assert not ssm.backbone.causal  # built with its backward branch
    assert model_for_run(_Cfg("clm:0.7,diffusion:0.3", "transformer"), build_objective("clm:0.7,diffusion:0.3", V),
                         V).backbone.causal  # the transformer's mask follows each example
    with pytest.raises(ValueError, match="mixes masked diffusion .* cannot do both"):
        model_for_run(_Cfg("clm:0.7,diffusion:0.3", "gated_ssm"), build_objective("clm:0.7,diffusion:0.3", V), V)
    pytest.importorskip("transformers")
    with pytest.raises(ValueError, match=r"needs bidirectional attention \(masked diffusion\), which the hf:mamba2"):
        model_for_run(_Cfg("diffusion", "hf:mamba2"), build_objective("diffusion", V), V)


def test_a_hf_collator_refuses_weighted_examples():
    pytest.importorskip("transformers")
    from headway.integrations.hf import ObjectiveCollator

    with pytest.raises(ValueError, match="weights its tokens"):
        ObjectiveCollator(MaskedDiffusion(V), V.pad, allow_prefix=True)([{"input_ids": [1, 2, 3]}])

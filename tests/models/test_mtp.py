"""Multi-token prediction: depth targets stay in their document, the depths see no more than t + k,
the loss is the reference's through one fused call, every backbone takes it, MLM refuses it."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from headway.check import check_causal
from headway.constants import IGNORE_INDEX
from headway.data.collate import collate
from headway.data.packing import Packer, examples_from_documents
from headway.models import build_model, mtp
from headway.models.mtp import batch_depth_labels, depth_labels, mtp_heads
from headway.objectives import build_objective
from headway.train.config import TrainConfig
from headway.types import Vocab

V = Vocab(base_size=97, num_sentinels=40)
doc_lists = st.lists(st.lists(st.integers(0, 96), min_size=1, max_size=60), min_size=1, max_size=12)
SPECS = ["clm", "fim", "prefix_lm", "span", "ul2", "clm:0.5,fim:0.5", "clm:0.5,mlm:0.5", "mlm"]


def _batch(docs, spec, row, strategy, seed=0):
    rng = np.random.default_rng(seed)
    exs = examples_from_documents([np.array(d) for d in docs], build_objective(spec, V), row, rng)
    return collate(list(Packer(row, strategy, buffer_size=8).pack(exs)), row, V.pad)


def _reference_depth_labels(b, k):
    """The rule, position by position, in plain Python."""
    lab, doc, pos, pre = (b.labels.tolist(), b.document_ids.tolist(), b.position_ids.tolist(),
                          b.prefix_lengths.tolist())
    out = [[IGNORE_INDEX] * len(r) for r in lab]
    for r in range(len(lab)):
        for t in range(len(lab[r]) - k):
            d = doc[r][t]
            ok = d >= 0 and doc[r][t + k] == d and all(lab[r][t + j] != IGNORE_INDEX for j in range(k + 1))
            if ok and pos[r][t] >= pre[r][d] - 1:
                out[r][t] = lab[r][t + k]
    return torch.tensor(out)


@settings(max_examples=80, deadline=None)
@given(doc_lists, st.sampled_from(SPECS), st.sampled_from(["bfd", "concat"]), st.integers(8, 48),
       st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_no_depth_target_crosses_a_document(docs, spec, strategy, row, k, seed):
    b = _batch(docs, spec, row, strategy, seed)
    y = batch_depth_labels(b, k)
    assert torch.equal(y, _reference_depth_labels(b, k))
    doc, lab, ids = b.document_ids, b.labels, b.input_ids
    for r, t in (y != IGNORE_INDEX).nonzero().tolist():
        assert doc[r, t] >= 0 and doc[r, t + k] == doc[r, t]  # the target's position is in t's document
        assert y[r, t] == lab[r, t + k]  # the token k + 1 ahead: the main label k positions on
        # the depth's input tokens x_{t+1} .. x_{t+k} are the main targets before it: left to right
        assert lab[r, t : t + k].tolist() == ids[r, t + 1 : t + k + 1].tolist()
    if spec == "mlm":  # no left-to-right target: nothing for the depths
        assert bool((y == IGNORE_INDEX).all())


def test_depth_labels_of_one_clm_document_are_the_tokens_further_ahead():
    ex = build_objective("clm", V)(np.arange(1, 8), np.random.default_rng(0))  # in: EOS 1..7, labels: 1..7 EOS
    b = collate([[ex]], 10, V.pad)
    assert depth_labels(b.labels, b.document_ids, b.position_ids, b.prefix_lengths, 0) is b.labels
    got = batch_depth_labels(b, 2)[0].tolist()
    assert got == [3, 4, 5, 6, 7, V.eos] + [IGNORE_INDEX] * 4  # past the document's end: ignored


def _tiny(backbone="transformer", depth=2, seed=0, **kw):
    torch.manual_seed(seed)
    m = build_model(V, backbone, "tiny", mtp_depth=depth, **kw)
    with torch.no_grad():  # zero-initialized projections would hide every dependence
        for p in m.parameters():
            if p.dim() >= 2 and not bool(p.any()):
                p.normal_(0.0, 0.05)
    return m


def test_depth_zero_builds_the_same_model_and_depths_come_after_every_other_weight():
    torch.manual_seed(3)
    before = build_model(V, size="tiny").state_dict()
    torch.manual_seed(3)
    zero = build_model(V, size="tiny", mtp_depth=0)
    torch.manual_seed(3)
    two = build_model(V, size="tiny", mtp_depth=2)
    assert zero.mtp is None and list(zero.state_dict()) == list(before)
    for name, w in before.items():
        assert torch.equal(zero.state_dict()[name], w) and torch.equal(two.state_dict()[name], w)
    assert {n.split(".")[0] for n in two.state_dict()} - {n.split(".")[0] for n in before} == {"mtp"}


def test_loss_is_main_plus_weight_times_mean_over_depths_in_one_fused_call(monkeypatch):
    m = _tiny(depth=2, mtp_weight=0.25).double()
    b = _batch([list(range(1, 30)), list(range(40, 52)), [5, 6]], "clm:0.5,fim:0.5", 32, "bfd", seed=1)
    calls = []
    real = m.head.forward
    monkeypatch.setattr(m.head, "forward", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    loss = m(b)
    assert len(calls) == 1  # the main head and both depths: one call of the fused head
    # reference: materialized logits per depth, float64
    x = m.embedding(b.input_ids)
    h0 = m.backbone(x, b)
    hs = [h0] + m.mtp.hidden(h0, x, b)
    W = m.head.full_weight()
    sums = [F.cross_entropy((h @ W.t()).flatten(0, 1), batch_depth_labels(b, k).flatten(), reduction="sum")
            for k, h in enumerate(hs)]
    n = int((b.labels != IGNORE_INDEX).sum())
    want = (sums[0] + 0.25 / 2 * (sums[1] + sums[2])) / n
    torch.testing.assert_close(loss, want)
    params = [*m.embedding.parameters(), m.mtp.depths[1].proj.weight]  # the tied head's tables, a depth
    g = torch.autograd.grad(loss, params)
    g_ref = torch.autograd.grad(want, params)
    for a, r in zip(g, g_ref):
        torch.testing.assert_close(a, r)
    # num_items_in_batch divides every term; evaluation's "sum" scores the main head alone
    torch.testing.assert_close(m(b, num_items_in_batch=2 * n), want / 2)
    torch.testing.assert_close(m(b, reduction="sum"), sums[0])
    means = m.mtp_metrics()
    assert means["main_loss"] == pytest.approx(float(sums[0].detach()) / n)
    assert len(means["mtp_loss"]) == 2


def _counting(forward, rows):
    """`forward`, noting the number of rows of each call in `rows`."""
    return lambda *a, **k: rows.append(a[0].shape[0]) or forward(*a, **k)


@pytest.mark.parametrize("targets", ["some", "none"])
def test_a_head_that_needs_every_row_gets_them_all_with_the_same_loss_and_gradients(targets):
    """The vocabulary-parallel head needs the same token count on every rank: it gets all (K+1)·N rows,
    the ignored ones scoring 0, and the loss, its gradients and the logged means are the valid rows'."""
    b = _batch([list(range(1, 30)), list(range(40, 52)), [5, 6]], "clm:0.5,fim:0.5", 32, "bfd", seed=1)
    if targets == "none":
        b.labels[:] = IGNORE_INDEX
    runs = []
    for every_row in (False, True):
        m = _tiny(depth=2).double()
        m.head.equal_tokens_on_every_rank = every_row
        rows: list[int] = []
        m.head.forward = _counting(m.head.forward, rows)
        loss = m(b, num_items_in_batch=40)
        loss.backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in m.parameters()]  # None: unused, 0
        runs.append((loss.detach(), grads, m.mtp_metrics(), rows))
    (l0, g0, m0, rows0), (l1, g1, m1, rows1) = runs
    assert rows1 == [3 * b.labels.numel()] and rows0 != rows1
    torch.testing.assert_close(l1, l0)
    for a, r in zip(g1, g0):
        torch.testing.assert_close(a, r)
    assert [m1["main_loss"], *m1["mtp_loss"]] == pytest.approx([m0["main_loss"], *m0["mtp_loss"]])


def test_a_batch_without_targets_gives_zero_loss_and_zero_gradients():
    m = _tiny(depth=2)
    b = _batch([[1, 2, 3]], "clm", 8, "bfd")
    b.labels[:] = IGNORE_INDEX
    loss = m(b)
    loss.backward()
    assert float(loss.detach()) == 0.0 and all(p.grad is None or not bool(p.grad.any()) for p in m.parameters())


@pytest.mark.parametrize("depth", [1, 2])
def test_the_leak_check_covers_each_depth_and_allows_exactly_k_ahead(depth):
    m = _tiny(depth=2)
    assert check_causal(m, mtp_depth=depth, lengths=(12,)).ok
    # one position less allowed than the depth reads: the check must see depth k read t + k
    from headway.check.adapters import mtp_probe

    rep = check_causal(mtp_probe(m, depth), lengths=(12,), offset=depth - 1, detectors=("gradient",))
    assert not rep.ok and rep.findings[0].kind == "future"
    assert all(k - t == depth for t, k in rep.leaks)


def test_the_leak_check_catches_a_depth_that_reads_too_far_or_across_documents(monkeypatch):
    m = _tiny(depth=2)
    good = mtp.shift_within_documents
    # broken: depth k reads the embedding k + 1 ahead
    monkeypatch.setattr(mtp, "shift_within_documents", lambda x, docs, k: good(x, docs, k + 1))
    for det in ("gradient", "black-box"):
        rep = check_causal(m, mtp_depth=2, lengths=(12,), detectors=(det,), modes=("eval",))
        assert not rep.ok and rep.findings[0].kind == "future", rep
    # broken: the shift ignores document boundaries (reads the next packed document)
    monkeypatch.setattr(mtp, "shift_within_documents", lambda x, docs, k: good(x, None, k))
    rep = check_causal(m, mtp_depth=1, lengths=(12,), detectors=("gradient",), modes=("eval",))
    assert not rep.ok and {f.kind for f in rep.findings} == {"other document"}, rep
    assert check_causal(m, mtp_depth=1, lengths=(12,), packed=False, detectors=("gradient",)).ok


@pytest.mark.parametrize("backbone", ["transformer", "gated_ssm", "hf:llama", "hf:mamba2"])
def test_every_backbone_trains_with_depths_and_stays_causal(backbone):
    if backbone.startswith("hf:"):
        pytest.importorskip("transformers")
    size = "tiny" if not backbone.startswith("hf:") else "64x2x2"
    torch.manual_seed(0)
    m = build_model(V, backbone, size, mtp_depth=2)
    packed = backbone in ("transformer", "gated_ssm", "hf:llama")
    docs = [list(range(1, 20)), list(range(30, 41))] if packed else [list(range(1, 20))]
    b = _batch(docs, "clm", 32, "bfd" if packed else "single")
    loss = m(b)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in m.mtp.parameters())
    assert check_causal(_randomized(m), mtp_depth=2, lengths=(9,), packed=packed, detectors=("gradient",)).ok


def _randomized(m):
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() >= 2 and not bool(p.any()):
                p.normal_(0.0, 0.05)
    return m


def test_an_mlm_only_objective_is_refused_by_name():
    with pytest.raises(ValueError, match="--mtp-depth 2.*--objective mlm"):
        TrainConfig(objective="mlm", mtp_depth=2).check()
    TrainConfig(objective="clm:0.5,mlm:0.5", mtp_depth=2).check()  # left-to-right targets in the mix
    with pytest.raises(ValueError, match="bidirectional"):
        build_model(V, "gated_ssm", "tiny", bidirectional=True, mtp_depth=1)
    with pytest.raises(ValueError, match="mtp-depth"):
        TrainConfig(mtp_depth=-1).check()


def test_mtp_heads_split_the_width_into_even_heads():
    assert mtp_heads(64, 2) == 2 and mtp_heads(96, 5) == 4 and mtp_heads(6, 4) == 3
    with pytest.raises(ValueError, match="even size"):
        mtp_heads(7, 2)


def test_the_training_guard_refuses_a_leaking_depth(monkeypatch):
    from headway.train.guard import guard_causality

    m = _tiny(depth=2)
    cfg = TrainConfig(objective="clm", mtp_depth=2)
    guard_causality(m, cfg, print)  # every depth causal at its offset: passes
    good = mtp.shift_within_documents
    monkeypatch.setattr(mtp, "shift_within_documents", lambda x, docs, k: good(x, docs, k + (k == 2)))
    with pytest.raises(ValueError, match="multi-token prediction depth 2 .*not causal.*--allow-leak"):
        guard_causality(m, cfg, print)

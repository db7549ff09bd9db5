"""Packing loses nothing, never mixes documents; masks equal a brute-force definition."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from headway.constants import IGNORE_INDEX
from headway.data.collate import collate
from headway.data.packing import Packer, examples_from_documents
from headway.masks import cu_seqlens, dense_mask, flex_block_mask, sdpa_mask
from headway.objectives import CLM, build_objective
from headway.types import Vocab

V = Vocab(base_size=97, num_sentinels=40)
doc_lists = st.lists(st.lists(st.integers(0, 96), min_size=1, max_size=80), min_size=1, max_size=25)


def _pack(docs, spec, row, strategy, seed=0, buffer=8):
    rng = np.random.default_rng(seed)
    packer = Packer(row, strategy, buffer_size=buffer)
    exs = list(examples_from_documents([np.array(d) for d in docs], build_objective(spec, V), row, rng))
    rows = list(packer.pack(iter(exs)))
    return exs, rows, packer.stats


@settings(max_examples=60)
@given(doc_lists, st.sampled_from(["bfd", "concat"]), st.integers(8, 64))
def test_clm_packing_loses_no_token_and_labels_never_cross_documents(docs, strategy, row):
    exs, rows, stats = _pack(docs, "clm", row, strategy)
    batch = collate(rows, row, V.pad)
    # every target of every example appears once, in order within its example
    got = sorted(batch.labels[batch.labels != IGNORE_INDEX].tolist())
    want = sorted(np.concatenate([e.labels[e.labels != IGNORE_INDEX] for e in exs]).tolist())
    assert got == want and stats.truncated_tokens == 0
    assert stats.tokens == sum(len(e) for e in exs)
    assert 0 < stats.efficiency <= 1
    # a label at position t is the next input of the same segment, or EOS at a segment's end
    ids, lab, doc = batch.input_ids, batch.labels, batch.document_ids
    for b in range(ids.shape[0]):
        for t in range(row):
            if lab[b, t] == IGNORE_INDEX:
                continue
            if t + 1 < row and doc[b, t + 1] == doc[b, t]:
                assert lab[b, t] == ids[b, t + 1]
            elif strategy == "bfd":
                assert lab[b, t] == V.eos
    assert (lab[doc < 0] == IGNORE_INDEX).all() and (ids[doc < 0] == V.pad).all()
    # position ids restart in every segment
    for b in range(ids.shape[0]):
        for t in range(row):
            if doc[b, t] >= 0:
                start = t - int(batch.position_ids[b, t])
                assert start == 0 or doc[b, start - 1] != doc[b, t]


@settings(max_examples=30)
@given(doc_lists, st.sampled_from(["clm", "prefix_lm", "span", "mlm", "ul2", "clm:1,fim:1"]), st.integers(0, 99))
def test_bfd_never_splits_an_example(docs, spec, seed):
    exs, rows, stats = _pack(docs, spec, 48, "bfd", seed)
    assert sorted(len(e) for r in rows for e in r) == sorted(len(e) for e in exs)
    assert all(sum(len(e) for e in r) <= 48 for r in rows)


def test_bfd_packs_tighter_than_first_come_rows():
    rng = np.random.default_rng(0)
    docs = [np.arange(n) % 90 for n in rng.integers(1, 60, 400)]
    _, _, bfd = _pack(docs, "clm", 64, "bfd", buffer=400)
    assert bfd.efficiency > 0.95


def brute_force_mask(doc, pos, prefix):
    B, S = doc.shape
    m = torch.zeros(B, S, S, dtype=torch.bool)
    for b in range(B):
        for q in range(S):
            for k in range(S):
                if doc[b, q] < 0:
                    m[b, q, k] = q == k
                elif doc[b, q] == doc[b, k]:
                    m[b, q, k] = bool(k <= q or pos[b, k] < prefix[b, doc[b, k]])
    return m


@settings(max_examples=25, deadline=None)
@given(doc_lists, st.sampled_from(["clm", "prefix_lm", "mlm", "ul2"]), st.sampled_from(["bfd", "concat"]))
def test_dense_mask_equals_brute_force(docs, spec, strategy):
    _, rows, _ = _pack(docs, spec, 24, strategy)
    b = collate(rows, 24, V.pad)
    want = brute_force_mask(b.document_ids, b.position_ids, b.prefix_lengths)
    assert torch.equal(dense_mask(b.document_ids, b.position_ids, b.prefix_lengths), want)
    assert torch.equal(sdpa_mask(b)[:, 0], want)


def test_flex_block_mask_matches_dense():
    _, rows, _ = _pack([list(range(1, 30)), list(range(5, 40)), [3, 4]], "prefix_lm", 32, "bfd")
    b = collate(rows, 32, V.pad)
    bm = flex_block_mask(b, block_size=16)
    dense = torch.zeros(*b.input_ids.shape, 32, dtype=torch.bool)
    mm = bm.mask_mod
    for bb in range(b.input_ids.shape[0]):
        for q in range(32):
            for k in range(32):
                dense[bb, q, k] = bool(mm(torch.tensor(bb), torch.tensor(0), torch.tensor(q), torch.tensor(k)))
    assert torch.equal(dense, dense_mask(b.document_ids, b.position_ids, b.prefix_lengths))


def test_cu_seqlens_covers_every_segment():
    doc = torch.tensor([[0, 0, 0, 1, 1, -1], [0, 1, 1, 1, 2, 2]])
    assert cu_seqlens(doc).tolist() == [0, 3, 5, 6, 7, 10, 12]


def test_same_seed_same_batches():
    docs = [np.arange(n) % 90 for n in range(3, 60, 7)]
    a = collate(_pack(docs, "ul2", 32, "bfd", seed=5)[1], 32, V.pad)
    b = collate(_pack(docs, "ul2", 32, "bfd", seed=5)[1], 32, V.pad)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)


def test_truncation_is_counted():
    packer = Packer(8, "bfd")
    exs = [CLM(V.eos)(np.arange(20), np.random.default_rng(0))]
    rows = list(packer.pack(exs))
    assert packer.stats.truncated_tokens == 21 - 8 and len(rows[0][0]) == 8


@pytest.mark.parametrize("kw,match", [(dict(row_length=1), "row_length"), (dict(strategy="greedy"), "strategy"),
                                      (dict(buffer_size=0), "buffer_size")])
def test_bad_packer_config(kw, match):
    args = dict(row_length=16, strategy="bfd", buffer_size=4)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        Packer(**args)


def test_row_below_two_is_refused():
    with pytest.raises(ValueError, match="row_length"):
        list(examples_from_documents([np.arange(3)], CLM(V.eos), 1, np.random.default_rng(0)))


def _bfd_reference(lengths: list[int], S: int) -> list[list[int]]:
    """Best-fit decreasing, the plain quadratic way: each example (longest first, stable) into the
    open row with the least room that fits (the first such row on ties), else a new row."""
    rows: list[list[int]] = []
    room: list[int] = []
    for k in sorted(range(len(lengths)), key=lambda j: lengths[j], reverse=True):
        fits = [i for i, r in enumerate(room) if r >= lengths[k]]
        if fits:
            i = min(fits, key=lambda j: room[j])
            rows[i].append(k)
            room[i] -= lengths[k]
        else:
            rows.append([k])
            room.append(S - lengths[k])
    return rows


@settings(max_examples=100)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=300), st.integers(40, 64))
def test_bfd_equals_the_quadratic_reference(lengths, S):
    """The packer's sorted-rooms BFD builds exactly the reference's rows, in the same order."""
    from headway.types import Example

    exs = [Example(np.full(n, k, dtype=np.int64), np.full(n, k, dtype=np.int64), 0) for k, n in enumerate(lengths)]
    rows = list(Packer(S, "bfd", buffer_size=len(exs))._flush(exs))
    assert [[int(e.input_ids[0]) for e in r] for r in rows] == _bfd_reference(lengths, S)

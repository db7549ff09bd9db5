"""The streaming loader: ranks and workers disjoint and together covering every document; exact
resume (in-process and with real worker processes, rank 0 and rank 1 of 2) that regenerates one
window, not the run; a resume with another worker count repeats no document."""

import numpy as np
import pytest
import torch

from headway.data.loader import BUFFER_SIZE, Loader, ShardStream, StreamSpec, convert_states, initial_state
from headway.data.prepare import Settings, prepare
from headway.data.shards import ShardSet
from headway.objectives import build_objective
from headway.types import Vocab


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from tests.data.test_shards import _real_files

    d = tmp_path_factory.mktemp("loader")
    files = _real_files(d / "code", 40)
    return prepare([str(files)], d / "prep", Settings(tokenizer="bytes", val_fraction=0.1), workers=2,
                   log=lambda *_: None, progress=False)


def _objective(spec: str = "clm:0.5,fim:0.5"):
    from headway.data.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    return build_objective(spec, Vocab(256), (tok.encode, tok.decode))


def _loader(p, rank=0, world=1, workers=0, state=None, batch=4, packing="bfd"):
    spec = StreamSpec(96, batch, packing, 3, Vocab(256).pad, rank, world, workers)
    return Loader(p.train, p.weights, _objective(), spec, p.tokenizer.starts_char(), state)


def _same(a, b) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in
               ("input_ids", "labels", "position_ids", "document_ids", "prefix_lengths"))


@pytest.mark.parametrize("world, workers", [(1, 0), (2, 1), (2, 3), (3, 2)])
def test_streams_are_disjoint_and_together_cover_every_document_each_epoch(prepared, world, workers):
    n = len(prepared.train[0])
    seqs = []
    for rank in range(world):
        spec = StreamSpec(96, 4, "bfd", 0, 0, rank, world, workers)
        ds = ShardStream(prepared.train, prepared.weights, _objective(), spec)
        for k in range(spec.per_rank):
            c = rank * spec.per_rank + k
            gen = ds.documents(c, [0], np.random.default_rng(0))
            seqs.append((c, [next(gen)[1] for _ in range(2 * n)]))
    C = world * max(1, workers)
    assert sorted(c for c, _ in seqs) == list(range(C))
    # stream c's j-th document is position c + j*C of the global order: every position exactly once
    merged = {c + j * C: d for c, seq in seqs for j, d in enumerate(seq)}
    for epoch in range(2):
        docs = [merged[p] for p in range(epoch * n, (epoch + 1) * n)]
        assert sorted(docs) == list(range(n))  # every document once per epoch, none twice
    assert [merged[p] for p in range(n)] != [merged[p] for p in range(n, 2 * n)]  # reshuffled each epoch


@pytest.mark.parametrize("workers, rank, world, packing", [(0, 0, 1, "bfd"), (2, 0, 1, "bfd"), (2, 1, 2, "bfd"),
                                                           (0, 1, 2, "concat")])
def test_resume_yields_exactly_the_batches_of_the_uninterrupted_run(prepared, workers, rank, world, packing):
    straight = _loader(prepared, rank, world, workers, packing=packing)
    ref = [next(straight) for _ in range(40)]
    straight.close()
    for cut in (1, 17, 33):
        first = _loader(prepared, rank, world, workers, packing=packing)
        for _ in range(cut):
            next(first)
        state = first.state_dict()
        first.close()
        again = _loader(prepared, rank, world, workers, state=state, packing=packing)
        assert again.exact
        rest = [next(again) for _ in range(40 - cut)]
        again.close()
        assert all(_same(a, b) for a, b in zip(ref[cut:], rest)), f"cut at {cut}"


def test_a_batch_mixes_the_documents_of_its_window(prepared):
    """Rows are shuffled within a window: a batch is not consecutive pieces of one file (it was: BFD
    keeps full rows in document order, so every batch of a long file was that file)."""
    docs = [prepared.train[0].doc(i).tobytes() for i in range(len(prepared.train[0]))]
    spec = StreamSpec(96, 8, "bfd", 0, Vocab(256).pad)
    loader = Loader(prepared.train, prepared.weights, _objective("clm"), spec, prepared.tokenizer.starts_char())
    per_batch = []
    for _ in range(20):
        b = next(loader)
        found = set()
        for r in range(b.input_ids.shape[0]):
            seg = b.input_ids[r][b.document_ids[r] == 0].numpy()
            first = seg[seg < 256][:32].astype(np.int64).tobytes()  # its text, without BOS / EOS
            found.add(next(i for i, d in enumerate(docs) if first in d))
        per_batch.append(len(found))
    assert sum(per_batch) / len(per_batch) >= 2, per_batch  # 1.05 before the shuffle, 2.8 with it


@pytest.mark.parametrize("world", [1, 2])
def test_a_window_of_a_small_corpus_reads_each_document_at_most_once(prepared, monkeypatch, world):
    """The 36 training files hold far fewer than BUFFER_SIZE examples: a window stops after one pass
    over the stream's share, instead of packing the same files many times into one window."""
    reads = []
    original = ShardSet.doc
    monkeypatch.setattr(ShardSet, "doc", lambda self, i: reads.append(i) or original(self, i))
    next(_loader(prepared, rank=world - 1, world=world))  # the first batch: one window built
    n = len(prepared.train[0])
    assert len(reads) == n // world and len(set(reads)) == len(reads)


def test_workers_zero_and_one_give_the_same_batches(prepared):
    a, b = _loader(prepared, workers=0), _loader(prepared, workers=1)
    assert all(_same(next(a), next(b)) for _ in range(12))
    b.close()


def test_resume_regenerates_one_window_not_the_run(prepared, monkeypatch):
    loader = _loader(prepared)
    for _ in range(300):
        next(loader)
    state = loader.state_dict()
    reads = []
    original = ShardSet.doc
    monkeypatch.setattr(ShardSet, "doc", lambda self, i: reads.append(i) or original(self, i))
    again = _loader(prepared, state=state)
    next(again)
    late = len(reads)
    reads.clear()
    fresh = _loader(prepared)
    next(fresh)
    assert late <= 2 * len(reads) and late <= 2 * BUFFER_SIZE  # the same work as the first batch of a new run


def test_another_worker_count_resumes_past_every_document_already_seen(prepared):
    n = len(prepared.train[0])
    loader = _loader(prepared, workers=2)
    for _ in range(25):
        next(loader)
    saved = loader.state_dict()
    loader.close()
    spec = StreamSpec(96, 4, "bfd", 3, 0, 0, 1, 3)
    states, exact = convert_states(saved, spec, 1)
    assert not exact and sorted(states) == [0, 1, 2]
    far = max(c + st["pos"][0] * 2 for c, st in saved["states"].items() for c in [int(c)])
    for c, st in states.items():
        assert c + st["pos"][0] * 3 >= far  # next position of each new stream is past the old frontier
    resumed = _loader(prepared, workers=3, state=saved)
    assert not resumed.exact
    assert next(resumed).input_ids.shape == (4, 96)
    resumed.close()
    assert n > 0


def test_initial_states_differ_per_stream():
    a, b = initial_state(0, 2, 0, 1), initial_state(1, 2, 0, 1)
    assert a["obj"] != b["obj"] and a["mix"] != b["mix"] and a["pos"] == b["pos"] == [0]

"""Tokenizers on real text: long texts encoded in pieces give exactly the ids of one encode, and
the memory of encoding follows the piece, not the longest line."""

import sysconfig
from pathlib import Path

import numpy as np
import pytest

from headway.data.tokenizer import BPETokenizer, ByteTokenizer, encode_edge, split_for_encoding


@pytest.fixture(scope="module")
def texts() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for p in sorted(root.rglob("*.py"))[:400]:
        try:
            out.append(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            continue
    return out


@pytest.fixture(scope="module")
def bpe(texts) -> BPETokenizer:
    return BPETokenizer.train(texts[:80], 1000, progress=False)


@pytest.mark.parametrize("size", [500, 4000])
def test_pieces_encode_to_exactly_the_whole(bpe, texts, size):
    big = "\n".join(texts[:60])
    one_line = big.replace("\n", " ")  # a single huge line: the case that took 12.5 GB
    for text in (big, one_line):
        pieces = split_for_encoding(text, size)
        assert len(pieces) > 5 and "".join(pieces) == text
        got = np.concatenate([np.asarray(bpe.tok.encode(p).ids) for p in pieces])
        np.testing.assert_array_equal(got, bpe.tok.encode(text).ids)


def test_encode_batch_equals_encode_on_every_file(bpe, texts):
    sample = texts[::7][:40] + ["", "ünïcödé ✓ 日本語", "x" * 10]
    for ids, t in zip(bpe.encode_batch(sample), sample):
        np.testing.assert_array_equal(ids, bpe.tok.encode(t).ids)
        assert bpe.decode(ids.tolist()) == t


def test_text_without_cut_points_stays_whole():
    text = "日本語" * 10000  # no ASCII letter followed by punctuation anywhere
    assert split_for_encoding(text, 100) == [text]


def test_byte_tokenizer_round_trips(texts):
    tok = ByteTokenizer()
    for t in texts[:20]:
        assert tok.decode(tok.encode(t)) == t


@pytest.mark.parametrize("kind", ["bpe", "bytes"])
def test_the_edge_of_a_text_encodes_to_the_whole_texts_first_or_last_ids(bpe, texts, kind):
    # the infill prompts' prefix tail and suffix head, encoded from a window: exactly the whole text's ids
    tok = bpe if kind == "bpe" else ByteTokenizer()
    rng = np.random.default_rng(0)
    sample = [t for t in texts if any(ord(c) > 127 for c in t)][:8] + texts[::25][:16]
    sample += ["日本語" * 3000 + "x = f(1)", "x = f(1)" + " " * 5000, "a"]  # few or no cuts; trailing spaces
    for t in sample:
        whole = tok.encode(t)
        for i in rng.integers(0, len(t) + 1, size=6):
            before, after = t[:i], t[i:]
            full_before, full_after = tok.encode(before), tok.encode(after)
            for n in (0, 1, 7, 110, 5000):
                assert encode_edge(tok, before, n, last=True) == (full_before[-n:] if n else [])
                assert encode_edge(tok, after, n, last=False) == full_after[:n]
        assert encode_edge(tok, t, 110, last=True) == whole[-110:]

"""FIM on document chunks never alters text: chunks are cut at character boundaries, so a chunk
with multi-byte characters (the standard library's own non-ASCII files) decodes exactly and its
FIM example reassembles into it — with the byte tokenizer and with a trained byte-level BPE."""

import sysconfig
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headway.data.packing import chunks, examples_from_documents
from headway.data.tokenizer import BPETokenizer, ByteTokenizer
from headway.objectives import FIM, fim_parts
from headway.types import Vocab


def _non_ascii_stdlib_texts(limit: int = 12, max_chars: int = 6000) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for p in sorted(root.rglob("*.py")):
        try:
            t = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if any(ord(c) > 0x7FF for c in t):  # 3- and 4-byte characters (CJK, symbols, emoji)
            out.append(t[:max_chars])
        if len(out) == limit:
            break
    return out


TEXTS = _non_ascii_stdlib_texts()


@pytest.fixture(scope="module")
def tokenizers():
    bpe = BPETokenizer.train(TEXTS, 400, progress=False)
    return {"bytes": ByteTokenizer(), "bpe": bpe}


def test_the_corpus_has_multibyte_text():
    assert len(TEXTS) >= 5


@pytest.mark.parametrize("kind", ["bytes", "bpe"])
@pytest.mark.parametrize("row_length", [24, 61, 256])
def test_fim_examples_from_chunks_reassemble_into_the_chunk_text(tokenizers, kind, row_length):
    tok = tokenizers[kind]
    vocab = Vocab(tok.base_size, num_sentinels=2)
    fim = FIM(vocab, rate=1.0, encode=tok.encode, decode=tok.decode)
    starts = tok.starts_char()
    rng = np.random.default_rng(0)
    cut_inside = 0
    for text in TEXTS:
        doc = np.asarray(tok.encode(text), dtype=np.int64)
        pieces = list(chunks(doc, fim.max_tokens(row_length), starts))
        np.testing.assert_array_equal(np.concatenate(pieces), doc)  # nothing lost
        assert "".join(tok.decode(p.tolist()) for p in pieces) == text  # nothing altered
        for p in pieces:
            ex = fim(p, rng)
            _, pre, mid, suf = fim_parts(ex.input_ids, vocab)
            assert tok.decode(pre.tolist()) + tok.decode(mid.tolist()) + tok.decode(suf.tolist()) == tok.decode(
                p.tolist())
            assert len(ex) <= row_length
        # the naive cut (every `limit` tokens) would have split characters: the test has teeth
        limit = fim.max_tokens(row_length)
        cut_inside += sum(not starts[doc[i]] for i in range(limit, len(doc), limit))
    assert cut_inside > 0


def test_examples_from_documents_uses_the_table(tokenizers):
    tok = tokenizers["bytes"]
    vocab = Vocab(tok.base_size, num_sentinels=2)
    fim = FIM(vocab, rate=1.0, encode=tok.encode, decode=tok.decode)
    docs = [np.asarray(tok.encode(t), dtype=np.int64) for t in TEXTS[:3]]
    for ex in examples_from_documents(docs, fim, 40, np.random.default_rng(1), tok.starts_char()):
        _, pre, mid, suf = fim_parts(ex.input_ids, vocab)
        assert "\ufffd" not in tok.decode(np.concatenate([pre, mid, suf]).tolist())


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=0, max_size=120), st.integers(1, 9))
def test_chunks_never_split_a_character_on_any_text(text, limit):
    tok = ByteTokenizer()
    doc = np.asarray(tok.encode(text), dtype=np.int64)
    pieces = list(chunks(doc, max(limit, 4), tok.starts_char()))
    assert all(len(p) <= max(limit, 4) for p in pieces)
    for p in pieces:
        bytes(p.tolist()).decode("utf-8")  # every piece is valid UTF-8 on its own (raises otherwise)
    assert "".join(tok.decode(p.tolist()) for p in pieces) == text


def _example_text(ex, vocab: Vocab, tok) -> str:
    """The document text an example was made from: a FIM example's three parts, or a CLM example's
    tokens after its leading EOS."""
    if vocab.id("<fim_prefix>") in ex.input_ids:
        _, pre, mid, suf = fim_parts(ex.input_ids, vocab)
        return tok.decode(pre.tolist()) + tok.decode(mid.tolist()) + tok.decode(suf.tolist())
    return tok.decode(ex.input_ids[1:].tolist())


@pytest.mark.parametrize("kind", ["bytes", "bpe"])
@pytest.mark.parametrize("spec", ["fim", "clm:0.5,fim:0.5"])
def test_the_public_path_never_cuts_inside_a_character_without_a_table(tokenizers, kind, spec):
    """`build_objective(spec, vocab, (encode, decode))` then `examples_from_documents(docs, objective, S,
    rng)` with no `starts_char`: the objective knows its codec, so every piece is cut between characters
    and the examples of a document reassemble into exactly its text."""
    from headway.objectives import build_objective

    tok = tokenizers[kind]
    vocab = Vocab.from_tokenizer(tok, num_sentinels=2)
    objective = build_objective(spec, vocab, (tok.encode, tok.decode))
    naive_cuts_inside = 0
    for n, text in enumerate(TEXTS):
        doc = np.asarray(tok.encode(text), dtype=np.int64)
        exs = list(examples_from_documents([doc], objective, 61, np.random.default_rng(n)))
        assert "".join(_example_text(ex, vocab, tok) for ex in exs) == text
        limit = objective.max_tokens(61)
        naive_cuts_inside += sum(not tok.starts_char()[doc[i]] for i in range(limit, len(doc), limit))
    assert naive_cuts_inside > 0  # cutting every `limit` tokens would have split characters: the test has teeth


@pytest.mark.parametrize("kind", ["bytes", "bpe"])
def test_fim_keeps_the_ids_of_a_piece_cut_inside_a_character(tokenizers, kind):
    """A caller that cuts a document anywhere and hands FIM the piece gets an example of exactly that
    piece's ids (a character-level split of its broken text would change them)."""
    tok = tokenizers[kind]
    vocab = Vocab.from_tokenizer(tok, num_sentinels=2)
    fim = FIM(vocab, rate=1.0, encode=tok.encode, decode=tok.decode)
    starts = tok.starts_char()
    tried = 0
    for text in TEXTS:
        doc = np.asarray(tok.encode(text), dtype=np.int64)
        for i in [k for k in range(1, len(doc)) if not starts[doc[k]]][:5]:
            piece = doc[max(0, i - 30) : i]  # ends inside a character
            for seed in range(4):
                _, pre, mid, suf = fim_parts(fim(piece, np.random.default_rng(seed)).input_ids, vocab)
                assert np.concatenate([pre, mid, suf]).tolist() == piece.tolist()
            tried += 1
    assert tried > 0

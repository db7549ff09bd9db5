"""An existing tokenizer brought by the user (`--tokenizer PATH`): its whole vocabulary is the base
split, special-token strings in the corpus stay text, nothing is added around a text, and the
prepared shards, the Vocab and the model agree on it. Real tokenizers built offline with
`tokenizers`, on the standard library's own files."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from headway.data.prepare import Settings, prepare
from headway.data.tokenizer import BPETokenizer, external_tokenizer_json
from headway.types import Vocab

TEXT = "x = 'é€𝄞' <|endoftext|> done\n"


def _texts() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return [p.read_text(encoding="utf-8", errors="replace") for p in sorted(root.glob("*.py"))[:30]] + [TEXT * 3]


def byte_level_with_specials() -> Tokenizer:
    """GPT-2 / Llama-3 style: byte-level BPE, an added <|endoftext|>, a post-processor adding a BOS."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_texts(), trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True), AddedToken("<s>", special=True)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id(
        "<s>"))])
    return tok


def metaspace() -> Tokenizer:
    """SentencePiece style: whitespace as ▁, no byte-level alphabet (pieces cannot be cut exactly)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(_texts(), trainers.BpeTrainer(vocab_size=500, show_progress=False,
                                                          special_tokens=["<unk>", "<|endoftext|>"]))
    return tok


@pytest.fixture(params=["byte_level", "metaspace"])
def tokenizer_file(request, tmp_path) -> Path:  # noqa: ANN001
    tok = byte_level_with_specials() if request.param == "byte_level" else metaspace()
    tok.save(str(tmp_path / "tokenizer.json"))
    return tmp_path / "tokenizer.json"


def test_whole_vocabulary_is_the_base_split_and_special_strings_stay_text(tokenizer_file: Path) -> None:
    raw = Tokenizer.from_file(str(tokenizer_file))
    tok = BPETokenizer(Tokenizer.from_str(external_tokenizer_json(tokenizer_file.parent)))
    assert tok.kind == "external"
    assert tok.base_size == raw.get_vocab_size(with_added_tokens=True)
    ids = tok.encode(TEXT)
    special = raw.token_to_id("<|endoftext|>")
    assert special not in ids  # the literal string is text
    assert raw.token_to_id("<s>") is None or ids[0] != raw.token_to_id("<s>")  # no BOS from the post-processor
    assert tok.decode(ids) == TEXT  # the characters are in both tokenizers' training text
    vocab = Vocab.from_tokenizer(tok)
    assert vocab.base_size == tok.base_size and vocab.eos == tok.base_size
    starts = tok.starts_char()
    assert starts.shape == (tok.base_size,) and starts[special]


def test_long_texts_encode_as_one_encode(tokenizer_file: Path) -> None:
    tok = BPETokenizer(Tokenizer.from_file(str(tokenizer_file)))
    raw = Tokenizer.from_file(str(tokenizer_file))
    raw.encode_special_tokens = True
    big = "\n".join(_texts()) * 2
    np.testing.assert_array_equal(tok.encode_batch([big])[0], raw.encode(big, add_special_tokens=False).ids)


def test_prepare_with_an_existing_tokenizer(tokenizer_file: Path, tmp_path: Path) -> None:
    src = tmp_path / "corpus"
    src.mkdir()
    for i, t in enumerate(_texts()[:6]):
        (src / f"f{i}.py").write_text(t + TEXT, encoding="utf-8")
    p = prepare([str(src)], tmp_path / "prepared", Settings(tokenizer=str(tokenizer_file), val_fraction=0.2),
                workers=1, progress=False)
    assert (tmp_path / "prepared" / "tokenizer.json").read_text() == tokenizer_file.read_text()
    assert p.tokenizer.base_size == Tokenizer.from_file(str(tokenizer_file)).get_vocab_size(with_added_tokens=True)
    special = Tokenizer.from_file(str(tokenizer_file)).token_to_id("<|endoftext|>")
    docs = [s.doc(i) for shards in (p.train, p.val) for s in shards for i in range(len(s))]
    assert len(docs) == 6
    for d in docs:
        assert special not in set(d.tolist()) and int(d.max()) < p.tokenizer.base_size
    assert sum(len(d) for d in docs) == sum(len(p.tokenizer.encode(t + TEXT)) for t in _texts()[:6])


def test_a_missing_or_broken_tokenizer_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--tokenizer must be bpe, bytes"):
        external_tokenizer_json(tmp_path / "nothing")
    (tmp_path / "tokenizer.json").write_text("{\"not\": \"a tokenizer\"}")
    with pytest.raises(ValueError, match="--tokenizer .* is not a `tokenizers` JSON"):
        external_tokenizer_json(tmp_path)

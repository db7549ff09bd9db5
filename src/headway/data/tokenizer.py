"""Tokenizers: a byte-level BPE trained with HuggingFace `tokenizers`, or plain bytes.

Both produce *base* ids only; special tokens live in their own split after them (`Vocab`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def _is_continuation(first_bytes: np.ndarray) -> np.ndarray:
    """UTF-8 continuation bytes (0b10xxxxxx) never start a character."""
    return (first_bytes & 0xC0) == 0x80


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level mapping, inverted: the printable character standing for each byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class ByteTokenizer:
    """UTF-8 bytes: base vocabulary of 256, lossless on any text."""

    kind = "bytes"
    base_size = 256

    def starts_char(self) -> np.ndarray:
        """(base_size,) bool: whether a token begins at a UTF-8 character boundary (a cut before it
        never splits a character)."""
        return ~_is_continuation(np.arange(256))

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.int64) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def save(self, folder: Path) -> None:
        (folder / "tokenizer.json").write_text(json.dumps({"kind": "bytes"}))


class BPETokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenization) trained on the training split."""

    kind = "bpe"

    def __init__(self, tok) -> None:  # noqa: ANN001 (a tokenizers.Tokenizer)
        self.tok = tok
        self.base_size = tok.get_vocab_size()

    @classmethod
    def train(cls, texts: list[str], vocab_size: int, progress: bool = True) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=progress, special_tokens=[])
        tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def starts_char(self) -> np.ndarray:
        """(base_size,) bool: whether a token's first byte begins a UTF-8 character (byte-level
        BPE tokens may end or begin inside a multi-byte character)."""
        alphabet = _byte_level_alphabet()
        first = np.zeros(self.base_size, dtype=np.int64)
        for token, i in self.tok.get_vocab().items():
            if 0 <= i < self.base_size and token:
                first[i] = alphabet.get(token[0], ord("a"))
        return ~_is_continuation(first)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int64) for e in self.tok.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids if 0 <= int(i) < self.base_size])

    def save(self, folder: Path) -> None:
        self.tok.save(str(folder / "tokenizer.json"))


Tokenizer = ByteTokenizer | BPETokenizer


def load_tokenizer(folder: Path) -> Tokenizer:
    path = folder / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer.json in {folder}")
    head = json.loads(path.read_text())
    if head.get("kind") == "bytes":
        return ByteTokenizer()
    from tokenizers import Tokenizer as HFTokenizer

    return BPETokenizer(HFTokenizer.from_file(str(path)))

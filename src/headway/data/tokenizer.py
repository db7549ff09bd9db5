"""Tokenizers: a byte-level BPE trained with HuggingFace `tokenizers`, plain bytes, or an existing
tokenizer brought by the user (a `tokenizer.json`, or a folder `AutoTokenizer` loads offline).

All produce *base* ids only; headway's special tokens live in their own split after them (`Vocab`).
An external tokenizer's whole vocabulary is the base split, its own special tokens included, and
corpus text is encoded without parsing special-token strings: a literal `<|endoftext|>` in a file
stays text. Nothing is added around a text (no BOS/EOS from the tokenizer's post-processor).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

PIECE_CHARS = 1 << 18  # long texts are encoded in pieces of about this many characters
GROUP_CHARS = 1 << 22  # texts are encoded this many characters at a time
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_PUNCT = frozenset("()[]{}.,:;=+-*/<>!?\"#%&|^~@$\\`_")


def split_for_encoding(text: str, size: int = PIECE_CHARS, search: int = 4096) -> list[str]:
    """`text` cut into pieces of about `size` characters at points where GPT-2's byte-level
    pre-tokenizer (`'s|'t|...| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`) cuts anyway:
    an ASCII letter or digit followed by ASCII punctuation other than an apostrophe (the letter run
    ends there, the punctuation run starts there without a space). BPE merges never cross
    pre-token boundaries, so encoding the pieces gives exactly the ids of encoding the whole. Where
    no such point lies within `search` characters after a target, the piece grows to the next one."""
    if len(text) <= size:
        return [text]
    out, start = [], 0
    while len(text) - start > size:
        cut = None
        for i in range(start + size, min(len(text), start + size + search)):
            if text[i - 1] in _ALNUM and text[i] in _PUNCT:
                cut = i
                break
        if cut is None:
            nxt = start + size + search
            while nxt < len(text) and not (text[nxt - 1] in _ALNUM and text[nxt] in _PUNCT):
                nxt += 1
            if nxt >= len(text):
                break
            cut = nxt
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return out


def _is_cut(text: str, i: int) -> bool:
    """Whether the pre-tokenizer cuts `text` before position i whatever precedes or follows (see
    `split_for_encoding`)."""
    return text[i - 1] in _ALNUM and text[i] in _PUNCT


def encode_edge(tok: Tokenizer, text: str, n: int, last: bool) -> list[int]:
    """The last (`last=True`) or first `n` ids of `tok.encode(text)`, encoding only a window at that
    end of `text`. The window ends at a cut of the pre-tokenizer (`_is_cut`), so its ids are exactly
    the whole text's there; it doubles until it holds n ids. A prompt's 110 tokens next to a long
    file cost a window of about 1 kB instead of the whole file (26 ms a file on the standard library)."""
    if n <= 0:
        return []
    if not getattr(tok, "byte_level", True):  # cuts are exact only under GPT-2's pre-tokenizer
        ids = tok.encode(text)
        return ids[-n:] if last else ids[:n]
    width = 8 * n + 64
    while width < len(text):
        if last:
            cut = next((i for i in range(len(text) - width, 0, -1) if _is_cut(text, i)), None)
            ids = None if cut is None else tok.encode(text[cut:])
        else:
            cut = next((i for i in range(width, len(text)) if _is_cut(text, i)), None)
            ids = None if cut is None else tok.encode(text[:cut])
        if ids is None:
            break
        if len(ids) >= n:
            return ids[-n:] if last else ids[:n]
        width *= 2
    ids = tok.encode(text)
    return ids[-n:] if last else ids[:n]


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
    """A `tokenizers.Tokenizer`: headway's byte-level BPE (GPT-2 style pre-tokenization, trained on
    the training split; `kind` "bpe") or an external one (`kind` "external", see the module docstring)."""

    def __init__(self, tok) -> None:  # noqa: ANN001 (a tokenizers.Tokenizer)
        self.tok = tok
        tok.encode_special_tokens = True  # special-token strings in the text stay text
        self.base_size = tok.get_vocab_size(with_added_tokens=True)
        self.byte_level = _is_gpt2_byte_level(tok)
        self.kind = "bpe" if self.byte_level and not tok.get_added_tokens_decoder() and tok.post_processor is None \
            else "external"

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, progress: bool = True) -> BPETokenizer:
        """Train on `texts` (a list or a stream: the trainer keeps word counts, not the texts)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=progress, special_tokens=[])
        tok.train_from_iterator(texts, trainer=trainer, length=len(texts) if isinstance(texts, list) else None)
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self.encode_batch([text])[0]]

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        if not self.byte_level:  # pieces are exact only under GPT-2's pre-tokenizer: encode whole texts
            return [np.asarray(e.ids, dtype=np.int64) for e in self.tok.encode_batch(texts, add_special_tokens=False)]
        return self._encode_in_pieces(texts)

    def _encode_in_pieces(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of each text, exactly as one `encode` of it. Long texts are encoded in pieces cut
        where the byte-level pre-tokenizer cuts anyway, and texts in groups of a few MB, so memory
        follows the group, not the corpus or its longest line (one 50 MB line took 12.5 GB whole)."""
        pieces: list[str] = []
        owner: list[int] = []
        for i, t in enumerate(texts):
            for p in split_for_encoding(t):
                pieces.append(p)
                owner.append(i)
        parts: list[list[np.ndarray]] = [[] for _ in texts]
        start, size = 0, 0
        for j, p in enumerate(pieces + [None]):  # type: ignore[list-item]
            if p is None or (size + len(p) > GROUP_CHARS and j > start):
                for k, e in zip(range(start, j), self.tok.encode_batch(pieces[start:j], add_special_tokens=False)):
                    parts[owner[k]].append(np.asarray(e.ids, dtype=np.int64))
                start, size = j, 0
            if p is not None:
                size += len(p)
        return [np.concatenate(x) if len(x) > 1 else (x[0] if x else np.zeros(0, np.int64)) for x in parts]

    def starts_char(self) -> np.ndarray:
        """(base_size,) bool: whether a token's first byte begins a UTF-8 character (byte-level
        BPE tokens may end or begin inside a multi-byte character; so may byte-fallback tokens
        such as `<0x80>`). Added (special) tokens begin one."""
        alphabet = _byte_level_alphabet() if self.byte_level else {}
        first = np.full(self.base_size, ord("a"), dtype=np.int64)
        added = set(self.tok.get_added_tokens_decoder())
        for token, i in self.tok.get_vocab(with_added_tokens=True).items():
            if not (0 <= i < self.base_size) or not token or i in added:
                continue
            m = _BYTE_FALLBACK.fullmatch(token)
            if m:
                first[i] = int(m.group(1), 16)
            elif self.byte_level:
                first[i] = alphabet.get(token[0], ord("a"))
        return ~_is_continuation(first)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids if 0 <= int(i) < self.base_size], skip_special_tokens=False)

    def save(self, folder: Path) -> None:
        self.tok.save(str(folder / "tokenizer.json"))


Tokenizer = ByteTokenizer | BPETokenizer

_BYTE_FALLBACK = __import__("re").compile(r"<0x([0-9A-Fa-f]{2})>")


def _is_gpt2_byte_level(tok) -> bool:  # noqa: ANN001 (a tokenizers.Tokenizer)
    """Whether `tok` pre-tokenizes as GPT-2 does (a ByteLevel pre-tokenizer with its regex, alone):
    only then may a long text be encoded in pieces cut where that regex cuts (`split_for_encoding`)."""
    state = json.loads(tok.to_str()).get("pre_tokenizer") or {}
    return state.get("type") == "ByteLevel" and state.get("use_regex", True) and tok.normalizer is None


def external_tokenizer_json(path: str | Path) -> str:
    """The `tokenizers` JSON of an existing tokenizer: a `tokenizer.json` file, or a folder holding one
    or one that transformers' `AutoTokenizer` loads offline as a fast tokenizer. A ValueError names
    `--tokenizer` and what was found otherwise."""
    p = Path(path).expanduser()
    file = p / "tokenizer.json" if p.is_dir() else p
    if file.is_file():
        text = file.read_text(encoding="utf-8")
        try:
            from tokenizers import Tokenizer as HFTokenizer

            HFTokenizer.from_str(text)
        except Exception as e:  # noqa: BLE001 - any parse failure: not a tokenizers JSON
            raise ValueError(f"--tokenizer {path}: {file} is not a `tokenizers` JSON file ({e})") from None
        return text
    if not p.is_dir():
        raise ValueError(f"--tokenizer must be bpe, bytes, a tokenizer.json or a folder holding a tokenizer, got "
                         f"{str(path)!r} (no such file or folder)")
    try:
        from transformers import AutoTokenizer

        fast = AutoTokenizer.from_pretrained(str(p), local_files_only=True, use_fast=True)
        return fast.backend_tokenizer.to_str()
    except Exception as e:  # noqa: BLE001 - transformers' own message says what is missing
        raise ValueError(f"--tokenizer {path}: no tokenizer.json there and AutoTokenizer could not load a fast "
                         f"tokenizer offline ({type(e).__name__}: {e})") from None


def load_tokenizer(folder: Path) -> Tokenizer:
    """The tokenizer saved in `folder/tokenizer.json` (a run, a checkpoint or a prepared data folder):
    a `ByteTokenizer` or a `BPETokenizer`. FileNotFoundError when there is none."""
    path = folder / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer.json in {folder}")
    head = json.loads(path.read_text())
    if head.get("kind") == "bytes":
        return ByteTokenizer()
    from tokenizers import Tokenizer as HFTokenizer

    return BPETokenizer(HFTokenizer.from_file(str(path)))

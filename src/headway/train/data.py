"""The training run's data: corpus, split, tokenizer (trained once and cached), token arrays, batches."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headway.data.collate import Batch, collate
from headway.data.corpus import Document, load_paths, split, stdlib_corpus
from headway.data.packing import Packer, examples_from_documents
from headway.data.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer, load_tokenizer
from headway.train.config import TrainConfig
from headway.types import Objective, Vocab


@dataclass
class RunData:
    tokenizer: Tokenizer
    vocab: Vocab
    train: list[np.ndarray]
    val: list[np.ndarray]
    val_texts: list[str]
    val_bytes: int
    train_bytes: int
    corpus_name: str


def _save_tokens(path: Path, docs: list[np.ndarray]) -> None:
    flat = np.concatenate(docs).astype(np.int32) if docs else np.zeros(0, np.int32)
    offsets = np.cumsum([0] + [len(d) for d in docs]).astype(np.int64)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, tokens=flat, offsets=offsets)
    tmp.replace(path)


def _load_tokens(path: Path) -> list[np.ndarray]:
    z = np.load(path)
    flat, off = z["tokens"].astype(np.int64), z["offsets"]
    return [flat[off[i] : off[i + 1]] for i in range(len(off) - 1)]


def _content_key(cfg: TrainConfig, docs: list[Document], tok_hash: str | None) -> str:
    """What the token cache depends on: every document's name and text (an edited file of equal
    size changes it), the split, the tokenizer settings and, when reused, the tokenizer itself."""
    h = hashlib.sha256()
    for d in docs:
        h.update(d.name.encode("utf-8", "surrogatepass") + b"\0" + d.text.encode("utf-8", "surrogatepass") + b"\0")
    return json.dumps({"data": cfg.data, "val": cfg.val_fraction, "tok": cfg.tokenizer, "vocab": cfg.vocab_size,
                       "text_field": cfg.text_field, "sha256": h.hexdigest(), "tokenizer": tok_hash})


def prepare(cfg: TrainConfig, out: Path, log=print, tokenizer_from: Path | None = None) -> RunData:  # noqa: ANN001
    """Load and split the corpus; train the tokenizer (or keep the one in `tokenizer_from`, a
    resumed run's checkpoint); tokenize (cached in `out`, keyed by content). Refuses a corpus with
    no training tokens."""
    docs: list[Document] = load_paths(cfg.data, cfg.text_field, log) if cfg.data else stdlib_corpus()
    name = ", ".join(cfg.data) if cfg.data else "Python standard library (.py sources)"
    train_docs, val_docs = split(docs, cfg.val_fraction)
    tok: Tokenizer | None = None
    tok_hash = None
    if tokenizer_from is not None:  # a resumed run keeps its tokenizer, whatever the data now holds
        tok = load_tokenizer(tokenizer_from)
        tok_hash = hashlib.sha256((tokenizer_from / "tokenizer.json").read_bytes()).hexdigest()
    key = _content_key(cfg, docs, tok_hash)
    stamp = out / "data.key"
    cached = stamp.exists() and stamp.read_text() == key and (out / "tokens-train.npz").exists()
    if cached:
        tok = tok or load_tokenizer(out)
        train, val = _load_tokens(out / "tokens-train.npz"), _load_tokens(out / "tokens-val.npz")
        log(f"data: reusing the tokenizer and tokens cached in {out}")
    else:
        if tok is not None:
            log(f"data: the data changed since the checkpoint; tokenizing with the run's own tokenizer "
                f"({len(train_docs)} train documents now)")
        elif cfg.tokenizer == "bytes":
            tok = ByteTokenizer()
        else:
            log(f"data: training a byte-level BPE of {cfg.vocab_size} tokens on {len(train_docs)} documents")
            tok = BPETokenizer.train([d.text for d in train_docs], cfg.vocab_size, progress=False)
        log("data: tokenizing")
        train = tok.encode_batch([d.text for d in train_docs])
        val = tok.encode_batch([d.text for d in val_docs])
        _save_tokens(out / "tokens-train.npz", train)
        _save_tokens(out / "tokens-val.npz", val)
        stamp.write_text(key)
    tok.save(out)
    train = [t for t in train if len(t)]
    if not train:
        raise ValueError(f"--data: the {len(train_docs)} training documents hold no text (all empty); "
                         "nothing to train on")
    vocab = Vocab(tok.base_size)
    return RunData(tok, vocab, train, [t for t in val if len(t)], [d.text for d in val_docs],
                   sum(d.num_bytes for d in val_docs), sum(d.num_bytes for d in train_docs), name)


def batches(docs: list[np.ndarray], objective: Objective, cfg: TrainConfig, pad: int, skip: int = 0,
            rank: int = 0, world: int = 1, starts_char: np.ndarray | None = None) -> Iterator[Batch]:
    """Endless batches: each epoch shuffles the documents with `default_rng([seed, epoch])`, applies
    the objective, packs rows and groups them `batch_size` at a time. Row r goes to rank r % world.
    The first `skip` batches (of this rank) are generated and dropped (exact resume)."""
    if not any(len(d) for d in docs):
        raise ValueError("batches: no document holds a token")
    n = 0
    epoch = 0
    rows: list = []
    while True:
        rng = np.random.default_rng([cfg.seed, epoch])
        order = rng.permutation(len(docs))
        packer = Packer(cfg.seq_len, cfg.packing)
        stream = examples_from_documents((docs[i] for i in order), objective, cfg.seq_len, rng, starts_char)
        for r, row in enumerate(packer.pack(stream)):
            if r % world != rank:
                continue
            rows.append(row)
            if len(rows) == cfg.batch_size:
                if n >= skip:
                    yield collate(rows, cfg.seq_len, pad)
                n += 1
                rows = []
        epoch += 1

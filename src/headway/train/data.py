"""The training run's data: prepared token shards (see `headway.data.prepare`), the run's batch
stream (`headway.data.loader`) and validation documents under a token budget."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headway.data.loader import Loader, StreamSpec
from headway.data.prepare import Prepared, Settings, is_prepared, open_prepared, prepare, skipped_note
from headway.data.tokenizer import Tokenizer
from headway.objectives import vocab_for
from headway.train.checkpoint import saved_rows
from headway.train.config import TrainConfig
from headway.train.distributed import barrier
from headway.types import DEFAULT_SPECIALS, Objective, Vocab


@dataclass
class RunData:
    prepared: Prepared
    tokenizer: Tokenizer
    vocab: Vocab

    @property
    def corpus_name(self) -> str:
        return "Python standard library (.py sources)" if self.prepared.name == "stdlib" else self.prepared.name

    def val_docs(self, max_tokens: int | None) -> tuple[list[np.ndarray], int]:
        """Validation documents and their exact byte count: all of them (None), or from each source
        the first ones in stored order until its share (by weight) of `max_tokens`."""
        w = np.asarray(self.prepared.weights) / sum(self.prepared.weights)
        docs, nbytes = [], 0
        for share, s in zip(w, self.prepared.val):
            d, b = s.first(None if max_tokens is None else max(1, int(round(max_tokens * share))))
            docs += d
            nbytes += b
        return docs, nbytes

    def describe(self, cfg: TrainConfig) -> str:
        """The line a run logs about its data."""
        tr, va = self.prepared.totals("train"), self.prepared.totals("val")
        return (f"data: {self.corpus_name}: {tr['docs']:,} train / {va['docs']:,} validation documents, "
                f"{tr['tokens'] / 1e6:.2f}M train tokens, objective {cfg.objective}, "
                f"{cfg.resolved_loader_workers()} loader worker(s)")

    def loader(self, objective: Objective, cfg: TrainConfig, rank: int, world: int, state: dict | None) -> Loader:
        spec = StreamSpec(cfg.seq_len, cfg.batch_size, cfg.packing, cfg.seed, self.vocab.pad, rank, world,
                          cfg.resolved_loader_workers())
        return Loader(self.prepared.train, self.prepared.weights, objective, spec, self.tokenizer.starts_char(), state)


def data_folder(cfg: TrainConfig, out: Path) -> tuple[Path, bool]:
    """(folder, already prepared): `--data DIR` naming one prepared folder is used as it is; anything
    else is prepared into OUT/data."""
    if len(cfg.data) == 1 and is_prepared(Path(cfg.data[0])):
        return Path(cfg.data[0]), True
    return out / "data", False


def prepare_run_data(cfg: TrainConfig, out: Path, log=print, tokenizer_from: Path | None = None,  # noqa: ANN001
                     first: bool = True) -> RunData:
    """Prepare (first rank) or open (the others) the run's data. A resumed run keeps the tokenizer of
    its checkpoint (`tokenizer_from`), whatever the data now holds. Refuses a corpus with no
    training or no validation documents."""
    folder, ready = data_folder(cfg, out)
    if ready:
        p = open_prepared(folder, verify=first)
        if tokenizer_from is not None:
            mine = hashlib.sha256((tokenizer_from / "tokenizer.json").read_bytes()).hexdigest()
            if mine != p.manifest["tokenizer"]["sha256"]:
                raise ValueError(f"--data {folder}: prepared with another tokenizer than the checkpoint's; prepare "
                                 f"it again with the run's tokenizer")
    elif first:
        s = Settings(cfg.tokenizer, cfg.vocab_size, cfg.val_fraction, cfg.text_field, cfg.glob,
                     cfg.tokenizer_sample_bytes)
        p = prepare(cfg.data, folder, s, cfg.prepare_workers, tokenizer_from, log)
    else:
        p = open_prepared(folder, verify=False)
    train, val = p.totals("train"), p.totals("val")
    if train["tokens"] == 0:
        why = skipped_note(p.manifest)
        raise ValueError(f"--data: the {train['docs']} training documents hold no text (all empty); nothing to "
                         "train on" + (f" ({why})" if why else ""))
    for src in p.manifest["sources"]:
        if src["totals"]["train"]["tokens"] == 0:
            raise ValueError(f"--data {src['spec']}: this source has no training text; drop it or give it more "
                             "documents")
    if train["docs"] == 0 or val["docs"] == 0:
        raise ValueError(f"the split left {train['docs']} documents for training and {val['docs']} for validation; "
                         "give more documents or change --val-fraction")
    tok = p.tokenizer
    if first:
        tok.save(out)
    return RunData(p, tok, run_vocab(tok, cfg, tokenizer_from))


def prepare_on_ranks(cfg: TrainConfig, out: Path, log: Callable[[str], object], rank: int,
                     tokenizer_from: Path | None = None) -> RunData:
    """`prepare_run_data` in a run of many processes: rank 0 prepares the shards (on every core);
    the others then open them."""
    if rank == 0:
        data = prepare_run_data(cfg, out, log, tokenizer_from=tokenizer_from)
    barrier()
    if rank != 0:
        data = prepare_run_data(cfg, out, log, tokenizer_from=tokenizer_from, first=False)
    return data


def run_vocab(tok: Tokenizer, cfg: TrainConfig, checkpoint: Path | None = None) -> Vocab:
    """The run's vocabulary: the tokenizer's ids, headway's specials and the sentinels. A checkpoint's
    own sentinel count wins (read from its saved special rows), so a run keeps the vocabulary it was
    trained with whatever `sentinels_for` says today; a new run takes `vocab_for(tok, objective, seq_len)`."""
    rows = saved_rows(checkpoint, "embedding.weights.special") if checkpoint is not None else None
    if rows is not None and rows > len(DEFAULT_SPECIALS):
        return Vocab.from_tokenizer(tok, num_sentinels=rows - len(DEFAULT_SPECIALS))
    return vocab_for(tok, cfg.objective, cfg.seq_len)

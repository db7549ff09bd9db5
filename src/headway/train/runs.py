"""A trained run, loaded: the model, tokenizer, vocabulary and config of a checkpoint or run folder,
built the way the trainer built them (`headway eval/sample/infill/export` and the library use it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_run(ckpt: str | Path, device: str = "cpu", generating: bool = False) -> tuple[Any, Any, Any, Any]:
    """(model, tokenizer, vocab, config) from a checkpoint or run folder. `generating`: refuse a
    model that was never trained to predict left to right (MLM), whose samples would be noise."""
    from headway.data.tokenizer import load_tokenizer
    from headway.objectives import build_objective
    from headway.train.checkpoint import load_checkpoint, resolve
    from headway.train.config import TrainConfig
    from headway.train.data import run_vocab
    from headway.train.loop import make_model

    folder = resolve(Path(ckpt))
    cfg = TrainConfig.load(folder / "config.json")
    tok = load_tokenizer(folder)
    vocab = run_vocab(tok, cfg, folder)
    objective = build_objective(cfg.objective, vocab, (tok.encode, tok.decode))
    if generating and not objective.trains_left_to_right:
        raise ValueError(f"{ckpt} was trained with --objective {cfg.objective}, which never predicts text left to "
                         "right; it cannot sample or infill (use `headway eval`, or train with clm / fim / ul2)")
    model = make_model(cfg, objective, vocab)
    load_checkpoint(folder, model, None, device)
    return model.to(device).eval(), tok, vocab, cfg


def run_lead(cfg: Any, vocab: Any) -> int:
    """The id a run's objective opens a document's text with (`text_lead`: EOS, or UL2's [S2S])."""
    from headway.objectives import build_objective, text_lead

    return text_lead(build_objective(cfg.objective, vocab), vocab.eos)

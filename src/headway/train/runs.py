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

    folder = resolve(Path(ckpt))
    cfg = TrainConfig.load(folder / "config.json")
    tok = load_tokenizer(folder)
    vocab = run_vocab(tok, cfg, folder)
    objective = build_objective(cfg.objective, vocab, (tok.encode, tok.decode))
    if generating and not objective.trains_left_to_right:
        raise ValueError(f"{ckpt} was trained with --objective {cfg.objective}, which never predicts text left to "
                         "right; it cannot sample or infill (use `headway eval`, or train with clm / fim / ul2)")
    model = model_for_run(cfg, objective, vocab, fresh=False)
    load_checkpoint(folder, model, None, device)
    return model.to(device).eval(), tok, vocab, cfg


def model_for_run(cfg: Any, objective: Any, vocab: Any, fresh: bool = True) -> Any:
    """The model a run's config and objective need, built through the backbone registry: the one way
    the trainer, `load_run` (eval, sample, infill, export) and the library build a run's model.

    A backbone that follows each batch's mask spec serves every objective. One whose direction is in
    its weights (the gated SSM) is built bidirectional for an MLM-only objective; an objective that
    needs a bidirectional prefix *and* left-to-right targets is refused on it, as on a causal-only
    backbone (by name, with the reason). `fresh`: a new run (an `--init` checkpoint's weights are
    loaded); False when a saved checkpoint's weights follow."""
    from headway.models import build_model
    from headway.models.registry import get_backbone

    spec = get_backbone(cfg.backbone)
    needs = objective.needs_bidirectional and not spec.follows_mask
    if needs and not spec.bidirectional:
        raise ValueError(f"--objective {cfg.objective}: needs a bidirectional prefix, which the {cfg.backbone} backbone "
                         "cannot attend to (it is causal only); use a causal objective (clm, fim) or --backbone "
                         "transformer")
    if needs and objective.trains_left_to_right:
        raise ValueError(f"--objective {cfg.objective}: mixes MLM (bidirectional) with left-to-right objectives; the "
                         f"{cfg.backbone} backbone's direction is fixed in its weights, so it cannot do both. Use "
                         "--backbone transformer (its mask follows each example) or train them separately")
    recipe = {k: getattr(cfg, k) for k in spec.options}
    init = getattr(cfg, "init", None) if fresh else None
    return build_model(vocab, cfg.backbone, cfg.size, bidirectional=needs, z_loss=cfg.z_loss, **recipe,
                       tie_head=not cfg.tensor_parallel_head and _tied(cfg, spec), init=init)


def _tied(cfg: Any, spec: Any) -> bool:
    """Whether the run's head is tied to its embedding: yes, unless an `--init` checkpoint's is not."""
    tied = spec.extra.get("tied")
    return True if tied is None else bool(tied)


def run_lead(cfg: Any, vocab: Any) -> int:
    """The id a run's objective opens a document's text with (`text_lead`: EOS, or UL2's [S2S])."""
    from headway.objectives import build_objective, text_lead

    return text_lead(build_objective(cfg.objective, vocab), vocab.eos)

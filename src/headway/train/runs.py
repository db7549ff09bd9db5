"""A trained run, loaded: the model, tokenizer, vocabulary and config of a checkpoint or run folder,
built the way the trainer built them (`headway eval/sample/infill/export` and the library use it)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from headway.loss.options import LossOptions


def load_run(ckpt: str | Path, device: str = "cpu", generating: bool = False) -> tuple[Any, Any, Any, Any]:
    """(model, tokenizer, vocab, config) from a checkpoint or run folder. `generating`: refuse a
    model that was never trained to predict left to right nor to unmask a whole text (MLM), whose
    samples would be noise; a masked-diffusion run samples with its own reverse process
    (`headway.models.diffusion_sampling`)."""
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
    if generating and not objective.trains_left_to_right and not getattr(objective, "masked_diffusion", False):
        raise ValueError(f"{ckpt} was trained with --objective {cfg.objective}, which never predicts text left to "
                         "right nor unmasks a whole text; it cannot sample or infill (use `headway eval`, or train "
                         "with clm / fim / ul2 / diffusion)")
    model = model_for_run(cfg, objective, vocab, checkpoint=folder)
    load_checkpoint(folder, model, None, device)
    return model.to(device).eval(), tok, vocab, cfg


ARCHITECTURE_FILE = "architecture.json"
"""Beside config.json in a run and each checkpoint, for an `hf:` backbone: the architecture's
resolved transformers config, so the run rebuilds the same model whatever transformers' defaults
become (`resolve_run_config` writes it; `model_for_run` reads it)."""


def resolve_run_config(cfg: Any, log: Any = print) -> None:
    """Settle, once, what a new run's config leaves to the backbone (written into its config.json):
    `--init FOLDER` makes the backbone ``hf:FOLDER`` (absolute) and, unless `--tokenizer` names a
    path, takes the folder's tokenizer; a backbone that cannot keep packed documents apart trains
    with one document per row (``packing = "single"``), said in the log; `--teacher` is pinned to its
    checkpoint and checked against the run's tokenizer and Vocab (`headway.train.teacher`)."""
    from headway.models.registry import get_backbone
    from headway.recipe import RECIPE

    if cfg.init:
        init = str(Path(cfg.init).expanduser().resolve())
        if cfg.backbone not in (RECIPE.backbone, f"hf:{cfg.init}", f"hf:{init}"):
            raise ValueError(f"--backbone {cfg.backbone}: --init {cfg.init} starts the architecture of that "
                             f"checkpoint (hf:{cfg.init}); leave --backbone out")
        cfg.backbone, cfg.init = f"hf:{init}", init
        if cfg.tokenizer in ("bpe", "bytes"):
            cfg.tokenizer = init
    spec = get_backbone(cfg.backbone)
    if not spec.packs_documents and cfg.packing != "single":
        log(f"packing: the {cfg.backbone} backbone cannot keep packed documents apart (no per-document state reset); "
            "training with one document per row (--packing single)")
        cfg.packing = "single"
    if getattr(cfg, "teacher", None):
        from headway.train.teacher import resolve_teacher

        resolve_teacher(cfg, log)


def save_architecture(model: Any, folder: Path) -> None:
    """Write `ARCHITECTURE_FILE` into `folder` for a model whose backbone has a transformers config."""
    cfg = getattr(model.backbone, "config", None)
    if not hasattr(cfg, "to_json_string"):
        return
    import copy
    import json

    c = copy.deepcopy(cfg)
    c.tie_word_embeddings = bool(getattr(model.head, "tied", True))
    raw = json.loads(c.to_json_string(use_diff=False))
    raw.pop("_attn_implementation_autoset", None)
    (folder / ARCHITECTURE_FILE).write_text(json.dumps(raw, indent=1))


def model_for_run(cfg: Any, objective: Any, vocab: Any, checkpoint: Path | None = None, *, data: Any = None,
                  teacher: Any = None) -> Any:
    """The model a run's config and objective need, built through the backbone registry: the one way
    the trainer, `load_run` (eval, sample, infill, export) and the library build a run's model.

    A backbone that follows each batch's mask spec serves every objective. One whose direction is in
    its weights (the gated SSM) is built bidirectional for an MLM-only objective; an objective that
    needs a bidirectional prefix *and* left-to-right targets is refused on it, and an MLM objective
    on a causal-only backbone, by name with the reason. `checkpoint`: the folder whose weights will be
    loaded (its `ARCHITECTURE_FILE` fixes an `hf:` architecture); None for a new run, which starts
    from `cfg.init`'s weights when given. `cfg.mtp_depth` > 0 adds the multi-token prediction modules
    (`--mtp-weight` their loss weight), refused by name with an objective that has no left-to-right
    target. `data`: the training run's `RunData`; given, an objective that distills (`distills`, e.g.
    `distill`) gets the student and its frozen `cfg.teacher`, checked against the data's tokenizer and
    Vocab, in a `Distiller` (whose state is the student's alone); without it (eval, sample, export) the
    student is built alone. `teacher`: an already loaded and checked teacher to use instead of loading
    `cfg.teacher` again (the size measuring builds several students for one teacher)."""
    from headway.models import build_model
    from headway.models.mtp import check_objective
    from headway.models.registry import get_backbone

    name = cfg.backbone
    if checkpoint is not None and (Path(checkpoint) / ARCHITECTURE_FILE).is_file():
        name = f"hf:{Path(checkpoint) / ARCHITECTURE_FILE}"
    spec = get_backbone(name)
    needs = objective.needs_bidirectional and not spec.follows_mask
    kind = "masked diffusion" if getattr(objective, "masked_diffusion", False) else "MLM"
    if needs and not spec.bidirectional:
        raise ValueError(f"--objective {cfg.objective}: needs bidirectional attention ({kind}), which the "
                         f"{cfg.backbone} backbone cannot give (it is causal only and follows no mask); use a "
                         "left-to-right objective (clm, fim, prefix_lm, ul2) or --backbone transformer")
    if needs and objective.trains_left_to_right:
        raise ValueError(f"--objective {cfg.objective}: mixes {kind} (bidirectional) with left-to-right objectives; "
                         f"the {cfg.backbone} backbone's direction is fixed in its weights, so it cannot do both. Use "
                         "--backbone transformer (its mask follows each example) or train them separately")
    depth = int(getattr(cfg, "mtp_depth", 0))
    check_objective(objective, depth)
    recipe = {k: getattr(cfg, k) for k in spec.options}
    init = getattr(cfg, "init", None) if checkpoint is None else None
    tied = spec.extra.get("tied", True) is not False
    model = build_model(vocab, name, cfg.size, bidirectional=needs, loss=loss_options(cfg), **recipe,
                        tie_head=not cfg.tensor_parallel_head and tied, init=init, mtp_depth=depth,
                        mtp_weight=float(getattr(cfg, "mtp_weight", 0.3)))
    if data is not None and getattr(objective, "distills", False):
        from headway.train.teacher import with_teacher

        model = with_teacher(model, cfg, data, teacher)
    return model


def loss_options(cfg: Any) -> LossOptions:
    """The `LossOptions` of a run's head: ``LossOptions(z_loss=cfg.z_loss, impl=cfg.loss_impl)`` (the
    `--z-loss` and `--loss-impl` flags; every other option at its default)."""
    from headway.loss.options import LossOptions

    return LossOptions(z_loss=cfg.z_loss, impl=cfg.loss_impl)


def run_lead(cfg: Any, vocab: Any) -> int:
    """The id a run's objective opens a document's text with (`text_lead`: EOS, or UL2's [S2S])."""
    from headway.objectives import build_objective, text_lead

    return text_lead(build_objective(cfg.objective, vocab), vocab.eos)

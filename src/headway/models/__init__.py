"""Backbones (a transformer, a gated SSM, transformers architectures) and `LanguageModel`; `build_model`
builds any registered backbone (`headway.models.registry`)."""

from __future__ import annotations

from headway.heads.lm_head import LMHead
from headway.heads.split import SplitEmbedding, SplitLMHead
from headway.loss.options import LossOptions, merge_options
from headway.models import hf_backbone as _hf_backbone  # noqa: F401 - registers the hf: family
from headway.models.gated_ssm import GatedSSM, GatedSSMConfig
from headway.models.lm import LanguageModel, sample
from headway.models.mtp import build_mtp
from headway.models.registry import BuildRequest, backbone_names, check_backbone, get_backbone
from headway.models.transformer import Transformer, TransformerConfig
from headway.recipe import RECIPE
from headway.types import Vocab

__all__ = ["Transformer", "TransformerConfig", "GatedSSM", "GatedSSMConfig", "LanguageModel", "sample",
           "build_model", "SIZES", "backbone_names", "check_backbone"]

# hidden size, layers, heads
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (64, 2, 2),
    "mini": (128, 4, 4),
    "small": (192, 4, 4),
    "medium": (256, 6, 4),
    "base": (384, 8, 6),
}
"""Size presets: name -> (hidden size, layers, attention heads)."""


def parse_size(size: str) -> tuple[int, int, int]:
    """A preset name, or "HxL" / "HxLxHEADS" (e.g. "96x3", heads default to H // 32, at least 1)."""
    if size in SIZES:
        return SIZES[size]
    parts = size.split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) not in (2, 3) or min(nums) < 1:
        raise ValueError(f"build_model: `size` must be one of {list(SIZES)} or 'HIDDENxLAYERS[xHEADS]', got {size!r}")
    return nums[0], nums[1], nums[2] if len(nums) == 3 else max(1, nums[0] // 32)


def build_model(vocab: Vocab, backbone: str = RECIPE.backbone, size: str = RECIPE.size, *,
                bidirectional: bool = False, loss: LossOptions | None = None, z_loss: float = 0.0,
                tie_head: bool = True, activation: str | None = None, qk_norm: bool | None = None,
                zero_init: bool | None = None, init: str | None = None, mtp_depth: int = 0,
                mtp_weight: float = 0.3) -> LanguageModel:
    """A `LanguageModel` with a split (base + special) embedding and a fused LM head, tied to the
    embedding split by split (default) or, with tie_head=False, an `LMHead` with its own (V, H) weight.

    backbone: a registered name (`headway.models.registry`): "transformer", "gated_ssm", or
    "hf:NAME" / "hf:PATH" (a transformers architecture, see `headway.models.hf_backbone`).
    The defaults are `headway.RECIPE`'s, what `headway train` trains: a transformer of size "64x3"
    (hidden 64, 3 layers; presets in `SIZES`, or "HxL" / "HxLxHEADS") with ReLU², QK-norm and
    zero-initialized output projections. activation ("gelu" | "relu2") / qk_norm / zero_init: the
    transformer's recipe (see `TransformerConfig`), None for the recipe's value; backbones that do not
    declare them refuse them. bidirectional: build a backbone whose direction is in its weights (the gated
    SSM's backward branch, for MLM); a backbone that follows each batch's mask spec refuses it. init: a
    local HF checkpoint folder an `hf:` backbone starts from (its embedding and head rows too; `size`
    is then the checkpoint's). `loss = model(batch)` gives the mean loss over the batch's targets.

    loss: the head's `LossOptions` (label smoothing, z-loss, softcap, ignore index, chunk size, backend);
    `z_loss` is a shortcut for ``LossOptions(z_loss=...)`` (given with `loss`, a value other than 0 must
    equal ``loss.z_loss``). A backbone whose architecture soft-caps its final logits (Gemma-2's
    ``final_logit_softcapping``, an `hf:` backbone) fills ``softcap`` unless the options set one.

    mtp_depth: K > 0 adds K multi-token prediction modules (`headway.models.mtp`) whose loss, weighted
    by `mtp_weight` (λ, on the mean over depths), joins the main loss in ``model(batch)``; they are
    built after everything else, so a seed gives the same embedding, backbone and head with or
    without them. 0 (the default): none, the model is exactly as before."""
    spec = get_backbone(backbone)
    given = {"activation": activation, "qk_norm": qk_norm, "zero_init": zero_init}
    recipe = RECIPE.model_options(spec.options)
    options = {k: recipe[k] if v is None else v for k, v in given.items() if k in spec.options}
    refused = [k for k, v in given.items() if k not in spec.options and v is not None and v != _NEUTRAL[k]]
    if refused:
        raise ValueError(f"build_model: {' / '.join(refused)} are transformer settings; the {backbone} backbone "
                         "takes its own defaults")
    if bidirectional and spec.follows_mask:
        raise ValueError(f"build_model: the {backbone} backbone follows each batch's mask spec; use an MLM objective "
                         "for bidirectional attention instead of bidirectional=True")
    if bidirectional and not spec.bidirectional:
        raise ValueError(f"build_model: the {backbone} backbone cannot be built bidirectional")
    if init is not None and "init" not in spec.extra:
        raise ValueError(f"build_model: `init` starts an hf: backbone from a checkpoint; {backbone!r} is not one")
    H, L, nh = parse_size(size)
    H = spec.extra.get("hidden_size", H)  # an architecture read from a file fixes its own size
    emb = SplitEmbedding(vocab.split_sizes, H)  # first: a seed gives the same weights as ever
    body = spec.build(BuildRequest(H, L, nh, bidirectional, options, init))
    opts = _head_options(loss, z_loss, spec.extra.get("softcap"))
    head = SplitLMHead(vocab.split_sizes, H, tie_to=emb, loss=opts) if tie_head else LMHead(H, vocab.size, loss=opts)
    model = LanguageModel(emb, body, head)
    if init is not None:
        spec.extra["init"](model, vocab, init)
    if not isinstance(mtp_depth, int) or isinstance(mtp_depth, bool) or mtp_depth < 0:
        raise ValueError(f"build_model: `mtp_depth` must be an integer >= 0, got {mtp_depth!r}")
    if mtp_depth:
        if not getattr(body, "causal", True):
            raise ValueError(f"build_model: multi-token prediction predicts left to right; the {backbone} backbone "
                             "was built bidirectional (MLM)")
        model.mtp = build_mtp(body, H, nh, mtp_depth, mtp_weight, RECIPE.model_options())
    return model


def _head_options(loss: LossOptions | None, z_loss: float, arch_softcap: float | None) -> LossOptions:
    """The head's loss options: `loss` (default: plain cross-entropy) with the `z_loss` shortcut applied
    and, when the options set no softcap, the architecture's own final-logit softcap."""
    merge_options("build_model", loss, z_loss=z_loss)  # a z_loss that disagrees with loss.z_loss is refused
    opts = LossOptions(z_loss=z_loss) if loss is None else loss
    if opts.softcap is None and arch_softcap is not None:
        opts = opts.replace(softcap=arch_softcap)
    return opts


_NEUTRAL = {"activation": "gelu", "qk_norm": False, "zero_init": False}  # the untuned values: "not asked for"

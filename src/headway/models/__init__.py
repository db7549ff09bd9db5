"""Backbones (a transformer, a gated SSM) and `LanguageModel`; `build_model` from a preset."""

from __future__ import annotations

from headway.heads.lm_head import LMHead
from headway.heads.split import SplitEmbedding, SplitLMHead
from headway.models.gated_ssm import GatedSSM, GatedSSMConfig
from headway.models.lm import LanguageModel, sample
from headway.models.transformer import Transformer, TransformerConfig
from headway.recipe import RECIPE
from headway.types import Vocab

__all__ = ["Transformer", "TransformerConfig", "GatedSSM", "GatedSSMConfig", "LanguageModel", "sample",
           "build_model", "SIZES", "BACKBONES", "check_backbone"]

# hidden size, layers, heads
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (64, 2, 2),
    "mini": (128, 4, 4),
    "small": (192, 4, 4),
    "medium": (256, 6, 4),
    "base": (384, 8, 6),
}
"""Size presets: name -> (hidden size, layers, attention heads)."""
BACKBONES = ("transformer", "gated_ssm")
"""The backbones `build_model` builds."""


def check_backbone(name: object) -> None:
    """A ValueError naming `--backbone`, the expected and the given value, unless `name` is a backbone
    `build_model` can build."""
    if name not in BACKBONES:
        raise ValueError(f"--backbone must be one of {' | '.join(BACKBONES)}, got {name!r}")


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
                bidirectional: bool = False, z_loss: float = 0.0, tie_head: bool = True, activation: str | None = None,
                qk_norm: bool | None = None, zero_init: bool | None = None) -> LanguageModel:
    """A `LanguageModel` with a split (base + special) embedding and a fused LM head, tied to the
    embedding split by split (default) or, with tie_head=False, an `LMHead` with its own (V, H) weight.

    The defaults are `headway.RECIPE`'s, what `headway train` trains: a transformer of size "64x3"
    (hidden 64, 3 layers; presets in `SIZES`, or "HxL" / "HxLxHEADS") with ReLU², QK-norm and
    zero-initialized output projections. activation ("gelu" | "relu2") / qk_norm / zero_init: the
    transformer's recipe (see `TransformerConfig`), None for the recipe's value; the gated SSM has its
    own gating and refuses them. bidirectional: the gated SSM's backward branch (MLM); the transformer
    follows each batch's mask spec instead. `loss = model(batch)` gives the mean loss over the batch's
    targets."""
    if backbone not in BACKBONES:
        raise ValueError(f"build_model: `backbone` must be one of {BACKBONES}, got {backbone!r}")
    recipe = RECIPE.model_options("transformer")
    if backbone == "transformer":
        activation = recipe["activation"] if activation is None else activation
        qk_norm = recipe["qk_norm"] if qk_norm is None else qk_norm
        zero_init = recipe["zero_init"] if zero_init is None else zero_init
    else:
        activation, qk_norm, zero_init = (activation or "gelu", bool(qk_norm), bool(zero_init))
    H, L, nh = parse_size(size)
    emb = SplitEmbedding(vocab.split_sizes, H)
    if backbone == "transformer":
        if bidirectional:
            raise ValueError("build_model: the transformer follows the batch's mask spec; use an MLM objective "
                             "for bidirectional attention instead of bidirectional=True")
        body = Transformer(TransformerConfig(hidden_size=H, num_layers=L, num_heads=nh, activation=activation,
                                             qk_norm=qk_norm, zero_init=zero_init))
    else:
        if (activation, qk_norm, zero_init) != ("gelu", False, False):
            raise ValueError("build_model: activation / qk_norm / zero_init are transformer settings; the gated SSM "
                             "takes the defaults")
        body = GatedSSM(GatedSSMConfig(hidden_size=H, num_layers=L, bidirectional=bidirectional))
    head = SplitLMHead(vocab.split_sizes, H, tie_to=emb, z_loss=z_loss) if tie_head else LMHead(H, vocab.size,
                                                                                               z_loss=z_loss)
    return LanguageModel(emb, body, head)

"""HuggingFace integration (the `hf` extra: transformers, accelerate, safetensors).

    from headway.integrations import use_fused_loss, fit_vocab, ObjectiveCollator, CausalityCallback

Names are imported on first use, so `import headway.integrations` works without transformers; using
one of them needs it. `headway export RUN OUT` (or `headway.integrations.export.export`) writes a
HuggingFace folder that loads without headway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headway.lazy import lazy_exports

_EXPORTS: dict[str, str] = {name: "headway.integrations.hf" for name in (
    "use_fused_loss", "fit_vocab", "ObjectiveCollator", "CausalityCallback", "register", "HeadwayConfig",
    "HeadwayForCausalLM", "HeadwayForMaskedLM")}
__all__ = ["use_fused_loss", "fit_vocab", "ObjectiveCollator", "CausalityCallback", "register", "HeadwayConfig",
           "HeadwayForCausalLM", "HeadwayForMaskedLM"]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)


if TYPE_CHECKING:
    from headway.integrations.hf import (
        CausalityCallback,
        HeadwayConfig,
        HeadwayForCausalLM,
        HeadwayForMaskedLM,
        ObjectiveCollator,
        fit_vocab,
        register,
        use_fused_loss,
    )

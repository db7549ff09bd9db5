"""headway: train language models with any objective on any backbone, without the N×V logits.

Everything a training script needs, under one import path each:

    import headway as hw

    tok = hw.ByteTokenizer()                                   # or hw.BPETokenizer.train(texts, 8192)
    vocab = hw.vocab_for(tok, "clm:0.5,fim:0.5", 256)          # the tokenizer's ids, then headway's specials
    objective = hw.build_objective("clm:0.5,fim:0.5", vocab, (tok.encode, tok.decode))
    model = hw.build_model(vocab)                              # hw.RECIPE: what `headway train` trains
    opt = hw.make_optimizer(model)                             # Muon + AdamW
    for batch in hw.batches(docs, objective, 256, 16, vocab.pad):
        loss = model(batch)                                    # fused LM head: never the N×V logits
        loss.backward(); opt.step(); opt.zero_grad()

Names are imported on first use, so `import headway` stays cheap and the HuggingFace helpers
(`use_fused_loss`, `fit_vocab`, `ObjectiveCollator`, `CausalityCallback`) need `transformers` only
when used. The documentation (docs/ in the repository) explains the concepts, every objective and
the API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headway.constants import IGNORE_INDEX
from headway.lazy import lazy_exports

__version__ = "0.2.0"

# name -> the module that defines it (the one import path users need is `headway.<name>`)
_EXPORTS: dict[str, str] = {
    # contracts
    "Vocab": "headway.types", "Example": "headway.types", "Batch": "headway.types", "Objective": "headway.types",
    "Backbone": "headway.types",
    # tokenizers and data
    "ByteTokenizer": "headway.data.tokenizer", "BPETokenizer": "headway.data.tokenizer",
    "load_tokenizer": "headway.data.tokenizer",
    "Packer": "headway.data.packing", "examples_from_documents": "headway.data.packing",
    "chunks": "headway.data.packing",
    "collate": "headway.data.collate", "batches": "headway.data.in_memory", "Loader": "headway.data.loader",
    # objectives
    "build_objective": "headway.objectives", "vocab_for": "headway.objectives", "CLM": "headway.objectives",
    "MLM": "headway.objectives", "PrefixLM": "headway.objectives", "FIM": "headway.objectives",
    "SpanCorruption": "headway.objectives", "Mixture": "headway.objectives", "ul2": "headway.objectives",
    "ul2r": "headway.objectives", "ul2_decoder": "headway.objectives", "MaskedDiffusion": "headway.objectives",
    # models and training
    "build_model": "headway.models", "LanguageModel": "headway.models", "make_optimizer": "headway.train.optim",
    "Recipe": "headway.recipe", "RECIPE": "headway.recipe", "TrainConfig": "headway.train.config",
    # the causality check
    "check_causal": "headway.check",
    # the loss
    "linear_cross_entropy": "headway.loss", "token_logprobs": "headway.loss", "LossOptions": "headway.loss",
    "distillation_loss": "headway.loss",
    "vocab_parallel_linear_cross_entropy": "headway.loss.vocab_parallel",
    # HuggingFace (needs the `hf` extra)
    "use_fused_loss": "headway.integrations.hf", "fit_vocab": "headway.integrations.hf",
    "ObjectiveCollator": "headway.integrations.hf", "CausalityCallback": "headway.integrations.hf",
}

__all__ = ["IGNORE_INDEX", "__version__", "Vocab", "Example", "Batch", "Objective", "Backbone", "ByteTokenizer",
           "BPETokenizer", "load_tokenizer", "Packer", "examples_from_documents", "chunks", "collate", "batches",
           "Loader", "build_objective", "vocab_for", "CLM", "MLM", "PrefixLM", "FIM", "SpanCorruption", "Mixture",
           "ul2", "ul2r", "ul2_decoder", "MaskedDiffusion", "build_model", "LanguageModel", "make_optimizer", "Recipe",
           "RECIPE", "TrainConfig", "check_causal", "linear_cross_entropy", "token_logprobs", "LossOptions",
           "distillation_loss", "vocab_parallel_linear_cross_entropy"]
# the HuggingFace helpers (`hw.use_fused_loss`, `hw.fit_vocab`, `hw.ObjectiveCollator`, `hw.CausalityCallback`) are
# attributes but not in __all__, so `from headway import *` never imports transformers
HF_NAMES = ("use_fused_loss", "fit_vocab", "ObjectiveCollator", "CausalityCallback")


_SUBPACKAGES = ("check", "data", "heads", "integrations", "loss", "masks", "models", "objectives", "recipe", "testing",
                "train", "types")


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, _SUBPACKAGES)


if TYPE_CHECKING:  # what type checkers and IDEs see (the names above, imported eagerly)
    from headway.check import check_causal
    from headway.data.collate import collate
    from headway.data.in_memory import batches
    from headway.data.loader import Loader
    from headway.data.packing import Packer, chunks, examples_from_documents
    from headway.data.tokenizer import BPETokenizer, ByteTokenizer, load_tokenizer
    from headway.integrations.hf import CausalityCallback, ObjectiveCollator, fit_vocab, use_fused_loss  # noqa: F401
    from headway.loss import LossOptions, distillation_loss, linear_cross_entropy, token_logprobs
    from headway.loss.vocab_parallel import vocab_parallel_linear_cross_entropy
    from headway.models import LanguageModel, build_model
    from headway.objectives import (
        CLM,
        FIM,
        MLM,
        MaskedDiffusion,
        Mixture,
        PrefixLM,
        SpanCorruption,
        build_objective,
        ul2,
        ul2_decoder,
        ul2r,
        vocab_for,
    )
    from headway.recipe import RECIPE, Recipe
    from headway.train.config import TrainConfig
    from headway.train.optim import make_optimizer
    from headway.types import Backbone, Batch, Example, Objective, Vocab

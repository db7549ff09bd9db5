"""The tuned recipe: the one place the defaults of `headway train` and of the library come from.

`headway train` with no flags, `TrainConfig()`, `build_model(vocab)` and `make_optimizer(model)` all
read `RECIPE`, so the library trains what the command line trains on the same machine:

    recipe = headway.Recipe()             # == headway.RECIPE
    model = headway.build_model(vocab)    # recipe.backbone, recipe.size, ReLU², QK-norm, zero-init
    opt = headway.make_optimizer(model)   # recipe.optimizer (Muon + AdamW), recipe.lr, recipe.weight_decay
    lr = recipe.lr_at(step, total)        # linear warmup, then cosine decay to lr * min_lr_ratio

How each value was chosen is in the documentation's benchmark pages (docs/benchmarks/).
This module imports nothing heavy (no torch), so the CLI can read it at start-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Recipe", "RECIPE", "lr_schedule"]


def lr_schedule(step: int, total: int | None, lr: float, warmup: int, min_lr_ratio: float, *,
                progress: float | None = None) -> float:
    """The learning rate at optimizer step `step` (0-based): linear warmup to `lr` over `warmup` steps,
    then cosine decay to `lr * min_lr_ratio`,

        lr_t = lr * (r + (1 - r) * (1 + cos(pi * p)) / 2),   r = min_lr_ratio,

    where p, the fraction of the run done, is `(step - warmup) / (total - warmup)` on a run of `total`
    steps, or `progress` when given (a time budget: the fraction of its seconds after the warmup spent, so the
    decay follows the clock and never jumps when the machine's speed changes). p is clipped to [0, 1]."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if progress is None:
        if total is None:
            raise ValueError("lr_schedule: give `total` (the run's steps) or `progress` (the fraction done)")
        progress = (step - warmup) / max(1, total - warmup)
    frac = min(1.0, max(0.0, progress))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


@dataclass(frozen=True)
class Recipe:
    """The settings `headway train` uses by default, measured at equal wall time on a 2-core CPU.

    objective: the objective spec (`build_objective`), 50% CLM + 50% FIM.
    backbone, size: the model (`build_model`): a transformer of hidden size 64 and 3 layers. `headway
        train` takes this size on a machine that cannot train a larger one well within its budget, and
        a larger one where it can (`--size auto`, `headway.train.autosize`).
    activation, qk_norm, zero_init: the transformer's recipe (ReLU² MLP, RMS-normalized queries and
        keys, zero-initialized output projections); the gated SSM takes its own defaults.
    seq_len, batch_size: rows of 256 tokens, 16 rows per optimizer step.
    optimizer: "muon" (Muon on the backbone's 2-D weights, AdamW for the rest) or "adamw".
    lr, warmup, min_lr_ratio: peak learning rate, warmup steps, cosine floor (`lr_at`).
    embedding_lr_scale, embedding_weight_decay: the token embedding and LM head matrices (AdamW) step
        at lr × embedding_lr_scale with weight decay embedding_weight_decay (None: weight_decay's).
        Both are the plain values (1×, the same decay): 10× without decay won two fixed-step
        screens but lost one seed of three by 0.17 bits/byte at the default run's budget.
    weight_decay, grad_clip: the matrices' weight decay (not norms or biases; the embedding's and
        head's unless embedding_weight_decay is set); gradient-norm clipping.
    tokenizer, vocab_size: a byte-level BPE of 8192 ids, trained on the training split.
    packing: "bfd" (best-fit decreasing) or "concat" (concat-and-split).
    """

    objective: str = "clm:0.5,fim:0.5"
    backbone: str = "transformer"
    size: str = "64x3"
    activation: str = "relu2"
    qk_norm: bool = True
    zero_init: bool = True
    seq_len: int = 256
    batch_size: int = 16
    optimizer: str = "muon"
    lr: float = 6e-3
    warmup: int = 50
    min_lr_ratio: float = 0.1
    embedding_lr_scale: float = 1.0
    embedding_weight_decay: float | None = None
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    tokenizer: str = "bpe"
    vocab_size: int = 8192
    packing: str = "bfd"

    def lr_at(self, step: int, total: int) -> float:
        """This recipe's learning rate at optimizer step `step` of `total` (see `lr_schedule`)."""
        return lr_schedule(step, total, self.lr, self.warmup, self.min_lr_ratio)

    def autocast(self, device: object = "cpu") -> object:
        """The autocast context `headway train --precision auto` trains under on `device`: bf16 on a
        GPU that supports it and on a CPU with AVX512-BF16 or AMX (`HEADWAY_FAST_BF16=1/0` forces the
        choice), else none (float32). `with RECIPE.autocast(): loss = model(batch)` then trains as the
        CLI does on the same machine."""
        import torch

        from headway.train.device import autocast_for, resolve_precision

        dev = torch.device(device)  # type: ignore[arg-type]
        return autocast_for(resolve_precision("auto", dev), dev)

    def model_options(self, names: tuple[str, ...] = ("activation", "qk_norm", "zero_init")) -> dict[str, object]:
        """This recipe's values of the backbone options `names` (those a backbone's registration
        declares, `BackboneSpec.options`; by default the transformer's activation, QK-norm and zero-init)."""
        return {n: getattr(self, n) for n in names}


RECIPE = Recipe()
"""The recipe `headway train` and the library's defaults use (`Recipe()`)."""

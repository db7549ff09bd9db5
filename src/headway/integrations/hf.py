"""HuggingFace integration (extra `hf`): fused loss for HF causal LMs, headway models as Auto
classes, and objectives as Trainer collators.

    use_fused_loss(model)            # HF causal LM: training loss from hidden states, no logits
    register()                       # AutoConfig / AutoModelForCausalLM / AutoModelForMaskedLM know "headway"
    ObjectiveCollator(objective, pad_id)  # headway objectives feeding `Trainer`
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
    TrainerCallback,
)
from transformers.modeling_outputs import CausalLMOutputWithPast, MaskedLMOutput

from headway.constants import IGNORE_INDEX
from headway.data.packing import chunks
from headway.loss import LossOptions, linear_cross_entropy
from headway.loss.options import merge_options
from headway.models import build_model
from headway.models.lm import check_token_ids
from headway.models.registry import get_backbone
from headway.recipe import RECIPE
from headway.types import Batch, Objective, Vocab

# logits = lm_head(h) * factor: (config attribute, whether the model divides by it)
LOGIT_SCALES = (("logit_scale", False), ("lm_head_multiplier", False), ("logits_scaling", True))
SUPPORTED = ("decoder-only causal LMs whose logits are `lm_head(final hidden states)` (nn.Linear, with or without "
             "bias), optionally times config.logit_scale / config.lm_head_multiplier, divided by "
             "config.logits_scaling, or soft-capped by config.final_logit_softcapping")


def _logit_scale(cfg: Any) -> float:
    scale = 1.0
    for attr, divide in LOGIT_SCALES:
        v = getattr(cfg, attr, None)
        if v is not None and not isinstance(v, bool) and isinstance(v, (int, float)):
            scale = scale / v if divide else scale * v
    return scale


def use_fused_loss(model: PreTrainedModel, *, options: LossOptions | None = None, z_loss: float = 0.0,
                   chunk_size: int | None = None) -> PreTrainedModel:
    """Make a HF causal LM compute its training loss with `linear_cross_entropy` from the final
    hidden states, never building the logits. Honours `num_items_in_batch` (as `Trainer` passes it)
    and aligned `shift_labels`; `labels` keep HF's meaning (shifted inside). Calls without labels
    (evaluation of logits, `generate`) run the original forward unchanged. Output scales
    (`logit_scale`, `lm_head_multiplier`, `logits_scaling`) and Gemma-2/3's final-logit soft-capping
    are applied.

    options: the loss's `LossOptions` (z-loss, label smoothing, ignore index, chunk size, backend);
    `z_loss` and `chunk_size` are a shortcut for them (given with `options`, a value other than the
    default must equal the option's, else ValueError naming both). The softcap is the model's own
    (config.final_logit_softcapping): `options.softcap` may be left None or equal it, and is refused
    otherwise, since the loss would no longer be that of the model's logits.

    Supported: decoder-only causal LMs whose logits are `lm_head(final hidden states)` (nn.Linear,
    with or without bias), optionally times config.logit_scale / config.lm_head_multiplier, divided
    by config.logits_scaling, or soft-capped by config.final_logit_softcapping. Before wrapping, the
    reconstruction is verified on a short random input against the model's own logits; any model
    where they differ (a transform between the hidden states and the head as in BERT's MLM heads, an
    encoder-decoder, another output scaling) is refused with a ValueError instead of training on a
    different loss. `model.forward` is patched in place and the same model is returned; the output
    head is read at every call, so `resize_token_embeddings` (or `fit_vocab`) may come before or after."""
    name = type(model).__name__
    cfg = model.config
    if getattr(cfg, "is_encoder_decoder", False):
        raise ValueError(f"use_fused_loss: {name} is an encoder-decoder model; supported: {SUPPORTED}")
    base = getattr(model, model.base_model_prefix, None)
    head = model.get_output_embeddings()
    if base is None or not isinstance(head, nn.Linear):
        raise ValueError(f"use_fused_loss: {name} has no base model + nn.Linear output head "
                         f"(got {type(head).__name__}); supported: {SUPPORTED}")
    merge_options("use_fused_loss", options, z_loss=z_loss, chunk_size=chunk_size)  # refuses disagreeing keywords
    opts = LossOptions(z_loss=z_loss, chunk_size=chunk_size) if options is None else options
    softcap = getattr(cfg, "final_logit_softcapping", None)
    if opts.softcap is not None and opts.softcap != softcap:
        raise ValueError(f"use_fused_loss: options.softcap={opts.softcap!r}, but {name}'s logits are "
                         + ("not soft-capped" if softcap is None else f"soft-capped at {softcap!r}")
                         + " (config.final_logit_softcapping); leave options.softcap None to use the model's own")
    opts = opts.replace(softcap=None if softcap is None else float(softcap))
    scale = _logit_scale(cfg)
    original = model.forward

    def hidden_states(input_ids: Tensor | None, attention_mask: Tensor | None, kw: dict) -> Any:
        out = base(input_ids=input_ids, attention_mask=attention_mask, **kw)
        return out, (out[0] if scale == 1.0 else out[0] * scale)  # (B, S, H); a logit scale scales h

    _verify(model, original, head, lambda ids: hidden_states(ids, None, {})[1], softcap)

    def forward(input_ids: Tensor | None = None, attention_mask: Tensor | None = None, labels: Tensor | None = None,
                shift_labels: Tensor | None = None, num_items_in_batch: Tensor | int | None = None,
                **kw: Any) -> CausalLMOutputWithPast:
        if labels is None and shift_labels is None:
            return original(input_ids=input_ids, attention_mask=attention_mask, **kw)
        kw.pop("logits_to_keep", None)
        kw.pop("return_dict", None)
        head = model.get_output_embeddings()  # looked up per call: resize_token_embeddings replaces the module
        if input_ids is not None:
            check_token_ids(input_ids, model.get_input_embeddings().weight.shape[0], name, "input_ids")
        y = shift_labels if shift_labels is not None else labels
        check_labels(y, head.weight.shape[0], name, opts.ignore_index)
        out, h = hidden_states(input_ids, attention_mask, kw)
        aligned = shift_labels is not None
        y = shift_labels if aligned else labels
        loss = linear_cross_entropy(h, head.weight, y.to(h.device), bias=head.bias, shift=not aligned,
                                    num_items_in_batch=num_items_in_batch, options=opts)
        return CausalLMOutputWithPast(loss=loss, logits=None, past_key_values=getattr(out, "past_key_values", None),
                                      hidden_states=getattr(out, "hidden_states", None))

    model.forward = forward  # type: ignore[method-assign]
    return model


def check_labels(labels: Tensor, size: int, who: str, ignore_index: int = IGNORE_INDEX) -> None:
    """A ValueError unless every label is `ignore_index` or in [0, size) (the head's rows)."""
    if torch.compiler.is_compiling():
        return
    check_token_ids(torch.where(labels == ignore_index, 0, labels), size, who, "labels")  # no data-dependent shape


def fit_vocab(model: PreTrainedModel, vocab: Vocab, resize: bool = True) -> PreTrainedModel:
    """Make a HF model take every id of `vocab` (the ids headway's objectives emit: the tokenizer's base
    vocabulary, then <eos>, <pad>, <mask>, FIM and sentinel tokens). A model with fewer embedding rows
    than `vocab.size` is resized with `resize_token_embeddings(vocab.size)` (new rows initialized by
    transformers), or refused with a ValueError when `resize` is False; a larger one is kept as it is.
    Use it with `ObjectiveCollator` (before or after `use_fused_loss`, which reads the head per call)."""
    rows = model.get_input_embeddings().weight.shape[0]
    if rows < vocab.size:
        if not resize:
            raise ValueError(f"fit_vocab: {type(model).__name__} has {rows} embedding rows, the Vocab has {vocab.size} "
                             f"ids (base {vocab.base_size} + {vocab.special_size} specials); pass resize=True")
        model.resize_token_embeddings(vocab.size)
    return model


@torch.no_grad()
def _verify(model: PreTrainedModel, original: Any, head: nn.Linear, hidden: Any, softcap: float | None) -> None:
    """Refuse the fused loss unless `head(hidden) (+ softcap)` reproduces the model's own logits."""
    name = type(model).__name__
    was_training = model.training
    model.eval()
    try:
        V = head.weight.shape[0]
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, V, (1, 7), generator=g).to(head.weight.device)
        try:
            want = original(input_ids=ids).logits
            z = head(hidden(ids))
        except Exception as e:  # noqa: BLE001 - any failure means the structure is not the supported one
            raise ValueError(f"use_fused_loss: {name} does not fit ({type(e).__name__}: {e}); "
                             f"supported: {SUPPORTED}") from None
        if softcap is not None:
            z = softcap * torch.tanh(z / softcap)
        if want is None or want.shape != z.shape or not torch.allclose(z.float(), want.float(), rtol=1e-3, atol=1e-4):
            diff = float("nan") if want is None or want.shape != z.shape else float((z - want).abs().max())
            raise ValueError(f"use_fused_loss: {name}'s logits are not lm_head(final hidden states) (max difference "
                             f"{diff:.3g}), so the fused loss would differ from its own; supported: {SUPPORTED}")
    finally:
        model.train(was_training)


LEGACY_RECIPE: dict[str, Any] = {"activation": "gelu", "qk_norm": False, "zero_init": False}
"""The transformer recipe of a `HeadwayConfig` saved before it carried one (no `activation` key): the
plain one (GELU, no QK-norm, no zero-init) that 0.1.0 built, so such folders keep loading as they were."""


class HeadwayConfig(PretrainedConfig):
    """The HF config of a headway `LanguageModel` (`model_type = "headway"`), every field plain JSON:

    the base vocabulary size and sentinel count of its `Vocab`; the backbone ("transformer" |
    "gated_ssm" | any registered name), the size preset, `bidirectional` (the gated SSM's backward
    branch); the transformer's recipe `activation` ("gelu" | "relu2"), `qk_norm`, `zero_init`
    (defaults: `headway.RECIPE`'s, what `headway train` trains; other backbones ignore them); and
    the head's loss options (`headway.LossOptions`' fields, the backend as `loss_impl`): the loss
    per token is ``(1 - ε)·(lse - z_y) + ε·(lse - mean z) + z_loss·lse²`` over logits soft-capped at
    `softcap` (None: none), with ε = `label_smoothing`; `ignore_index` labels count for nothing.

    A config saved before the recipe fields existed (a dict without `activation`) loads with
    `LEGACY_RECIPE`, the plain GELU transformer it was built with."""

    model_type = "headway"

    def __init__(self, base_vocab_size: int = 256, num_sentinels: int = 100, backbone: str = "transformer",
                 size: str = "small", bidirectional: bool = False, z_loss: float = 0.0,
                 tie_word_embeddings: bool = True, activation: str = RECIPE.activation, qk_norm: bool = RECIPE.qk_norm,
                 zero_init: bool = RECIPE.zero_init, label_smoothing: float = 0.0, softcap: float | None = None,
                 ignore_index: int = IGNORE_INDEX, chunk_size: int | None = None, loss_impl: str = "auto",
                 **kw: Any) -> None:
        self.base_vocab_size, self.num_sentinels = base_vocab_size, num_sentinels
        self.backbone, self.size, self.bidirectional = backbone, size, bidirectional
        self.activation, self.qk_norm, self.zero_init = activation, qk_norm, zero_init
        opts = LossOptions(label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap, ignore_index=ignore_index,
                           chunk_size=chunk_size, impl=loss_impl)  # checked here: a bad value names its field
        self.z_loss, self.label_smoothing, self.softcap = opts.z_loss, opts.label_smoothing, opts.softcap
        self.ignore_index, self.chunk_size, self.loss_impl = opts.ignore_index, opts.chunk_size, opts.impl
        self.vocab_size = Vocab(base_vocab_size, num_sentinels=num_sentinels).size
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kw)

    def loss_options(self) -> LossOptions:
        """The head's `LossOptions` from the loss fields."""
        return LossOptions(label_smoothing=self.label_smoothing, z_loss=self.z_loss, softcap=self.softcap,
                           ignore_index=self.ignore_index, chunk_size=self.chunk_size, impl=self.loss_impl)

    def recipe(self) -> dict[str, Any]:
        """The transformer recipe (`build_model`'s activation / qk_norm / zero_init) for a backbone that
        declares them; {} for one that does not (the gated SSM)."""
        from headway.models.registry import get_backbone

        declared = get_backbone(self.backbone).options
        return {k: getattr(self, k) for k in LEGACY_RECIPE if k in declared}

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        """As `PretrainedConfig.from_dict`; a dict saved without the recipe fields gets `LEGACY_RECIPE`."""
        return super().from_dict(_with_legacy_recipe(config_dict), **kwargs)

    @classmethod
    def from_json_file(cls, json_file: Any) -> Any:
        """As `PretrainedConfig.from_json_file`; a file without the recipe fields gets `LEGACY_RECIPE`."""
        return cls(**_with_legacy_recipe(cls._dict_from_json_file(json_file)))


def _with_legacy_recipe(d: dict[str, Any]) -> dict[str, Any]:
    """`d`, with `LEGACY_RECIPE` under it when it predates the recipe fields (no `activation` key)."""
    return d if "activation" in d else {**LEGACY_RECIPE, **d}


class _HeadwayPreTrained(PreTrainedModel):
    config_class = HeadwayConfig
    base_model_prefix = "lm"
    _tied_weights_keys = {"lm.head.table.weights.base": "lm.embedding.weights.base",
                          "lm.head.table.weights.special": "lm.embedding.weights.special"}

    def __init__(self, config: HeadwayConfig) -> None:
        super().__init__(config)
        vocab = Vocab(config.base_vocab_size, num_sentinels=config.num_sentinels)
        self.lm = build_model(vocab, config.backbone, config.size, bidirectional=config.bidirectional,
                              loss=config.loss_options(), **config.recipe())
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:  # headway modules initialize themselves
        pass

    def get_input_embeddings(self) -> nn.Module:
        return self.lm.embedding

    def _loss_and_hidden(self, input_ids: Tensor, labels: Tensor | None, shift_labels: Tensor | None,
                         num_items_in_batch: Any, shift: bool,
                         batch: Batch | None = None) -> tuple[Tensor | None, Tensor]:
        h = self.lm.hidden(input_ids, batch)
        loss = None
        if labels is not None or shift_labels is not None:
            y = shift_labels if shift_labels is not None else labels
            loss = self.lm.head(h, y, num_items_in_batch=num_items_in_batch, shift=shift and shift_labels is None)
        return loss, h


class HeadwayForCausalLM(_HeadwayPreTrained, GenerationMixin):
    """A headway `LanguageModel` as a HF causal LM (`from_pretrained`, `generate`, `Trainer`).
    `labels` follow HF (shifted inside); the loss uses the fused head, and logits are only built
    when no labels are given."""

    def __init__(self, config: HeadwayConfig) -> None:
        super().__init__(config)
        self.generation_config.use_cache = False  # generation recomputes the prefix (no HF cache)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None,
                shift_labels: Tensor | None = None, num_items_in_batch: Any = None,
                **kw: Any) -> CausalLMOutputWithPast:
        if attention_mask is not None and bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
            raise ValueError("HeadwayForCausalLM: only right padding is supported (a causal model never sees it)")
        loss, h = self._loss_and_hidden(input_ids, labels, shift_labels, num_items_in_batch, shift=True)
        logits = None if loss is not None else self.lm.head.logits(h, kw.get("logits_to_keep", 0) or 0)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids: Tensor, **kw: Any) -> dict:
        return {"input_ids": input_ids}


def bidirectional_batch(input_ids: Tensor, attention_mask: Tensor | None) -> Batch:
    """A `Batch` whose one document per row (the positions where `attention_mask` is 1) attends
    bidirectionally and never to padding: prefix = the whole document (the mask spec of MLM)."""
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.device).long()
    if tuple(mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"`attention_mask` must have the shape of input_ids {tuple(input_ids.shape)}, "
                         f"got {tuple(mask.shape)}")
    doc = torch.where(mask > 0, 0, -1)
    pos = (mask.cumsum(1) - 1).clamp(min=0) * (mask > 0)
    return Batch(input_ids, torch.full_like(input_ids, IGNORE_INDEX), pos, doc, mask.sum(1, keepdim=True))


class HeadwayForMaskedLM(_HeadwayPreTrained):
    """A bidirectional headway model for MLM (labels aligned, not shifted): every position sees the
    whole row except padding (`attention_mask` 0); a gated-SSM backbone is built with its backward
    branch."""

    def __init__(self, config: HeadwayConfig) -> None:
        spec = get_backbone(config.backbone)
        if not spec.follows_mask:  # no mask to make it see both sides: its direction is in its weights
            if not spec.bidirectional:
                raise ValueError(f"HeadwayForMaskedLM: the {config.backbone} backbone is causal only (no mask, no "
                                 "bidirectional form); use a backbone that follows the mask spec")
            config.bidirectional = True
        super().__init__(config)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None,
                num_items_in_batch: Any = None, **kw: Any) -> MaskedLMOutput:
        batch = bidirectional_batch(input_ids, attention_mask)
        loss, h = self._loss_and_hidden(input_ids, labels, None, num_items_in_batch, shift=False, batch=batch)
        return MaskedLMOutput(loss=loss, logits=None if loss is not None else self.lm.head.logits(h))


class CausalityCallback(TrainerCallback):
    """A `Trainer` callback that refuses to start training a model that is not causal — the guard
    `headway train` runs before a left-to-right objective, for HF models: a shifted-label loss on a
    model whose outputs see later tokens teaches it to copy (the BiGS thesis bug).

        Trainer(model, args, ..., callbacks=[CausalityCallback()])

    Keyword arguments go to `check_causal` (lengths, detectors, modes, packed, ...)."""

    def __init__(self, **check_kw: Any) -> None:
        self.check_kw = {"lengths": (16, 17), **check_kw}
        self.report = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        from headway.check import check_causal

        self.report = check_causal(model, **self.check_kw)
        if not self.report.ok:
            raise ValueError(f"CausalityCallback: refusing to train {type(model).__name__} with a causal LM loss: "
                             f"{self.report}")


_registered = False


def register() -> None:
    """Register `headway` with AutoConfig, AutoModelForCausalLM and AutoModelForMaskedLM (idempotent)."""
    global _registered
    if _registered:
        return
    AutoConfig.register("headway", HeadwayConfig)
    AutoModelForCausalLM.register(HeadwayConfig, HeadwayForCausalLM)
    AutoModelForMaskedLM.register(HeadwayConfig, HeadwayForMaskedLM)
    _registered = True


class ObjectiveCollator:
    """Turns features with `input_ids` (one document each) into a HF batch through a headway
    objective: one example per row, right-padded. Emits `input_ids`, `attention_mask`, aligned
    `shift_labels`, and `labels` in HF's unshifted form (``labels[..., 1:] == shift_labels[..., :-1]``)
    so `Trainer` counts `num_items_in_batch` correctly. Only causal layouts (prefix 0) make sense for
    HF causal LMs; an example with a bidirectional prefix is refused unless `allow_prefix`.

    `max_length`: the longest row. A document longer than `objective.max_tokens(max_length)` tokens is
    refused (`overflow="error"`, the default: cut documents into pieces first, e.g. with `chunks`), or
    with `overflow="truncate"` only its first piece is used (cut between characters) and the rest is
    dropped. Without `max_length` a row is as long as its longest document needs."""

    def __init__(self, objective: Objective, pad_id: int, max_length: int | None = None, seed: int = 0,
                 allow_prefix: bool = False, starts_char: np.ndarray | None = None, overflow: str = "error") -> None:
        if overflow not in ("error", "truncate"):
            raise ValueError(f"ObjectiveCollator: `overflow` must be 'error' or 'truncate', got {overflow!r}")
        if max_length is not None and (not isinstance(max_length, int) or objective.max_tokens(max_length) < 1):
            raise ValueError(f"ObjectiveCollator: `max_length` must be an int whose rows hold at least one document "
                             f"token of {objective.name!r}, got {max_length!r}")
        self.objective, self.pad_id, self.max_length, self.overflow = objective, pad_id, max_length, overflow
        self.starts_char = starts_char  # a tokenizer's `starts_char()`: truncate at character boundaries
        self.rng = np.random.default_rng(seed)
        self.allow_prefix = allow_prefix

    def __call__(self, features: Sequence[dict]) -> dict[str, Tensor]:
        exs = []
        for f in features:
            toks = np.asarray(f["input_ids"], dtype=np.int64)
            limit = None if self.max_length is None else self.objective.max_tokens(self.max_length)
            if limit is not None and len(toks) > limit and self.overflow == "error":
                raise ValueError(f"ObjectiveCollator: a document of {len(toks)} tokens does not fit max_length="
                                 f"{self.max_length} (at most {limit} document tokens with {self.objective.name!r}); "
                                 "cut documents into pieces first (headway.data.packing.chunks), or pass "
                                 "overflow='truncate' to keep only the first piece")
            if limit is not None and len(toks) > limit:  # overflow="truncate": the first piece, cut between characters
                boundary = getattr(self.objective, "is_character_boundary", None) if self.starts_char is None else None
                toks = next(chunks(toks, limit, self.starts_char, boundary))
            ex = self.objective(toks, self.rng)
            if ex.loss_weights is not None:
                raise ValueError(f"ObjectiveCollator: objective {self.objective.name!r} weights its tokens "
                                 "(Example.loss_weights, e.g. masked diffusion's 1/t), which a HF model's loss cannot "
                                 "take; train it with headway (LanguageModel / headway train)")
            if ex.prefix_length > 1 and not self.allow_prefix:
                raise ValueError(f"ObjectiveCollator: objective {self.objective.name!r} made a bidirectional prefix, "
                                 "which a HF causal LM cannot attend to; use a causal objective or allow_prefix=True")
            exs.append(ex)
        S = max(len(e) for e in exs) + 1  # one spare column so the unshifted labels hold every target
        ids = torch.full((len(exs), S), self.pad_id, dtype=torch.long)
        aligned = torch.full((len(exs), S), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(exs), S), dtype=torch.long)
        for i, e in enumerate(exs):
            n = len(e)
            ids[i, :n], aligned[i, :n], mask[i, :n] = torch.from_numpy(e.input_ids), torch.from_numpy(e.labels), 1
        unshifted = torch.full_like(aligned, IGNORE_INDEX)
        unshifted[:, 1:] = aligned[:, :-1]
        return {"input_ids": ids, "attention_mask": mask, "labels": unshifted, "shift_labels": aligned}

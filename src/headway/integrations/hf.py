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
)
from transformers.modeling_outputs import CausalLMOutputWithPast, MaskedLMOutput

from headway.constants import IGNORE_INDEX
from headway.data.packing import chunks
from headway.data.vocab import Vocab
from headway.loss import linear_cross_entropy
from headway.models import build_model
from headway.objectives.base import Objective

UNSUPPORTED_SCALING = ("logit_scale", "logits_scaling", "output_multiplier_scale")


def use_fused_loss(model: PreTrainedModel, *, z_loss: float = 0.0, chunk_size: int | None = None) -> PreTrainedModel:
    """Make a HF causal LM compute its training loss with `linear_cross_entropy` from the final
    hidden states, never building the logits. Honours `num_items_in_batch` (as `Trainer` passes it)
    and aligned `shift_labels`; `labels` keep HF's meaning (shifted inside). Calls without labels
    (evaluation of logits, `generate`) run the original forward unchanged. Gemma-2/3's final-logit
    soft-capping is applied. Returns the same model object."""
    cfg = model.config
    for attr in UNSUPPORTED_SCALING:
        if getattr(cfg, attr, None) not in (None, 1, 1.0):
            raise ValueError(f"use_fused_loss: {type(model).__name__} scales its logits by config.{attr}; "
                             "not supported")
    base = getattr(model, model.base_model_prefix)
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"use_fused_loss: expected an nn.Linear output head, got {type(head).__name__}")
    softcap = getattr(cfg, "final_logit_softcapping", None)
    original = model.forward

    def forward(input_ids: Tensor | None = None, attention_mask: Tensor | None = None, labels: Tensor | None = None,
                shift_labels: Tensor | None = None, num_items_in_batch: Tensor | int | None = None,
                **kw: Any) -> CausalLMOutputWithPast:
        if labels is None and shift_labels is None:
            return original(input_ids=input_ids, attention_mask=attention_mask, **kw)
        kw.pop("logits_to_keep", None)
        kw.pop("return_dict", None)
        out = base(input_ids=input_ids, attention_mask=attention_mask, **kw)
        h = out[0]  # (B, S, H)
        aligned = shift_labels is not None
        y = shift_labels if aligned else labels
        loss = linear_cross_entropy(h, head.weight, y.to(h.device), bias=head.bias, shift=not aligned,
                                    softcap=softcap, z_loss=z_loss, num_items_in_batch=num_items_in_batch,
                                    chunk_size=chunk_size)
        return CausalLMOutputWithPast(loss=loss, logits=None, past_key_values=getattr(out, "past_key_values", None),
                                      hidden_states=getattr(out, "hidden_states", None))

    model.forward = forward  # type: ignore[method-assign]
    model._headway_fused_loss = True
    return model


class HeadwayConfig(PretrainedConfig):
    model_type = "headway"

    def __init__(self, base_vocab_size: int = 256, num_sentinels: int = 100, backbone: str = "transformer",
                 size: str = "small", bidirectional: bool = False, z_loss: float = 0.0,
                 tie_word_embeddings: bool = True, **kw: Any) -> None:
        self.base_vocab_size, self.num_sentinels = base_vocab_size, num_sentinels
        self.backbone, self.size, self.bidirectional, self.z_loss = backbone, size, bidirectional, z_loss
        self.vocab_size = Vocab(base_vocab_size, num_sentinels=num_sentinels).size
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kw)


class _HeadwayPreTrained(PreTrainedModel):
    config_class = HeadwayConfig
    base_model_prefix = "lm"
    _tied_weights_keys = {"lm.head.table.weights.base": "lm.embedding.weights.base",
                          "lm.head.table.weights.special": "lm.embedding.weights.special"}

    def __init__(self, config: HeadwayConfig) -> None:
        super().__init__(config)
        vocab = Vocab(config.base_vocab_size, num_sentinels=config.num_sentinels)
        self.lm = build_model(vocab, config.backbone, config.size, bidirectional=config.bidirectional,
                              z_loss=config.z_loss)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:  # headway modules initialize themselves
        pass

    def get_input_embeddings(self) -> nn.Module:
        return self.lm.embedding

    def _loss_and_hidden(self, input_ids: Tensor, labels: Tensor | None, shift_labels: Tensor | None,
                         num_items_in_batch: Any, shift: bool) -> tuple[Tensor | None, Tensor]:
        h = self.lm.hidden(input_ids)
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


class HeadwayForMaskedLM(_HeadwayPreTrained):
    """A bidirectional headway model for MLM (labels aligned, not shifted)."""

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None,
                num_items_in_batch: Any = None, **kw: Any) -> MaskedLMOutput:
        loss, h = self._loss_and_hidden(input_ids, labels, None, num_items_in_batch, shift=False)
        return MaskedLMOutput(loss=loss, logits=None if loss is not None else self.lm.head.logits(h))


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
    HF causal LMs; an example with a bidirectional prefix is refused unless `allow_prefix`."""

    def __init__(self, objective: Objective, pad_id: int, max_length: int | None = None, seed: int = 0,
                 allow_prefix: bool = False, starts_char: np.ndarray | None = None) -> None:
        self.objective, self.pad_id, self.max_length = objective, pad_id, max_length
        self.starts_char = starts_char  # a tokenizer's `starts_char()`: truncate at character boundaries
        self.rng = np.random.default_rng(seed)
        self.allow_prefix = allow_prefix

    def __call__(self, features: Sequence[dict]) -> dict[str, Tensor]:
        exs = []
        for f in features:
            toks = np.asarray(f["input_ids"], dtype=np.int64)
            if self.max_length is not None:
                toks = next(chunks(toks, self.objective.max_tokens(self.max_length), self.starts_char), toks)
            ex = self.objective(toks, self.rng)
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

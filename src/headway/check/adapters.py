"""One interface over every kind of model the causality check accepts.

A `Probe` runs the model on a (B, S) layout of rows — optionally packed with several documents
per row — and returns per-position outputs (B, S, D):

- `vectors(x, docs)`: from input vectors x (B, S, H) (float64 for the gradient detector);
  None when the model only takes token ids.
- `ids(ids, docs)`: from token ids (B, S); None when the model only takes vectors.

`docs` (B, S) numbers the documents of each row (None: one document per row). Headway models get
it as a `Batch` mask spec; HF models as `position_ids` restarting at 0 in every document (HF-style
packing, which `transformers` turns into a block-diagonal mask). A plain callable cannot express
packing. `module` is the nn.Module whose submodules are hooked to find the first leaking one.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from headway.types import Batch

Run = Callable[[Tensor, Tensor | None], Tensor]


@dataclass
class Probe:
    name: str
    module: nn.Module | None
    vocab_size: int | None  # for random token ids (black-box on ids)
    hidden_size: int | None  # for random input vectors
    vectors: Run | None
    ids: Run | None
    packing: bool  # whether `docs` can be expressed
    clone: Callable[[torch.dtype | None], Probe] | None = None  # the same probe on a copy (in a dtype)

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are (inputs are drawn on the CPU and moved there)."""
        if self.module is not None:
            for p in self.module.parameters():
                return p.device
        return torch.device("cpu")

    def train(self, mode: bool) -> None:
        if self.module is not None:
            self.module.train(mode)


def _cloner(model: object, remake: Callable[[object], Probe]) -> Callable[[torch.dtype | None], Probe]:
    """`clone(dtype)`: the same kind of probe on a deep copy of the module (in `dtype`); a plain
    function is not copied."""

    def clone(dtype: torch.dtype | None) -> Probe:
        if not isinstance(model, nn.Module):
            return remake(model)
        m = copy.deepcopy(model)
        return remake(m if dtype is None else m.to(dtype))

    return clone


def _batch(docs: Tensor | None, B: int, S: int, device: torch.device) -> Batch | None:
    """A headway `Batch` mask spec: one causal document per row, or the given packing."""
    if docs is None:
        return None
    pos = torch.zeros_like(docs)
    for b in range(B):
        for d in docs[b].unique():
            sel = docs[b] == d
            pos[b, sel] = torch.arange(int(sel.sum()), device=device)
    zeros = torch.zeros(B, S, dtype=torch.long, device=device)
    D = int(docs.max()) + 1
    return Batch(zeros, zeros, pos, docs, torch.zeros(B, D, dtype=torch.long, device=device))


def _hidden_size(m: nn.Module) -> int | None:
    for obj in (getattr(m, "config", None), m):
        for attr in ("hidden_size", "d_model", "n_embd"):
            v = getattr(obj, attr, None)
            if isinstance(v, int):
                return v
    return None


def headway_probe(model: nn.Module, hidden_size: int | None = None) -> Probe:
    """A headway `LanguageModel` (ids through its embedding; vectors into its backbone) or a bare
    backbone `f(x, batch)` (vectors only)."""
    backbone = getattr(model, "backbone", model)
    H = hidden_size or _hidden_size(backbone)
    if H is None:
        raise ValueError(f"check_causal: cannot tell the hidden size of {type(backbone).__name__}; pass hidden_size=")
    lm = model if hasattr(model, "embedding") and hasattr(model, "backbone") else None

    def vectors(x: Tensor, docs: Tensor | None) -> Tensor:
        return backbone(x, _batch(docs, x.shape[0], x.shape[1], x.device))

    def ids(t: Tensor, docs: Tensor | None) -> Tensor:
        assert lm is not None
        return lm.hidden(t, _batch(docs, t.shape[0], t.shape[1], t.device))

    vocab = None
    if lm is not None:
        emb = lm.embedding
        vocab = getattr(emb, "num_embeddings", None)

    return Probe(type(model).__name__, model, vocab, H, vectors, ids if lm is not None else None, True,
                 _cloner(model, lambda m: headway_probe(m, H)))


def hf_probe(model: nn.Module) -> Probe:
    """A transformers `PreTrainedModel`: vectors through `inputs_embeds`, ids through `input_ids`;
    packing as `position_ids` restarting per document (no attention_mask). Outputs: the logits
    (or the last hidden state for a base model)."""
    cfg = model.config
    V = getattr(cfg, "vocab_size", None) or getattr(getattr(cfg, "text_config", None), "vocab_size", None)
    H = model.get_input_embeddings().weight.shape[1] if model.get_input_embeddings() is not None else None

    def positions(docs: Tensor | None, B: int, S: int, device: torch.device) -> Tensor:
        b = _batch(docs, B, S, device)
        return torch.arange(S, device=device).expand(B, S) if b is None else b.position_ids

    def out(o) -> Tensor:  # noqa: ANN001
        t = getattr(o, "logits", None)
        if t is None:
            t = getattr(o, "last_hidden_state", None)
        return o[0] if t is None else t

    def vectors(x: Tensor, docs: Tensor | None) -> Tensor:
        return out(model(inputs_embeds=x, position_ids=positions(docs, x.shape[0], x.shape[1], x.device),
                         use_cache=False))

    def ids(t: Tensor, docs: Tensor | None) -> Tensor:
        return out(model(input_ids=t, position_ids=positions(docs, t.shape[0], t.shape[1], t.device),
                         use_cache=False))

    return Probe(type(model).__name__, model, V, H, vectors, ids, True, _cloner(model, hf_probe))


def callable_probe(fn: Callable[[Tensor], Tensor], vocab_size: int) -> Probe:
    """Any callable ids (B, S) -> logits or hidden (B, S, D): black-box only, no packing."""
    module = fn if isinstance(fn, nn.Module) else None

    def ids(t: Tensor, docs: Tensor | None) -> Tensor:
        o = fn(t)
        return getattr(o, "logits", o) if not isinstance(o, Tensor) else o

    return Probe(getattr(fn, "__name__", type(fn).__name__), module, vocab_size, None, None, ids, False,
                 _cloner(module or fn, lambda m: callable_probe(m, vocab_size)))


def vector_probe(fn: Callable[[Tensor], Tensor], hidden_size: int) -> Probe:
    """Any callable (or module) x (B, S, H) -> (B, S, D): both detectors, no packing."""
    module = fn if isinstance(fn, nn.Module) else None

    def vectors(x: Tensor, docs: Tensor | None) -> Tensor:
        o = fn(x)
        return o[0] if isinstance(o, tuple) else o

    return Probe(getattr(fn, "__name__", type(fn).__name__), module, None, hidden_size, vectors, None, False,
                 _cloner(module or fn, lambda m: vector_probe(m, hidden_size)))


def make_probe(model: object, vocab_size: int | None = None, hidden_size: int | None = None,
               takes: str = "auto") -> Probe:
    """The probe for `model`: a headway model or backbone, a transformers model, or a callable
    taking token ids (`takes="ids"`, needs `vocab_size`) or vectors (`takes="vectors"`, needs
    `hidden_size`; "auto" picks by which of the two is given)."""
    if isinstance(model, Probe):
        return model
    hf = sys.modules.get("transformers")  # a transformers model exists only once transformers is imported (2 s)
    if hf is not None and isinstance(model, hf.PreTrainedModel):
        return hf_probe(model)  # type: ignore[arg-type]
    if isinstance(model, nn.Module) and (hasattr(model, "backbone") or hasattr(model, "layers")
                                         and hasattr(model, "causal")):
        return headway_probe(model, hidden_size)
    if callable(model):
        if takes == "vectors" or (takes == "auto" and vocab_size is None and hidden_size is not None):
            if hidden_size is None:
                raise ValueError("check_causal: a callable on vectors needs hidden_size= (to draw random inputs)")
            return vector_probe(model, hidden_size)  # type: ignore[arg-type]
        if vocab_size is None:
            raise ValueError("check_causal: a callable needs vocab_size= (it takes token ids) or hidden_size= "
                             "(it takes vectors)")
        return callable_probe(model, vocab_size)  # type: ignore[arg-type]
    raise ValueError(f"check_causal: cannot check a {type(model).__name__}; give a headway model or backbone, a "
                     "transformers PreTrainedModel, or a callable ids -> logits")

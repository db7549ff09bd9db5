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
    """The width a module states: `config.hidden_size` / `d_model` / `n_embd`, or the same attribute
    on the module itself; None when it states none."""
    for obj in (getattr(m, "config", None), m):
        for attr in ("hidden_size", "d_model", "n_embd"):
            v = getattr(obj, attr, None)
            if isinstance(v, int) and not isinstance(v, bool):
                return v
    return None


def _int_attr(m: object, *names: str) -> int | None:
    for n in names:
        v = getattr(m, n, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def embedding_sizes(emb: nn.Module) -> tuple[int | None, int | None]:
    """(vocabulary size, hidden size) that a token embedding tells, each None when it cannot tell.

    Hidden size: an `embedding_dim` / `hidden_size` attribute (`nn.Embedding`, `SplitEmbedding`),
    else the width of what the embedding returns for token id 0 (run once in eval mode without
    gradients, so factorized or scaled embeddings give the width the backbone receives), else the
    common width of its 2-D weights. Vocabulary size: a `num_embeddings` attribute, else the rows of
    its 2-D weights of that width summed (one table, or a split into several tables), else the
    `num_embeddings` of its only `nn.Embedding` (a factorized embedding: a table, then a projection).
    """
    H = _int_attr(emb, "embedding_dim", "hidden_size")
    tables = [p for p in emb.parameters() if p.dim() == 2]
    if H is None:
        H = _output_width(emb)
    if H is None and tables and len({p.shape[1] for p in tables}) == 1:
        H = int(tables[0].shape[1])
    V = _int_attr(emb, "num_embeddings")
    if V is None and H is not None:
        rows = [int(p.shape[0]) for p in tables if p.shape[1] == H]
        V = sum(rows) if rows else None
    tables_in = [m for m in emb.modules() if isinstance(m, nn.Embedding)]
    if V is None and len(tables_in) == 1:
        V = tables_in[0].num_embeddings
    return V, H


def _output_width(emb: nn.Module) -> int | None:
    """The last dimension of `emb(id 0)`, or None when the embedding cannot run on it; the module's
    train/eval flags are restored."""
    device = next((p.device for p in emb.parameters()), torch.device("cpu"))
    flags = [(m, m.training) for m in emb.modules()]
    try:
        emb.eval()
        with torch.no_grad():
            out = emb(torch.zeros(1, 1, dtype=torch.long, device=device))
    except Exception:  # noqa: BLE001 - an embedding that needs more than ids tells nothing this way
        return None
    finally:
        for m, f in flags:
            m.training = f
    return int(out.shape[-1]) if isinstance(out, Tensor) and out.dim() == 3 else None


def _agree(arg: str, given: int | None, told: int | None, source: str) -> int | None:
    """The size the model tells, else the one given; a clear error when both exist and differ."""
    if given is not None and told is not None and given != told:
        raise ValueError(f"check_causal: {arg}={given} but {source} says {told}; leave {arg} out or pass {told}")
    return told if told is not None else given


def headway_probe(model: nn.Module, hidden_size: int | None = None, vocab_size: int | None = None) -> Probe:
    """A headway `LanguageModel` (ids through its embedding; vectors into its backbone) or a bare
    backbone `f(x, batch)` (vectors only).

    The hidden size comes from the model: a `LanguageModel`'s embedding (`embedding_sizes`), else
    the backbone's `hidden_size` / `d_model` / `n_embd` (or its config's); `hidden_size` is used only
    when the model tells nothing, and must agree with what it tells. The vocabulary size likewise
    from the embedding, else `vocab_size`; when neither tells it, the black-box detector feeds
    random vectors into the backbone instead of random token ids.
    """
    backbone = getattr(model, "backbone", model)
    lm = model if hasattr(model, "embedding") and hasattr(model, "backbone") else None
    V_told, H_told = embedding_sizes(lm.embedding) if lm is not None else (None, None)
    emb_source = f"the model's embedding ({type(lm.embedding).__name__})" if lm is not None else ""
    source = emb_source
    if H_told is None:
        H_told, source = _hidden_size(backbone), f"the backbone ({type(backbone).__name__})"
    H = _agree("hidden_size", hidden_size, H_told, source)
    if H is None:
        what = "its embedding tells no width and its backbone" if lm is not None else "it has no embedding and"
        raise ValueError(f"check_causal: cannot tell the hidden size of {type(model).__name__}: {what} has no "
                         "`hidden_size` / `d_model` / `n_embd` attribute or config; pass hidden_size=")
    V = _agree("vocab_size", vocab_size, V_told, emb_source) if lm is not None else None

    def vectors(x: Tensor, docs: Tensor | None) -> Tensor:
        return backbone(x, _batch(docs, x.shape[0], x.shape[1], x.device))

    def ids(t: Tensor, docs: Tensor | None) -> Tensor:
        assert lm is not None
        return lm.hidden(t, _batch(docs, t.shape[0], t.shape[1], t.device))

    return Probe(type(model).__name__, model, V, H, vectors, ids if V is not None else None, True,
                 _cloner(model, lambda m: headway_probe(m, H, V)))


def mtp_probe(model: nn.Module, depth: int) -> Probe:
    """A headway `LanguageModel`'s multi-token prediction depth `depth` (k): its normalized hidden
    states (B, S, H) from input vectors (the token embeddings: into the backbone, and shifted by k
    into depth k, `LanguageModel.mtp_hidden`) or from token ids; packed rows as a `Batch` mask spec.
    Check it with an allowed offset of k (`check_causal(..., mtp_depth=k)` does)."""
    mtp = getattr(model, "mtp", None)
    if mtp is None or not hasattr(model, "mtp_hidden"):
        raise ValueError(f"check_causal: mtp_depth={depth} needs a headway LanguageModel with multi-token prediction "
                         f"modules; {type(model).__name__} has none")
    if not 1 <= depth <= len(mtp.depths):
        raise ValueError(f"check_causal: mtp_depth must be in [1, {len(mtp.depths)}] (the model's depths), got {depth}")
    V, H = embedding_sizes(model.embedding)

    def vectors(x: Tensor, docs: Tensor | None) -> Tensor:
        return model.mtp_hidden(x, _batch(docs, x.shape[0], x.shape[1], x.device))[depth - 1]

    def ids(t: Tensor, docs: Tensor | None) -> Tensor:
        return vectors(model.embedding(t), docs)

    return Probe(f"{type(model).__name__} MTP depth {depth}", model, V, H, vectors, ids if V is not None else None,
                 True, _cloner(model, lambda m: mtp_probe(m, depth)))


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
    for arg, v in (("vocab_size", vocab_size), ("hidden_size", hidden_size)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"check_causal: {arg} must be a positive integer, got {v!r}")
    hf = sys.modules.get("transformers")  # a transformers model exists only once transformers is imported (2 s)
    if hf is not None and isinstance(model, hf.PreTrainedModel):
        return hf_probe(model)  # type: ignore[arg-type]
    if isinstance(model, nn.Module) and (hasattr(model, "backbone") or hasattr(model, "layers")
                                         and hasattr(model, "causal")):
        return headway_probe(model, hidden_size, vocab_size)
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

"""transformers architectures as headway backbones: ``--backbone hf:NAME`` or ``hf:PATH``.

``hf:llama``, ``hf:qwen2``, ``hf:mistral``, ``hf:gpt_neox``, ``hf:gemma2``, ``hf:mamba2``, ... (any
transformers ``model_type`` whose base model takes ``inputs_embeds``) builds that architecture's
base model from its default config with the run's size: ``--size HxLxHEADS`` sets the hidden size H,
the layers L and the attention heads; every width the architecture derives from H is scaled from its
defaults by H / H_default (MLP width, key-value heads by the same head ratio, an SSM's state size,
at least 16), and ``head_dim = H / HEADS``. ``hf:PATH`` (a ``config.json`` or a folder holding one)
takes the architecture exactly as written there, ``--size`` aside.

headway keeps its own parts around the base model: the split embedding feeds ``inputs_embeds`` (the
base model's own embedding table is dropped), and the fused head computes the loss from the final
hidden states, so the logits never exist. Packed rows keep documents apart: position ids restart in
every document and attention takes the mask spec as a 4-D mask (``(B, 1, S, S)``, True = attend;
transformers passes a 4-D mask through unchanged), which also gives prefix-LM and MLM their
bidirectional prefixes. An architecture without attention (Mamba, Mamba2, RWKV, ...) carries state
across a whole row and has no per-document reset in its CPU kernels: it trains one document per row
and cannot take a bidirectional prefix (MLM is refused by name).

Export is native: `export_native` writes the architecture's own ``*ForCausalLM`` folder, which
``AutoModelForCausalLM.from_pretrained`` loads without remote code.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from headway.masks import sdpa_mask
from headway.models.registry import BackboneSpec, BuildRequest, register_family
from headway.types import Batch

TESTED = ("llama", "qwen2", "mistral", "gpt_neox", "gemma2", "mamba2")
"""Architectures the test suite trains, resumes, checks and exports."""

_NO_ATTENTION = ("mamba", "mamba2", "falcon_mamba", "rwkv", "xlstm")


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ValueError("hf: backbones need transformers (`pip install 'headway[hf]'`)") from None
    return transformers


def names_a_file(name: str) -> bool:
    """Whether ``hf:NAME`` names a config.json or a folder (taken as written) rather than a model_type
    (scaled by ``--size``)."""
    p = Path(name).expanduser()
    return p.is_dir() or p.suffix == ".json" or "/" in name or name.startswith(".")


def _base_config(name: str) -> tuple[Any, bool]:
    """(config, from_a_file): a model_type's defaults, or the config.json at a path."""
    tf = _transformers()
    p = Path(name).expanduser()
    if names_a_file(name):
        file = p / "config.json" if p.is_dir() else p
        if not file.is_file():
            raise ValueError(f"expected a transformers model_type (e.g. {', '.join(TESTED)}) or a config.json / a "
                             f"folder holding one, got {name!r} (no such file: {file})")
        mt = json.loads(file.read_text()).get("model_type")
        if mt not in tf.CONFIG_MAPPING:
            raise ValueError(f"{file} names no model_type transformers knows (got {mt!r})")
        return tf.CONFIG_MAPPING[mt].from_json_file(str(file)), True  # its own decoding (inf, nested configs)
    try:
        return tf.AutoConfig.for_model(name), False
    except ValueError:
        import difflib

        known = sorted(tf.CONFIG_MAPPING.keys())
        near = difflib.get_close_matches(name, known, n=3)
        raise ValueError(f"expected a transformers model_type such as {', '.join(TESTED)}"
                         + (f" (closest: {', '.join(near)})" if near else "") + f", got {name!r}") from None


def scaled_config(name: str, hidden: int, layers: int, heads: int) -> Any:
    """The architecture `name`'s config at hidden size `hidden`, `layers` layers and `heads` heads
    (see the module docstring for what is scaled); a config file's architecture is taken as is."""
    cfg, from_file = _base_config(name)
    if not from_file:
        h0 = cfg.hidden_size
        r = hidden / h0
        kv0, nh0 = getattr(cfg, "num_key_value_heads", None), getattr(cfg, "num_attention_heads", None)
        hd0 = h0 // nh0 if nh0 else None
        _set(cfg, "hidden_size", hidden)
        _set(cfg, "num_hidden_layers", layers)
        types = getattr(cfg, "layer_types", None)
        if isinstance(types, list) and types:  # the per-layer pattern (e.g. sliding / full), repeated to L
            _set(cfg, "layer_types", [types[i % len(types)] for i in range(layers)])
        if nh0 is not None:
            _set(cfg, "num_attention_heads", heads)
            if kv0:
                kv = max(1, round(heads * kv0 / nh0))
                while heads % kv:
                    kv -= 1
                _set(cfg, "num_key_value_heads", kv)
            if hidden % heads:
                raise Refused(f"--size: hidden size {hidden} must split into {heads} heads")
            if hasattr(cfg, "head_dim"):
                _set(cfg, "head_dim", hidden // heads)
            rot = getattr(cfg, "rotary_dim", None)
            if isinstance(rot, int) and hd0:  # a partial rotary width: the same fraction of the new heads
                _set(cfg, "rotary_dim", max(2, 2 * round(rot * (hidden // heads) / hd0 / 2)))
        if getattr(cfg, "intermediate_size", None):
            _set(cfg, "intermediate_size", max(1, round(cfg.intermediate_size * r)))
        if cfg.model_type == "mamba2":  # num_heads * head_dim = expand * hidden
            cfg.num_heads, cfg.n_groups = heads, 1
            if (cfg.expand * hidden) % heads:
                raise Refused(f"--size: mamba2 needs expand ({cfg.expand}) x hidden ({hidden}) divisible by the "
                                 f"heads ({heads})")
            cfg.head_dim = cfg.expand * hidden // heads
        if getattr(cfg, "state_size", None):
            _set(cfg, "state_size", max(16, round(cfg.state_size * r)))
        if hasattr(cfg, "time_step_rank") and isinstance(cfg.time_step_rank, int):
            _set(cfg, "time_step_rank", math.ceil(hidden / 16))
    cfg.vocab_size = 1  # the base model's own embedding is dropped: headway's split embedding feeds it
    for k in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if hasattr(cfg, k):
            setattr(cfg, k, None)
    cfg.use_cache = False
    validate = getattr(cfg, "validate", None)
    if callable(validate):  # the architecture's own consistency rules (e.g. one attention type per layer)
        validate()
    return cfg


def _set(cfg: Any, name: str, value: Any) -> None:
    """Set a config field, unless the architecture derives it (a read-only property)."""
    try:
        setattr(cfg, name, value)
    except AttributeError:
        pass


def has_attention(cfg: Any) -> bool:
    """Whether every token mixer of the architecture is attention (then a 4-D mask keeps packed
    documents apart). Known state-space models are not; others are probed (`_keeps_documents_apart`)."""
    return cfg.model_type not in _NO_ATTENTION


class Refused(ValueError):
    """Why an architecture cannot run as a headway backbone (raised when its name is resolved)."""


@torch.no_grad()
def _keeps_documents_apart(name: str) -> bool:
    """Build a tiny instance (hidden 32, 2 layers, 2 heads; its embedding verified, see `HFBackbone`),
    run it on one document as training does, then on a row packing two documents: equal outputs for
    the second document (float32) mean the mask spec reaches every token mixer. Hybrids whose
    recurrent layers carry state across the row (Falcon-H1, MiniMax, ...) fail it, as do state-space
    models. Whatever transformers raises on the way is a `Refused` naming the architecture."""
    try:
        cfg = scaled_config(name, 32, 2, 2)
        torch.manual_seed(0)
        body = HFBackbone(cfg, verify=True).eval()
        x = torch.randn(1, 12, 32)
        zeros = torch.zeros(1, 7, dtype=torch.long)
        alone = body(x[:, 5:], Batch(zeros, zeros, torch.arange(7)[None], zeros, torch.zeros(1, 1, dtype=torch.long)))
        if not has_attention(cfg):
            return False
        doc = torch.tensor([[0] * 5 + [1] * 7])
        pos = torch.cat([torch.arange(5), torch.arange(7)])[None]
        zeros = torch.zeros(1, 12, dtype=torch.long)
        packed = body(x, Batch(zeros, zeros, pos, doc, torch.zeros(1, 2, dtype=torch.long)))[:, 5:]
        return bool(torch.allclose(packed, alone, rtol=1e-4, atol=1e-5))
    except Refused:
        raise
    except Exception as e:  # noqa: BLE001 - whatever transformers raises: the architecture does not run here
        raise Refused(f"{name} does not run as a headway backbone: a tiny instance fed inputs_embeds failed "
                      f"({type(e).__name__}: {e})") from None


class HFCache:
    """Generation state: the base model's own cache (a transformers `Cache`) and the positions so far."""

    def __init__(self) -> None:
        self.state: Any = None
        self.length = 0


class HFBackbone(nn.Module):
    """(B, S, H) -> (B, S, H) through a transformers base model fed `inputs_embeds`. With a `Batch`,
    position ids restart per document and attention follows the mask spec (a 4-D mask); an
    architecture without attention takes one causal document per row (then padding) only."""

    causal = True

    def __init__(self, config: Any, verify: bool = False) -> None:
        super().__init__()
        tf = _transformers()
        self.config = config
        # the attention kernel transformers picks for the architecture (SDPA where it is exact, else eager)
        self.model = tf.AutoModel.from_config(config, dtype=torch.float32)
        self.attention = has_attention(config)
        self.eager = getattr(self.model.config, "_attn_implementation", None) == "eager"
        emb = self.model.get_input_embeddings()
        # an embedding that scales its rows (Gemma's sqrt(H)): the scale moves here, onto inputs_embeds
        self.embed_scale = float(getattr(emb, "scalar_embed_scale", 1.0))
        if verify:  # the base model's output from ids must be its output from (scaled) embedding rows
            ids = torch.zeros(1, 4, dtype=torch.long)
            self.model.eval()  # no dropout between the two passes
            with torch.no_grad():
                want = self.model(input_ids=ids).last_hidden_state
                got = self.model(inputs_embeds=emb.weight[ids] * self.embed_scale).last_hidden_state
            if not torch.allclose(want, got, rtol=1e-4, atol=1e-5):
                raise Refused(f"{config.model_type}'s input embedding does more than a scaled table lookup; "
                                 "headway's split embedding cannot feed it")
        parent, _, leaf = module_path(self.model, emb).rpartition(".")
        setattr(self.model.get_submodule(parent), leaf, None)  # headway's split embedding feeds inputs_embeds
        _layers(self.model)  # fails early on a base model without a list of blocks
        params = inspect.signature(type(self.model).forward).parameters
        self._cache_arg = next((a for a in ("cache", "past_key_values", "cache_params") if a in params), None)
        self._takes_positions = "position_ids" in params

    @property
    def layers(self) -> nn.ModuleList:
        """The base model's blocks (not registered twice: the state dict names them once, under `model.`)."""
        return _layers(self.model)

    @property
    def attention_layers(self) -> int:
        """Layers attending over the whole row (the FLOP count's 12·L·H·S): every layer of an
        attention model, those a hybrid's `layer_types` name as attention, none of a state-space model."""
        types = getattr(self.config, "layer_types", None)
        if isinstance(types, list) and types and all(isinstance(t, str) for t in types):
            return sum("attention" in t for t in types)
        return len(self.layers) if self.attention else 0

    def new_cache(self, batch_size: int) -> HFCache:
        return HFCache()

    def _mask(self, batch: Batch) -> Tensor:
        m = sdpa_mask(batch)  # (B, 1, S, S) bool, True = attend
        if self.eager:  # eager attention adds the mask to the scores
            return torch.zeros(m.shape, dtype=torch.float32, device=m.device).masked_fill(~m, torch.finfo(
                torch.float32).min)
        return m

    def forward(self, x: Tensor, batch: Batch | None = None, cache: HFCache | None = None) -> Tensor:
        B, S, _ = x.shape
        if self.embed_scale != 1.0:
            x = x * torch.tensor(self.embed_scale, dtype=x.dtype)
        kw: dict[str, Any] = {"use_cache": False}
        if batch is not None:
            if self.attention:
                kw["position_ids"] = batch.position_ids
                if not batch.is_one_causal_document_per_row:
                    kw["attention_mask"] = self._mask(batch)
            elif not batch.is_one_document_per_row_then_padding or not batch.is_causal:
                raise ValueError(f"the {self.config.model_type} backbone has no attention: it keeps no document "
                                 "boundaries and no bidirectional prefix; give it one causal document per row "
                                 "(packing='single')")
        elif cache is not None:
            if self._takes_positions:
                kw["position_ids"] = torch.arange(cache.length, cache.length + S, device=x.device).expand(B, S)
            if self._cache_arg is not None:
                if cache.state is None:
                    cache.state = _transformers().DynamicCache(config=self.model.config)
                kw[self._cache_arg] = cache.state
                kw["use_cache"] = True
            else:  # no cache argument: recompute the whole prefix each step
                cache.state = x if cache.state is None else torch.cat([cache.state, x], 1)
                x = cache.state
        out = self.model(inputs_embeds=x, **kw)
        h = out.last_hidden_state
        if cache is not None:
            cache.length += S
            h = h[:, -S:]
        return h


def _layers(model: nn.Module) -> nn.ModuleList:
    """The base model's list of blocks, at any depth (`layers`, `h`, `encoder.layer`, ...): the
    longest `nn.ModuleList` (the causality check hooks them; FSDP wraps them)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise Refused(f"{type(model).__name__} has no list of layers")
    return max(lists, key=len)


def load_init(model: nn.Module, vocab: Any, folder: str) -> None:
    """Start `model` (built from `folder`'s architecture) from the weights of the HF checkpoint in
    `folder`: the base model's weights, the embedding rows of the tokenizer's ids (the base split),
    and the head's rows when it is untied; headway's special rows start at the mean of the
    checkpoint's rows (a common initialization of added tokens)."""
    tf = _transformers()
    hf = tf.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    base = hf.base_model
    emb = base.get_input_embeddings()
    own = {k: v for k, v in base.state_dict().items() if not k.startswith(module_path(base, emb) + ".")}
    missing, unexpected = model.backbone.model.load_state_dict(own, strict=False)
    missing = [k for k in missing if not k.endswith("inv_freq")]
    if missing or unexpected:
        raise ValueError(f"--init {folder}: the checkpoint's weights do not fit its architecture (missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]})")
    with torch.no_grad():
        _copy_rows(model.embedding.weights["base"], model.embedding.weights["special"], emb.weight)
        out = hf.get_output_embeddings()
        if getattr(model.head, "tied", True) is False and out is not None:
            w = model.head.weight
            n = min(vocab.base_size, out.weight.shape[0])
            w[:n] = out.weight[:n]
            w[n:] = out.weight[:n].mean(0)


def _copy_rows(base: Tensor, special: Tensor, table: Tensor) -> None:
    n = min(base.shape[0], table.shape[0])
    base[:n] = table[:n]
    mean = table[:n].mean(0)
    base[n:] = mean
    special[:] = mean


def module_path(root: nn.Module, module: nn.Module) -> str:
    """The dotted path of `module` inside `root` (e.g. "embed_tokens", "embeddings.word_embeddings")."""
    for name, m in root.named_modules():
        if m is module and name:
            return name
    raise Refused(f"{type(root).__name__}: its input embedding is not one of its modules")


def checkpoint_ties_head(folder: str) -> bool:
    """Whether the HF checkpoint in `folder` ties its output head to its input embedding."""
    cfg, _ = _base_config(folder)
    return bool(getattr(cfg, "tie_word_embeddings", True))


def _resolve(name: str) -> BackboneSpec:
    """The spec of ``hf:NAME`` (cached per name and, for a file, its modification time)."""
    p = Path(name).expanduser()
    f = p / "config.json" if p.is_dir() else p
    return _resolve_cached(name, f.stat().st_mtime_ns if f.is_file() else 0)


@functools.lru_cache(maxsize=64)
def _resolve_cached(name: str, stamp: int) -> BackboneSpec:
    cfg, from_file = _base_config(name)  # fails early, with the reason, on an unknown name or file
    if getattr(cfg, "is_encoder_decoder", False):
        raise ValueError(f"{cfg.model_type} is an encoder-decoder; a headway backbone is one stack of layers "
                         "(decoder-only architectures such as llama, qwen2, mistral, gemma2, mamba2)")
    if not isinstance(getattr(cfg, "hidden_size", None), int):
        raise ValueError(f"{cfg.model_type}'s config has no hidden_size (a composite, e.g. multimodal, config); "
                         "name its text model's type instead (e.g. gemma3_text)")
    attention = _keeps_documents_apart(name if not from_file else cfg.model_type)
    softcap = getattr(cfg, "final_logit_softcapping", None)
    for attr, default in (("logit_scale", None), ("lm_head_multiplier", None), ("logits_scaling", None)):
        v = getattr(cfg, attr, default)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v != 1:
            raise ValueError(f"{cfg.model_type} scales its logits by {attr}={v}, which headway's head does not "
                             "apply; it is not supported as a backbone")

    def build(r: BuildRequest) -> HFBackbone:
        if r.bidirectional:
            raise ValueError(f"the {cfg.model_type} backbone cannot be built bidirectional")
        if r.init is not None:
            c = scaled_config(r.init, 0, 0, 0)
        elif from_file:
            c = scaled_config(name, 0, 0, 0)
        else:
            c = scaled_config(name, r.hidden_size, r.num_layers, r.num_heads)
        return HFBackbone(c)

    from headway.integrations.export_hf import export_native  # noqa: PLC0415 - the family's exporter

    extra: dict[str, Any] = {"softcap": softcap, "init": load_init, "export": export_native, "model_type":
                             cfg.model_type}
    if from_file:
        extra["tied"] = bool(getattr(cfg, "tie_word_embeddings", True))
        extra["hidden_size"] = int(cfg.hidden_size)
    return BackboneSpec(name=f"hf:{name}", help=f"transformers {cfg.model_type}", build=build,
                        follows_mask=attention, bidirectional=False, packs_documents=attention, export="native",
                        extra=extra)


register_family("hf", _resolve, "a transformers architecture: a model_type such as " + ", ".join(TESTED)
                + ", or a config.json / folder; --size HxLxHEADS scales its defaults")

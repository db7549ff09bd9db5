"""`headway export RUN OUT_DIR`: a HuggingFace folder that loads without headway installed.

An `hf:` backbone (a transformers architecture) exports natively, as that architecture's own
``*ForCausalLM`` (`headway.integrations.export_hf`): ``AutoModelForCausalLM.from_pretrained(OUT_DIR)``.
headway's own backbones export as remote code:

    AutoModelForCausalLM.from_pretrained(OUT_DIR, trust_remote_code=True)
    AutoTokenizer.from_pretrained(OUT_DIR)

Their folder holds `config.json` (with `auto_map`), `configuration_headway.py` and
`modeling_headway.py` (generated: headway's own backbone source — `models/transformer.py` or
`models/gated_ssm.py` verbatim, its headway imports replaced by stubs for the packed-batch path
a plain HF forward never takes — plus a small `PreTrainedModel` wrapper), `model.safetensors`
(the split embedding joined into one (V, H) table), `tokenizer.json` with the special tokens at
their headway ids, `tokenizer_config.json` and `generation_config.json`.

No native transformers class maps exactly onto headway's transformer (pre-norm RMSNorm, rotary
embedding on interleaved pairs, a non-gated tanh-GELU MLP, no biases, a tied embedding): Llama
and its relatives use a gated SiLU MLP and rotate halves, GPT-NeoX / StableLM / Starcoder2
LayerNorm. So both backbones export as remote code. The rule that makes their source portable,
checked by the export tests: a backbone file's `from headway... import` lines name only what
`STUBS` provides (the packed-batch mask helpers, `Batch`, the registry's `BackboneSpec`,
`BuildRequest` and `register_backbone`), each import on one line.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import shutil
from pathlib import Path
from typing import Any

from torch import nn

STUBS = '''
class Batch:  # headway's packed-batch mask spec: never built by the HF wrappers below
    pass


class WholeRow:
    """The one mask spec the masked-LM wrapper builds: each row one document that every position sees
    whole (both ways), except right padding (attention_mask 0)."""

    is_one_causal_document_per_row = False

    def __init__(self, input_ids, attention_mask=None):
        B, S = input_ids.shape
        self.keys = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        self.position_ids = torch.arange(S, device=input_ids.device).expand(B, S)
        self.is_one_document_per_row = bool(self.keys.all())


def _packed_only(*a, **k):
    raise NotImplementedError("packed batches need headway itself; the exported model runs one sequence per row")


def sdpa_mask(batch):
    if not isinstance(batch, WholeRow):
        _packed_only()
    return batch.keys[:, None, None, :]  # (B, 1, 1, S): every query sees the row's real tokens


segment_starts = _packed_only


class BackboneSpec:  # headway's backbone registry: registration is a no-op outside headway
    def __init__(self, *a, **k):
        pass


BuildRequest = BackboneSpec


def register_backbone(spec):
    return spec
'''

CONFIG_PY = '''"""Configuration of a model exported by headway (`headway export`)."""

from transformers import PretrainedConfig


class HeadwayExportConfig(PretrainedConfig):
    model_type = "headway_export"

    def __init__(self, backbone="transformer", backbone_config=None, vocab_size=256, hidden_size=64,
                 tie_word_embeddings=True, backbone_class="Transformer", backbone_config_class="TransformerConfig",
                 **kw):
        self.backbone, self.backbone_config = backbone, backbone_config or {}
        self.backbone_class, self.backbone_config_class = backbone_class, backbone_config_class
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kw)
'''

WRAPPER = '''

# ---- the HuggingFace wrapper ---------------------------------------------------------------------

from transformers import GenerationMixin, PreTrainedModel  # noqa: E402
from transformers.modeling_outputs import CausalLMOutput, MaskedLMOutput  # noqa: E402

from .configuration_headway import HeadwayExportConfig  # noqa: E402


class HeadwayExportPreTrainedModel(PreTrainedModel):
    """What both exported models share: an embedding (V, H), the headway backbone and the output
    weight W (the embedding when tied, else `lm_head`)."""

    config_class = HeadwayExportConfig
    base_model_prefix = "backbone"
    _no_split_modules = []

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        cfg_cls, body_cls = globals()[config.backbone_config_class], globals()[config.backbone_class]
        self.backbone = body_cls(cfg_cls(**config.backbone_config))
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size,
                                                                          bias=False)

    def _init_weights(self, module):
        pass

    def get_input_embeddings(self):
        return self.embed

    def _logits(self, h):
        """The float32 logits h @ W.T (B, S, V) of the backbone's hidden states h (B, S, H)."""
        w = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return (h @ w.t()).float()


class HeadwayExportForCausalLM(HeadwayExportPreTrainedModel, GenerationMixin):
    """Embedding (V, H) -> headway backbone -> logits = h @ W.T (W: the embedding when tied)."""

    def __init__(self, config):
        super().__init__(config)
        self.generation_config.use_cache = False  # generation recomputes the prefix (no HF cache)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kw):
        logits = self._logits(self.backbone(self.embed(input_ids)))
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                     labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, **kw):
        return {"input_ids": input_ids}


class HeadwayExportForMaskedLM(HeadwayExportPreTrainedModel):
    """A masked-diffusion model: every position sees the whole row (right padding excluded) and the
    logits at a `<mask>` position predict its token. Sampling: unmask step by step (headway's
    `headway.models.diffusion_sampling` does it with low-confidence remasking)."""

    def __init__(self, config):
        super().__init__(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kw):
        x = self.embed(input_ids)
        if getattr(self.config, "follows_mask", True):  # attention: the whole row, both ways
            h = self.backbone(x, WholeRow(input_ids, attention_mask))
        else:  # a backbone whose direction is in its weights (the bidirectional gated SSM)
            if attention_mask is not None and not bool(attention_mask.bool().all()):
                raise NotImplementedError("this backbone reads every position of a row: pass rows without padding")
            h = self.backbone(x)
        logits = self._logits(h)
        loss = None
        if labels is not None:  # aligned labels (not shifted), -100 where no target
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                     ignore_index=-100)
        return MaskedLMOutput(loss=loss, logits=logits)
'''


def _module_source(module: object) -> str:
    """A headway module's source without `from __future__` and `from headway ...` lines."""
    src = inspect.getsource(module)  # type: ignore[arg-type]
    return re.sub(r"^(from __future__ import annotations|from headway\.[\w.]+ import .*)$", "", src, flags=re.M)


def modeling_source(backbone: nn.Module) -> str:
    """The remote code of `backbone`'s class: its module's source (see the module docstring), then
    the wrapper, which builds the class the exported config names."""
    header = ('"""Generated by `headway export` from headway\'s own source: do not edit."""\n\n'
              "from __future__ import annotations\n")
    return header + STUBS + _module_source(inspect.getmodule(type(backbone))) + WRAPPER


def _hf_tokenizer(tok, vocab, out: Path) -> None:  # noqa: ANN001
    """tokenizer.json (+ tokenizer_config.json) with headway's ids: base tokens, then every special
    token of the split vocabulary at base_size + i. An external tokenizer keeps its own added tokens
    but loses its post-processor: `tokenizer(text)` gives exactly the ids headway trained on."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    if hasattr(tok, "tok"):  # a tokenizers.Tokenizer: headway's BPE or an external one
        state = json.loads(tok.tok.to_str())
        state["post_processor"] = None
        hf = Tokenizer.from_str(json.dumps(state))
    else:  # bytes: a byte-level BPE without merges whose ids are the byte values
        from headway.data.tokenizer import _byte_level_alphabet

        chars = {b: c for c, b in _byte_level_alphabet().items()}
        hf = Tokenizer(models.BPE(vocab={chars[b]: b for b in range(256)}, merges=[]))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        hf.decoder = decoders.ByteLevel()
    names = sorted(vocab._ids, key=vocab._ids.get)
    assert hf.get_vocab_size() == vocab.base_size, (hf.get_vocab_size(), vocab.base_size)
    hf.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
    for n in names:
        if hf.token_to_id(n) != vocab.id(n):
            raise ValueError(f"export: special token {n} got id {hf.token_to_id(n)}, headway uses {vocab.id(n)}")
    hf.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<eos>", "pad_token": "<pad>",
        "mask_token": "<mask>", "model_max_length": 1 << 20, "clean_up_tokenization_spaces": False,
        "additional_special_tokens": [n for n in names if n not in ("<eos>", "<pad>", "<mask>")]}, indent=1))


def export(run: str | Path, out: str | Path) -> Path:
    """Write the HF folder for a headway run (or checkpoint) folder; returns `out`. A backbone
    registered with ``export="native"`` (the `hf:` architectures) is written as its own transformers
    class; headway's own backbones as remote code (see the module docstring)."""
    from headway.models.registry import get_backbone
    from headway.objectives import build_objective, is_masked_diffusion
    from headway.train.checkpoint import resolve
    from headway.train.runs import load_run, run_lead

    model, tok, vocab, cfg = load_run(str(run), generating=True)
    objective = build_objective(cfg.objective, vocab)
    masked = is_masked_diffusion(objective) and not objective.trains_left_to_right
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"export: {out} is not empty")
    spec = get_backbone(cfg.backbone)
    if masked and spec.export == "native":
        raise ValueError(f"export: a masked-diffusion model on the {cfg.backbone} backbone would export as its "
                         "transformers *ForCausalLM class, which attends causally; only headway's own backbones "
                         "export as a masked LM")
    out.mkdir(parents=True, exist_ok=True)
    bos = run_lead(cfg, vocab)  # what the objective opens a document with: HF generation starts from it
    if spec.export == "native":
        spec.extra["export"](model, vocab, out, bos)
    else:
        _export_remote_code(model, cfg, vocab, out, bos, masked)
    _hf_tokenizer(tok, vocab, out)
    shutil.copyfile(resolve(Path(run)) / "config.json", out / "headway_train_config.json")  # how it was trained
    return out


def _export_remote_code(model: Any, cfg: Any, vocab: Any, out: Path, bos: int, masked: bool = False) -> None:
    """config.json with `auto_map`, the generated modeling source and model.safetensors; `masked`: a
    masked-diffusion model, written as `HeadwayExportForMaskedLM` (AutoModelForMaskedLM)."""
    from safetensors.torch import save_file

    from headway.models.registry import get_backbone

    body = model.backbone
    sd = {"embed.weight": model.embedding.full_weight().detach().contiguous()}
    sd.update({f"backbone.{k}": v.detach().contiguous() for k, v in body.state_dict().items()})
    tied = getattr(model.head, "tied", True)
    if not tied:
        sd["lm_head.weight"] = model.head.full_weight().detach().contiguous()
    save_file({k: v.clone() for k, v in sd.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["HeadwayExportForCausalLM"], "model_type": "headway_export", "backbone": cfg.backbone,
        "backbone_config": dataclasses.asdict(body.config), "backbone_class": type(body).__name__,
        "backbone_config_class": type(body.config).__name__, "vocab_size": vocab.size,
        "hidden_size": body.config.hidden_size, "tie_word_embeddings": tied, "bos_token_id": bos,
        "eos_token_id": vocab.eos, "pad_token_id": vocab.pad, "torch_dtype": "float32",
        "auto_map": {"AutoConfig": "configuration_headway.HeadwayExportConfig",
                     "AutoModelForCausalLM": "modeling_headway.HeadwayExportForCausalLM"},
    }
    if masked:
        config["architectures"] = ["HeadwayExportForMaskedLM"]
        config["auto_map"] = {"AutoConfig": "configuration_headway.HeadwayExportConfig",
                              "AutoModelForMaskedLM": "modeling_headway.HeadwayExportForMaskedLM"}
        config["follows_mask"] = get_backbone(cfg.backbone).follows_mask
        config["mask_token_id"] = vocab.id("<mask>")
    (out / "config.json").write_text(json.dumps(config, indent=1))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": bos, "eos_token_id": vocab.eos,
                                                            "pad_token_id": vocab.pad, "use_cache": False}, indent=1))
    (out / "configuration_headway.py").write_text(CONFIG_PY)
    (out / "modeling_headway.py").write_text(modeling_source(body))

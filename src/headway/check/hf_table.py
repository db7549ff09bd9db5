"""Every `*ForCausalLM` class of the installed transformers, built from a tiny random config
offline and checked: the table `headway check --all-hf` prints.

A config is the class's own default config with its sizes shrunk (hidden 64, 2 layers, 4 heads,
vocabulary 256, ...), sub-configs (`text_config`, ...) included, and the model is built the way
its users build it (`builds_as_decoder`): a causal-LM class as a decoder, any other class as it
ships. A class whose config or model cannot be built that way is listed as such with the error,
never hidden.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch

SHRINK = {
    "vocab_size": 256, "hidden_size": 64, "n_embd": 64, "d_model": 64, "dim": 64, "embed_dim": 64,
    "intermediate_size": 128, "ffn_dim": 128, "n_inner": 128, "d_ff": 128, "encoder_ffn_dim": 128,
    "decoder_ffn_dim": 128, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32,
    "num_hidden_layers": 2, "n_layer": 2, "num_layers": 2, "n_layers": 2, "decoder_layers": 2, "encoder_layers": 2,
    "num_attention_heads": 4, "n_head": 4, "n_heads": 4, "decoder_attention_heads": 4, "encoder_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 128, "n_positions": 128,
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
    "kv_lora_rank": 16, "q_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
    "rotary_dim": 8, "mamba_n_heads": 4, "mamba_d_head": 32, "mamba_d_ssm": 128, "mamba_d_state": 16,
    "mamba_n_groups": 1, "n_mamba_heads": 4,
}
TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id")


def builds_as_decoder(model_class: type) -> bool:
    """Whether users build `model_class` as a left-to-right decoder, so its tiny config gets
    `is_decoder=True` where the config has that field.

    True for a causal-LM class: a name ending in `ForCausalLM`, or a class that transformers' own
    `AutoModelForCausalLM` table lists (LM-head classes such as `BertLMHeadModel`,
    `GPT2LMHeadModel`) and its `AutoModelForMaskedLM` table does not. False for every other class
    (`*ForMaskedLM`, base models, classifiers, ...): those are checked as they ship, with the
    config's own defaults, so a bidirectional encoder is checked bidirectional.
    """
    name = model_class.__name__
    if name.endswith("ForMaskedLM"):
        return False
    if name.endswith("ForCausalLM"):
        return True
    causal, masked = _auto_table_names()
    return name in causal and name not in masked


def _auto_table_names() -> tuple[set[str], set[str]]:
    """(class names of AutoModelForCausalLM's table, of AutoModelForMaskedLM's table); empty sets
    when this transformers has no such tables."""
    try:
        from transformers.models.auto import modeling_auto
    except ImportError:
        return set(), set()
    out = []
    for table_name in ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_MASKED_LM_MAPPING_NAMES"):
        names: set[str] = set()
        for v in getattr(modeling_auto, table_name, {}).values():
            names.update([v] if isinstance(v, str) else v)
        out.append(names)
    return out[0], out[1]


def tiny_config(model_class: type):  # noqa: ANN201 - a transformers PretrainedConfig
    """`model_class`'s default config (`model_class.config_class()`) with every size in SHRINK
    replaced (also in sub-configs), and `is_decoder=True` where the config has the field and
    `builds_as_decoder(model_class)`."""
    config_class = getattr(model_class, "config_class", None)
    if not isinstance(model_class, type) or config_class is None:
        raise ValueError(f"tiny_config: `model_class` must be a transformers model class with a `config_class`, "
                         f"got {model_class!r}")
    decoder = builds_as_decoder(model_class)
    cfg = config_class()
    _shrink(cfg, decoder)
    for sub in ("text_config", "language_config", "llm_config", "decoder", "decoder_config"):
        c = getattr(cfg, sub, None)
        if c is not None and hasattr(c, "to_dict"):
            _shrink(c, decoder)
    return cfg


def _shrink(cfg, decoder: bool) -> None:  # noqa: ANN001
    for k, v in SHRINK.items():
        if hasattr(cfg, k) and isinstance(getattr(cfg, k), int) and not isinstance(getattr(cfg, k), bool):
            try:
                setattr(cfg, k, v)
            except Exception:  # noqa: BLE001,S110 - a read-only property: keep the default
                pass
    V = getattr(cfg, "vocab_size", None)
    for k in TOKEN_IDS:  # special ids of the full-size vocabulary must fit the tiny one
        v = getattr(cfg, k, None)
        if isinstance(V, int) and isinstance(v, int) and v >= V:
            try:
                setattr(cfg, k, V - 1)
            except Exception:  # noqa: BLE001,S110
                pass
    if decoder and hasattr(cfg, "is_decoder"):
        cfg.is_decoder = True  # encoder families (BERT, RoBERTa, ...) are causal LMs only as decoders
    lt = getattr(cfg, "layer_types", None)
    if isinstance(lt, list) and lt:
        n = getattr(cfg, "num_hidden_layers", len(lt))
        try:
            cfg.layer_types = (lt * n)[:n]
        except Exception:  # noqa: BLE001,S110 - derived from other fields: already consistent
            pass


@dataclass
class Row:
    architecture: str
    verdict: str  # "causal" | "NOT causal" | "leaks across packed documents" | "build failed" | "check failed"
    first_leak: str
    seconds: float


def causal_lm_classes() -> list[str]:
    import transformers

    return sorted(n for n in dir(transformers) if n.endswith("ForCausalLM") and not n.startswith("Auto")
                  and not n.startswith("TF") and not n.startswith("Flax"))


def check_class(name: str, lengths: tuple[int, ...] = (16, 17)) -> Row:
    """Build `name` from a tiny config and check it (both detectors, train and eval, packed)."""
    import transformers

    from headway.check import check_causal

    t0 = time.perf_counter()
    try:
        cls = getattr(transformers, name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            model = cls(tiny_config(cls))
    except Exception as e:  # noqa: BLE001 - reported in the table
        return Row(name, "build failed", f"{type(e).__name__}: {str(e).splitlines()[0][:90]}",
                   time.perf_counter() - t0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rep = check_causal(model, lengths=lengths)
    except Exception as e:  # noqa: BLE001
        return Row(name, "check failed", f"{type(e).__name__}: {str(e).splitlines()[0][:90]}",
                   time.perf_counter() - t0)
    if rep.ok:
        verdict, leak = "causal", ""
    elif rep.findings:
        f = rep.findings[0]
        pair = f"{f.describe(1, more=False)}, " if f.pairs or f.outputs else ""
        packed_only = all(x.kind == "other document" for x in rep.findings)
        verdict = "leaks across packed documents" if packed_only else "NOT causal"
        leak = f"{f.kind}: {pair}{f.detector}/{f.mode}/L={f.length}" + (f" in {f.module}" if f.module else "")
    else:
        verdict, leak = "check failed", "; ".join(rep.skipped)[:120]
    return Row(name, verdict, leak, time.perf_counter() - t0)


def check_class_isolated(name: str, lengths: tuple[int, ...] = (16, 17), timeout: float = 120.0,
                         max_gib: float = 4.0) -> Row:
    """`check_class` in a forked child with a time limit and a memory limit, so one class whose
    tiny config is not tiny (or that hangs) is reported as such instead of stopping the table."""
    import multiprocessing as mp
    import resource

    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def child() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (int(max_gib * 2**30), int(max_gib * 2**30)))
        torch.set_num_threads(1)
        try:
            q.put(check_class(name, lengths))
        except BaseException as e:  # noqa: BLE001 - out of memory and the like
            q.put(Row(name, "check failed", f"{type(e).__name__}: {str(e)[:90]}", 0.0))

    t0 = time.perf_counter()
    p = ctx.Process(target=child, daemon=True)
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        return Row(name, "check failed", f"no result within {timeout:.0f} s", time.perf_counter() - t0)
    try:
        return q.get(timeout=5)
    except Exception:  # noqa: BLE001 - the child died (e.g. killed for memory)
        return Row(name, "check failed", f"the check process died (exit {p.exitcode}; memory limit {max_gib} GiB)",
                   time.perf_counter() - t0)


def table(rows: list[Row]) -> str:
    out = ["| architecture | verdict | first leak | seconds |", "|---|---|---|---:|"]
    out += [f"| {r.architecture} | {r.verdict} | {r.first_leak.replace('|', '/')} | {r.seconds:.1f} |" for r in rows]
    return "\n".join(out)

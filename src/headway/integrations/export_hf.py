"""Native export of an `hf:` backbone: the architecture's own ``*ForCausalLM`` folder.

`headway export` calls `export_native` for a backbone registered with ``export="native"``: the base
model's weights go in unchanged, the split embedding is joined into the one (V, H) input table, the
head is tied to it (or written as ``lm_head`` when untied), and the config takes the vocabulary size
and headway's special ids, so ``AutoModelForCausalLM.from_pretrained(folder)`` loads it without
``trust_remote_code`` and computes the same logits as headway.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from headway.models.hf_backbone import module_path


def export_native(model: Any, vocab: Any, out: Path, bos: int) -> None:
    """Write `model` (a `LanguageModel` over an `HFBackbone`) as the architecture's causal LM in `out`."""
    import transformers

    body = model.backbone
    tied = getattr(model.head, "tied", True)
    cfg = copy.deepcopy(body.config)
    cfg.vocab_size, cfg.tie_word_embeddings, cfg.use_cache = vocab.size, bool(tied), True
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = bos, vocab.eos, vocab.pad
    try:
        hf = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - an architecture without a causal-LM class, or one that rejects the config
        raise ValueError(f"export: transformers cannot build a causal LM of {cfg.model_type} from the run's "
                         f"architecture ({type(e).__name__}: {e})") from None
    with torch.no_grad():
        missing, unexpected = hf.base_model.load_state_dict(body.model.state_dict(), strict=False)
        emb = hf.get_input_embeddings()
        name = module_path(hf.base_model, emb)
        missing = [k for k in missing if not k.startswith(name + ".")]
        if missing or unexpected:
            raise ValueError(f"export: the {cfg.model_type} weights do not fit its causal LM (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
        emb.weight.copy_(model.embedding.full_weight())
        if not tied:
            hf.get_output_embeddings().weight.copy_(model.head.full_weight())
    hf.generation_config = transformers.GenerationConfig(bos_token_id=bos, eos_token_id=vocab.eos,
                                                         pad_token_id=vocab.pad)
    hf.save_pretrained(str(out))

"""transformers architectures as backbones (`hf:NAME`): the same loss as the architecture's own causal
LM, packed documents kept apart, prefixes honoured, the leak check, generation, native export and
starting from a checkpoint (`init`). Tiny random configs, offline, float32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
import transformers  # noqa: E402

from headway.check import check_causal  # noqa: E402
from headway.constants import IGNORE_INDEX  # noqa: E402
from headway.integrations.export_hf import export_native  # noqa: E402
from headway.models import build_model  # noqa: E402
from headway.models.lm import LanguageModel  # noqa: E402
from headway.models.registry import get_backbone  # noqa: E402
from headway.types import Batch, Vocab  # noqa: E402

ATTENTION = ["llama", "qwen2", "mistral", "gpt_neox", "gemma2"]
STATE_SPACE = ["mamba2"]
SIZE = "32x2x2"


REL = 1e-5
"""float32 loss agreement with the architecture's own loss (the contract): the same products and
softmax, summed in another order and chunked, differ by a few float32 roundings (~1e-7 measured)."""


def one_document_per_row(ids: torch.Tensor) -> Batch:
    B, S = ids.shape
    labels = torch.cat([ids[:, 1:], torch.full((B, 1), IGNORE_INDEX)], 1)
    return Batch(ids, labels, torch.arange(S).expand(B, S), torch.zeros(B, S, dtype=torch.long),
                 torch.zeros(B, 1, dtype=torch.long))


def exported_natively(arch: str, vocab: Vocab, folder: Path, length: int) -> tuple[LanguageModel, torch.Tensor,
                                                                                   torch.Tensor, torch.nn.Module]:
    """(model, ids, loss, hf): a tiny `hf:arch` model built after seeding 0 (eval mode), random ids
    (2, length), the model's loss on them (one document per row) and the model exported natively to
    `folder` and loaded back by transformers (float32, eval mode)."""
    torch.manual_seed(0)
    model = build_model(vocab, f"hf:{arch}", SIZE).eval()
    ids = torch.randint(0, vocab.base_size, (2, length))
    with torch.no_grad():
        loss = model(one_document_per_row(ids))
    export_native(model, vocab, folder, bos=vocab.eos)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, ids, loss, hf


@pytest.fixture(scope="module")
def vocab() -> Vocab:
    return Vocab(120, num_sentinels=4)


@pytest.mark.parametrize("arch", ATTENTION + STATE_SPACE)
def test_loss_equals_the_architectures_own_and_native_export_generates_the_same(arch: str, vocab: Vocab,
                                                                                 tmp_path) -> None:  # noqa: ANN001
    model, ids, loss, hf = exported_natively(arch, vocab, tmp_path, 13)
    assert not list(tmp_path.glob("*.py"))  # native: no remote code
    assert type(hf).__module__.startswith("transformers.models.")
    with torch.no_grad():
        want = hf(input_ids=ids, labels=ids).loss
    assert abs(float(loss) - float(want)) <= REL * abs(float(want)), (float(loss), float(want))
    mine = model.generate(ids[0, :5], 6, temperature=0.0)
    theirs = hf.generate(ids[:1, :5], max_new_tokens=6, do_sample=False, attention_mask=torch.ones(1, 5,
                                                                                                    dtype=torch.long))
    assert mine.tolist() == theirs[0, 5:].tolist()


MORE = ["phi3", "qwen3", "gemma3_text", "olmo2", "starcoder2", "gpt2", "mixtral", "recurrent_gemma", "jamba"]


@pytest.mark.parametrize("arch", MORE)
def test_more_architectures_give_their_own_loss(arch: str, vocab: Vocab, tmp_path) -> None:  # noqa: ANN001
    """Beyond the tested set: attention (dense, MoE, sliding window, learned positions), recurrent and
    hybrid architectures, each against its own causal LM on one unpacked batch."""
    _, ids, loss, hf = exported_natively(arch, vocab, tmp_path, 11)
    with torch.no_grad():
        want = hf(input_ids=ids, labels=ids, use_cache=False).loss
    assert abs(float(loss) - float(want)) <= REL * abs(float(want)), (float(loss), float(want))


@pytest.mark.parametrize("arch", ATTENTION)
def test_packed_documents_are_kept_apart_and_prefixes_are_bidirectional(arch: str, vocab: Vocab) -> None:
    torch.manual_seed(0)
    model = build_model(vocab, f"hf:{arch}", SIZE).eval()
    assert get_backbone(f"hf:{arch}").packs_documents
    ids = torch.randint(0, vocab.base_size, (1, 12))
    doc = torch.tensor([[0] * 5 + [1] * 7])
    pos = torch.cat([torch.arange(5), torch.arange(7)])[None]
    packed = Batch(ids, ids, pos, doc, torch.tensor([[0, 3]]))  # the second document: a prefix of 3
    x = model.embedding(ids).detach().requires_grad_(True)
    h = model.backbone(x, packed)
    alone = one_document_per_row(ids[:, 5:])
    alone.prefix_lengths = torch.tensor([[3]])
    torch.testing.assert_close(h[:, 5:], model.backbone(model.embedding(ids[:, 5:]), alone), rtol=1e-4, atol=1e-5)
    (h[0, 5] * torch.randn(h.shape[-1])).sum().backward()  # position 5 sees its prefix, nothing else
    seen = x.grad[0].abs().sum(-1) > 0
    assert seen[5:8].all() and not seen[:5].any() and not seen[8:].any()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mamba2"])
def test_leak_check_passes(arch: str, vocab: Vocab) -> None:
    torch.manual_seed(0)
    model = build_model(vocab, f"hf:{arch}", SIZE)
    spec = get_backbone(f"hf:{arch}")
    rep = check_causal(model, lengths=(9, 16), packed=spec.packs_documents)
    assert rep.ok, str(rep)


def test_a_state_space_model_trains_one_document_per_row(vocab: Vocab) -> None:
    spec = get_backbone("hf:mamba2")
    assert not spec.packs_documents and not spec.follows_mask
    model = build_model(vocab, "hf:mamba2", SIZE)
    ids = torch.randint(0, vocab.base_size, (1, 8))
    packed = Batch(ids, ids, torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]]), torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]]),
                   torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="packing='single'"):
        model(packed)


def test_hybrids_that_carry_state_across_documents_do_not_pack() -> None:
    assert not get_backbone("hf:falcon_h1").packs_documents  # attention + Mamba-2 mixers


@pytest.mark.parametrize("arch,reason", [
    ("t5", "is an encoder-decoder"), ("gemma3", "no hidden_size"), ("cohere", "scales its logits"),
    ("gpt_neo", "does not run as a headway backbone"),  # its per-layer attention types do not scale
])
def test_architectures_that_cannot_run_are_refused_with_the_reason(arch: str, reason: str) -> None:
    with pytest.raises(ValueError, match=f"^--backbone hf:{arch}: .*{reason}"):
        get_backbone(f"hf:{arch}")


def test_unknown_names_and_files_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="--backbone hf:lama.*closest: llama"):
        get_backbone("hf:lama")
    with pytest.raises(ValueError, match="no such file"):
        get_backbone("hf:./nowhere/config.json")


def test_size_scales_the_architecture(vocab: Vocab) -> None:
    model = build_model(vocab, "hf:mistral", "64x3x4")
    c = model.backbone.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.head_dim) == (64, 3, 4, 16)
    assert c.num_key_value_heads == 1  # mistral's 8 of 32 heads
    assert c.intermediate_size == round(14336 * 64 / 4096)


def test_init_starts_from_a_checkpoints_weights(vocab: Vocab, tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=vocab.base_size, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                   tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path)
    spec = get_backbone(f"hf:{tmp_path}")
    assert spec.extra["tied"] is False
    model = build_model(vocab, f"hf:{tmp_path}", tie_head=False, init=str(tmp_path)).eval()
    ids = torch.randint(0, vocab.base_size, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model.logits(ids)[..., :vocab.base_size], hf(input_ids=ids).logits)
    special = model.embedding.weights["special"]
    torch.testing.assert_close(special[0], hf.get_input_embeddings().weight.mean(0))

"""Backbones, generation, and the causality check's positive and negative cases."""

import numpy as np
import pytest
import torch

from headway.check import check_causal
from headway.data.collate import collate
from headway.data.packing import Packer, examples_from_documents
from headway.masks import sdpa_mask
from headway.models import GatedSSM, GatedSSMConfig, Transformer, TransformerConfig, build_model, sample
from headway.models.transformer import rope_table
from headway.objectives import build_objective
from headway.objectives.fim import FIM
from headway.types import Vocab

V = Vocab(base_size=61, num_sentinels=8)


class AllOnesMaskTransformer(Transformer):
    """The classic packing bug: a 2-D all-ones attention mask over the packed row."""

    def forward(self, x, batch=None, cache=None):
        B, S, _ = x.shape
        pos = torch.arange(S).expand(B, S)
        mask = torch.ones(B, 1, S, S, dtype=torch.bool)
        rot = rope_table(pos, self.config.hidden_size // self.config.num_heads, self.config.rope_theta)
        for i, layer in enumerate(self.layers):
            x = layer(x, rot, mask, False, None, i)
        return self.norm(x)


def test_causal_backbones_pass():
    assert check_causal(Transformer(TransformerConfig(32, 2, 2))).ok
    assert check_causal(GatedSSM(GatedSSMConfig(32, 2, num_modes=8))).ok


@pytest.mark.parametrize("net,first_layer", [
    (GatedSSM(GatedSSMConfig(32, 2, num_modes=8, bidirectional=True)), "layers.0"),
    (AllOnesMaskTransformer(TransformerConfig(32, 2, 2)), "layers.0"),
    (GatedSSM(GatedSSMConfig(32, 2, num_modes=8, fft_pad=False)), "layers.0"),
])
def test_leaky_backbones_are_caught_and_located(net, first_layer):
    rep = check_causal(net, packed=False)
    assert not rep.ok and rep.layer.startswith(first_layer)
    assert all(k > t for t, k in rep.leaks)
    assert "NOT causal" in str(rep)


def test_ssm_without_document_reset_would_leak_across_documents():
    net = GatedSSM(GatedSSMConfig(32, 1, num_modes=8))
    assert check_causal(net, packed=True).ok  # segments are cut before the convolution

    class NoReset(GatedSSM):
        def forward(self, x, batch=None, cache=None):
            return super().forward(x, None, cache)  # ignores the packing

    leaky = NoReset(GatedSSMConfig(32, 1, num_modes=8))
    leaky.load_state_dict(net.state_dict())
    rep = check_causal(leaky, packed=True)
    assert not rep.ok and all(k < t for t, k in rep.leaks)  # earlier, but another document


def _batch(spec, S=48, seed=0):
    rng = np.random.default_rng(seed)
    docs = [np.arange(rng.integers(3, 30)) % 61 for _ in range(12)]
    rows = list(Packer(S).pack(examples_from_documents(docs, build_objective(spec, V), S, rng)))
    return collate(rows, S, V.pad)


@pytest.mark.parametrize("backbone", ["transformer", "gated_ssm"])
def test_packed_rows_equal_documents_run_alone(backbone):
    torch.manual_seed(0)
    model = build_model(V, backbone, "tiny", zero_init=False).double()
    b = _batch("prefix_lm" if backbone == "transformer" else "clm")
    h = model.hidden(b.input_ids, b)
    for r in range(2):
        for d in range(int(b.document_ids[r].max()) + 1):
            sel = b.document_ids[r] == d
            alone = b.input_ids[r][sel][None]
            from headway.data.collate import Batch
            one = Batch(alone, alone, torch.arange(alone.shape[1])[None], torch.zeros_like(alone),
                        b.prefix_lengths[r, d : d + 1][None])
            torch.testing.assert_close(model.hidden(alone, one)[0], h[r][sel], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backbone", ["transformer", "gated_ssm"])
def test_rows_of_one_document_then_padding_equal_each_document_alone(backbone):
    # the default run's batches: one document per row, padded at the end; they take the plain causal
    # path, which must give real positions, the loss and every gradient exactly what each row alone gives
    from headway.constants import IGNORE_INDEX
    from headway.types import Example

    torch.manual_seed(0)
    model = build_model(V, backbone, "tiny", zero_init=False).double()
    rng = np.random.default_rng(1)
    docs = [rng.integers(0, 61, n) for n in (48, 17, 30, 1)]
    rows = [[Example(d, np.r_[d[1:], IGNORE_INDEX])] for d in docs]
    b = collate(rows, 48, V.pad)
    assert b.is_one_causal_document_per_row and not b.is_one_document_per_row  # padded, yet the plain path
    model.zero_grad()
    model(b, reduction="sum").backward()
    batched = [p.grad.clone() for p in model.parameters()]
    h = model.hidden(b.input_ids, b)
    model.zero_grad()
    for r, row in enumerate(rows):
        alone = collate([row], len(docs[r]), V.pad)
        torch.testing.assert_close(model.hidden(alone.input_ids, alone)[0], h[r, : len(docs[r])], rtol=1e-9,
                                   atol=1e-9)
        if len(docs[r]) > 1:
            model(alone, reduction="sum").backward()
    for p, g in zip(model.parameters(), batched):
        torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-12)


def test_only_trailing_padding_counts_as_one_document_per_row():
    from headway.types import Batch

    def batch(doc):
        d = torch.tensor(doc)
        return Batch(d.clamp(min=0), d, d.clamp(min=0), d, torch.zeros(len(doc), 1, dtype=torch.long))

    assert batch([[0, 0, -1, -1], [0, 0, 0, 0], [-1, -1, -1, -1]]).is_one_document_per_row_then_padding
    assert not batch([[-1, 0, 0, 0]]).is_one_document_per_row_then_padding  # padding first
    assert not batch([[0, -1, 0, -1]]).is_one_document_per_row_then_padding  # padding inside
    assert not batch([[0, 0, 1, -1]]).is_one_document_per_row_then_padding  # two documents


def test_transformer_prefix_lm_mask_is_used():
    b = _batch("prefix_lm")
    m = sdpa_mask(b)
    assert m.shape == (b.input_ids.shape[0], 1, 48, 48)
    net = Transformer(TransformerConfig(32, 1, 2)).double()
    x = torch.randn(*b.input_ids.shape, 32, dtype=torch.float64, requires_grad=True)
    y = net(x, b)
    # a document with a prefix of >= 2 and a suffix: its first position depends on the second
    # (bidirectional prefix), its first suffix position does not depend on the next one (causal)
    docs = [(r, d) for r in range(b.input_ids.shape[0]) for d in range(int(b.document_ids[r].max()) + 1)
            if 2 <= int(b.prefix_lengths[r, d]) < int((b.document_ids[r] == d).sum()) - 1]
    assert docs, "the batch must hold a document with a bidirectional prefix and causal targets"
    r, d = docs[0]
    start = int((b.document_ids[r] == d).nonzero()[0])
    P = int(b.prefix_lengths[r, d])
    (g,) = torch.autograd.grad(y[r, start].sum(), x, retain_graph=True)
    assert g[r, start + 1].abs().sum() > 0
    (g,) = torch.autograd.grad(y[r, start + P].sum(), x)
    assert g[r, start + P + 1].abs().sum() == 0 and g[r, start + P - 1].abs().sum() > 0


@pytest.mark.parametrize("backbone", ["transformer", "gated_ssm"])
def test_generate_with_cache_equals_full_recompute(backbone):
    torch.manual_seed(1)
    model = build_model(V, backbone, "tiny").double().eval()
    prompt = torch.tensor([3, 4, 5, 6])
    fast = model.generate(prompt, 8, temperature=0)
    ids = prompt.clone()
    for _ in range(8):
        ids = torch.cat([ids, model.logits(ids[None], keep_last=1)[0, -1].argmax()[None]])
    assert torch.equal(fast, ids[4:])


def test_sample_top_k_top_p_and_greedy():
    z = torch.tensor([[0.0, 1.0, 5.0, 2.0]])
    assert sample(z, 0.0, None, None).item() == 2
    g = torch.Generator().manual_seed(0)
    draws = {sample(z, 1.0, 2, None, g).item() for _ in range(200)}
    assert draws == {2, 3}
    draws = {sample(z, 1.0, None, 0.5, g).item() for _ in range(200)}
    assert draws == {2}


def test_bidirectional_ssm_refuses_to_generate():
    model = build_model(V, "gated_ssm", "tiny", bidirectional=True)
    with pytest.raises(ValueError, match="bidirectional"):
        model.generate(torch.tensor([1, 2]), 3)


def test_infill_prompt_layout_and_stop_at_eos():
    """infill = greedy generation after `<fim_prefix> <fim_suffix> suf <fim_middle> pre` (SPM, the
    default) or `<fim_prefix> pre <fim_suffix> suf <fim_middle>` (PSM), cut before the first EOS;
    the same prompts `fim` trains on."""
    model = build_model(V, "transformer", "tiny").eval()
    pre, suf = torch.tensor([1, 2]), torch.tensor([3])
    P, S, M = V.id("<fim_prefix>"), V.id("<fim_suffix>"), V.id("<fim_middle>")
    for layout, prompt in (("spm", [P, S, 3, M, 1, 2]), ("psm", [P, 1, 2, S, 3, M])):
        mid = model.infill(pre, suf, V, max_new_tokens=5, layout=layout, temperature=0)
        assert torch.equal(mid, model.generate(torch.tensor(prompt), 5, temperature=0, eos_id=V.eos)[: len(mid)])
        # the training example of a document pre + mid + suf starts with the same prompt
        fim = FIM(V, rate=1.0, spm_rate=1.0 if layout == "spm" else 0.0)
        fim.split = lambda tokens, rng: (np.array([1, 2]), np.array([7, 8]), np.array([3]))
        ex = fim(np.array([1, 2, 7, 8, 3]), np.random.default_rng(0))
        assert ex.input_ids.tolist()[: len(prompt)] == prompt
    with pytest.raises(ValueError, match="layout"):
        model.infill(pre, suf, V, layout="pms")
    # a head that predicts EOS from the third step on: the middle is the two tokens before it
    logits, calls = model.head.logits, []

    def eos_late(h, keep_last=0):
        z = logits(h, keep_last)
        calls.append(1)
        if len(calls) >= 3:
            z[..., V.eos] = z.max() + 1
        return z

    model.head.logits = eos_late
    mid = model.infill(pre, suf, V, max_new_tokens=5, temperature=0)
    assert len(mid) == 2 and V.eos not in mid.tolist()


def test_build_model_errors():
    with pytest.raises(ValueError, match="backbone"):
        build_model(V, "rnn")
    with pytest.raises(ValueError, match="size"):
        build_model(V, "transformer", "huge")
    with pytest.raises(ValueError, match="heads"):
        TransformerConfig(30, 1, 4)

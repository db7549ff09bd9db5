"""Heads: split vocabularies equal one big head; frozen splits stay frozen; pooling is right."""

import pytest
import torch
import torch.nn.functional as F

from headway.constants import IGNORE_INDEX
from headway.heads import ClassificationHead, LMHead, MLMHead, SplitEmbedding, SplitLMHead

SPLITS = {"base": 53, "special": 7}


def _labels(B=2, S=9, V=60):
    y = torch.randint(0, V, (B, S))
    y[0, :2] = IGNORE_INDEX
    return y


def test_split_head_equals_one_big_head_on_concatenated_weights():
    emb = SplitEmbedding(SPLITS, 16)
    head = SplitLMHead(SPLITS, 16, tie_to=emb, z_loss=1e-3, softcap=5.0)
    big = LMHead(16, 60, z_loss=1e-3, softcap=5.0)
    with torch.no_grad():
        big.weight.copy_(emb.full_weight())
    h, y = torch.randn(2, 9, 16), _labels()
    torch.testing.assert_close(head(h, y), big(h, y))
    torch.testing.assert_close(head.logits(h), big.logits(h))
    ids = torch.randint(0, 60, (2, 9))
    torch.testing.assert_close(emb(ids), F.embedding(ids, emb.full_weight()))


def test_frozen_split_gets_no_gradient_and_trainable_one_does():
    emb = SplitEmbedding(SPLITS, 16)
    emb.weights["base"].requires_grad_(False)
    head = SplitLMHead(SPLITS, 16, tie_to=emb)
    ids = torch.randint(0, 60, (2, 9))
    ids[0, 0] = 55  # a special token
    loss = head(emb(ids), _labels())
    loss.backward()
    assert emb.weights["base"].grad is None
    assert emb.weights["special"].grad is not None and emb.weights["special"].grad.abs().sum() > 0


def test_unknown_id_is_an_error_not_a_zero_vector():
    emb = SplitEmbedding(SPLITS, 8)
    with pytest.raises(ValueError, match=r"\[0, 60\).*60"):
        emb(torch.tensor([[1, 60]]))
    with pytest.raises(ValueError, match="-1"):
        emb(torch.tensor([-1]))


def test_resize_split_keeps_the_others():
    emb = SplitEmbedding(SPLITS, 8)
    base = emb.weights["base"].detach().clone()
    spec = emb.weights["special"].detach().clone()
    emb.resize_split("special", 10)
    assert emb.num_embeddings == 63
    assert torch.equal(emb.weights["base"], base) and torch.equal(emb.weights["special"][:7], spec)
    with pytest.raises(ValueError, match="no split"):
        emb.resize_split("extra", 3)


def test_untied_and_tied_lm_head_with_bias():
    e = torch.nn.Embedding(60, 16)
    tied = LMHead(16, 60, tie_to=e, bias=True)
    assert tied.tied and tied.weight is e.weight
    h, y = torch.randn(2, 9, 16), _labels()
    ref = F.cross_entropy((h @ e.weight.T + tied.bias).reshape(-1, 60), y.reshape(-1))
    torch.testing.assert_close(tied(h, y), ref)
    with pytest.raises(ValueError, match="tie_to"):
        LMHead(16, 61, tie_to=e)
    assert tied.logits(h, keep_last=1).shape == (2, 1, 60)


def test_mlm_head_transform_then_tied_decoder():
    e = torch.nn.Embedding(60, 16)
    mlm = MLMHead(16, LMHead(16, 60, tie_to=e))
    h, y = torch.randn(2, 9, 16), _labels()
    z = mlm.transform(h) @ e.weight.T
    torch.testing.assert_close(mlm(h, y), F.cross_entropy(z.reshape(-1, 60), y.reshape(-1)))


def test_classification_poolings():
    h = torch.randn(2, 5, 8)
    mask = torch.tensor([[0, 1, 1, 0, 0], [1, 0, 0, 0, 1]]).bool()
    head = ClassificationHead(8, 3, pooling="mask")
    torch.testing.assert_close(head(h, mask), head.proj(h[mask]))
    for pooling, want in [("mean", torch.stack([h[0, 1:3].mean(0), (h[1, 0] + h[1, 4]) / 2])),
                          ("first", torch.stack([h[0, 1], h[1, 0]])), ("last", torch.stack([h[0, 2], h[1, 4]]))]:
        head2 = ClassificationHead(8, 3, pooling=pooling)
        torch.testing.assert_close(head2(h, mask), head2.proj(want))
    with pytest.raises(ValueError, match="pooling_mask"):
        head(h, mask[:, :3])
    with pytest.raises(ValueError, match="pooling"):
        ClassificationHead(8, 3, pooling="max")


def test_tied_split_weight_is_joined_without_a_copy_and_grads_split_correctly():
    emb = SplitEmbedding(SPLITS, 16)
    full = emb.full_weight()
    assert full.data_ptr() == emb.weights["base"].data_ptr()  # an alias of the packed buffer, not a copy
    emb.double()  # reallocates parameters one by one; pack_ restores the shared buffer
    full = emb.full_weight()
    assert full.dtype == torch.float64 and full.data_ptr() == emb.weights["base"].data_ptr()
    g = torch.randn(60, 16, dtype=torch.float64)
    (full * g).sum().backward()
    torch.testing.assert_close(emb.weights["base"].grad, g[:53])
    torch.testing.assert_close(emb.weights["special"].grad, g[53:])
    # an optimizer step through the Parameter objects updates the shared buffer
    opt = torch.optim.SGD(emb.parameters(), lr=1.0)
    before = emb.full_weight().detach().clone()
    opt.step()
    torch.testing.assert_close(emb.full_weight().detach(), before - g)


def test_heads_carry_their_loss_options_and_pass_them_to_the_loss(monkeypatch):
    """`loss=LossOptions(...)` is what a head computes with (impl included); the softcap / z_loss /
    label_smoothing keywords build the same options; a keyword that disagrees with `loss` is refused."""
    import headway.loss.api as api
    from headway.loss import LossOptions, linear_cross_entropy

    o = LossOptions(label_smoothing=0.1, z_loss=1e-3, softcap=5.0, chunk_size=7, impl="reference")
    emb = SplitEmbedding(SPLITS, 16).double()
    split = SplitLMHead(SPLITS, 16, tie_to=emb, loss=o)
    plain = LMHead(16, 60, bias=True, loss=o).double()
    h, y = torch.randn(2, 9, 16, dtype=torch.float64), _labels()
    calls = []
    monkeypatch.setattr(api, "reference_token_losses", lambda a: calls.append(a) or _reference(a))
    for head in (split, plain):
        assert head.loss_options is o
        assert (head.softcap, head.z_loss, head.label_smoothing) == (5.0, 1e-3, 0.1)
        want = linear_cross_entropy(h, head.weight, y, bias=head.bias, options=o)
        assert torch.equal(head(h, y), want)
        z = h @ head.weight.detach().T + (0 if head.bias is None else head.bias.detach())
        torch.testing.assert_close(head.logits(h), (5.0 * torch.tanh(z / 5.0)).float())  # float32 logits
    assert len(calls) == 4  # impl="reference" reached the loss from both heads
    assert LMHead(16, 60, z_loss=1e-3, softcap=5.0).loss_options == LossOptions(z_loss=1e-3, softcap=5.0)
    assert LMHead(16, 60, z_loss=1e-3, loss=LossOptions(z_loss=1e-3)).z_loss == 1e-3  # agreeing: fine
    with pytest.raises(ValueError, match=r"LMHead: z_loss=0.01 and options.z_loss=0.001 disagree"):
        LMHead(16, 60, z_loss=1e-2, loss=o)
    with pytest.raises(ValueError, match=r"LossOptions: `softcap` must be"):
        SplitLMHead(SPLITS, 16, softcap=-1.0)
    head = LMHead(16, 60)
    head.z_loss = 1e-4  # the attributes stay settable: they replace the options
    assert head.loss_options == LossOptions(z_loss=1e-4) and "z_loss=0.0001" in repr(head)


def _reference(a):
    from headway.loss.reference import reference_token_losses

    return reference_token_losses(a)


def test_build_model_takes_loss_options_and_keeps_the_z_loss_shortcut():
    import headway as hw
    from headway.loss import LossOptions

    vocab = hw.Vocab(50, num_sentinels=2)
    o = LossOptions(label_smoothing=0.05, z_loss=2e-4, impl="chunked", chunk_size=16)
    for tie in (True, False):
        assert hw.build_model(vocab, size="32x1", loss=o, tie_head=tie).head.loss_options == o
    assert hw.build_model(vocab, size="32x1", z_loss=1e-3).head.loss_options == LossOptions(z_loss=1e-3)
    assert hw.build_model(vocab, size="32x1").head.loss_options == LossOptions()
    assert hw.build_model(vocab, size="32x1", loss=o, z_loss=2e-4).head.loss_options == o
    with pytest.raises(ValueError, match=r"build_model: z_loss=0.001 and options.z_loss=0.0002 disagree"):
        hw.build_model(vocab, size="32x1", loss=o, z_loss=1e-3)
    torch.manual_seed(0)
    model = hw.build_model(vocab, "gated_ssm", "32x1", loss=o)
    batch = next(iter(hw.batches([torch.arange(40).numpy() % 50], hw.build_objective("clm", vocab), 16, 2,
                                 vocab.pad)))
    h = model.hidden(batch.input_ids, batch)
    want = hw.linear_cross_entropy(h, model.head.weight, batch.labels, options=o)
    assert torch.equal(model(batch), want)


def test_an_architectures_softcap_fills_the_options_unless_they_set_one():
    pytest.importorskip("transformers")
    import headway as hw
    from headway.loss import LossOptions

    vocab = hw.Vocab(50, num_sentinels=2)
    arch = hw.build_model(vocab, "hf:gemma2", "32x1x2").head.loss_options.softcap
    assert arch is not None and arch > 0  # Gemma-2's final_logit_softcapping
    got = hw.build_model(vocab, "hf:gemma2", "32x1x2", loss=LossOptions(z_loss=1e-3)).head.loss_options
    assert got == LossOptions(z_loss=1e-3, softcap=arch)
    assert hw.build_model(vocab, "hf:gemma2", "32x1x2", loss=LossOptions(softcap=7.0)).head.softcap == 7.0
    assert hw.build_model(vocab, "hf:llama", "32x1x2", z_loss=1e-3).head.loss_options == LossOptions(z_loss=1e-3)

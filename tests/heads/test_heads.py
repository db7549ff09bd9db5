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

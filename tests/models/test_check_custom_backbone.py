"""The causality check on a `LanguageModel` around a backbone written outside headway: the hidden
and vocabulary sizes come from the model's embedding, whatever its kind; an explicit size is needed
only when nothing tells it, and must agree with what the model tells."""

import pytest
import torch
from torch import Tensor, nn

from headway.check import check_causal
from headway.check.adapters import embedding_sizes
from headway.heads import LMHead, SplitEmbedding, SplitLMHead
from headway.models import LanguageModel
from headway.types import Batch

H, V = 8, 40
SPLITS = {"base": 32, "special": 8}


class MeanBackbone(nn.Module):
    """A backbone following the `Backbone` protocol with no `config` and no `hidden_size`: each
    output adds the mean of the positions it sees in its document (those up to it when causal,
    the whole document when not)."""

    def __init__(self, width: int, causal: bool) -> None:
        super().__init__()
        self.causal = causal
        self.layers = nn.ModuleList([nn.Linear(width, width)])

    def forward(self, x: Tensor, batch: Batch | None = None, cache: object = None) -> Tensor:
        B, S, _ = x.shape
        docs = batch.document_ids if batch is not None else torch.zeros(B, S, dtype=torch.long)
        see = docs[:, :, None] == docs[:, None, :]  # (B, S, S) same document
        if self.causal:
            see = see & torch.ones(S, S, dtype=torch.bool).tril()
        w = see.to(x.dtype)
        return x + (w / w.sum(-1, keepdim=True)) @ self.layers[0](x)

    def new_cache(self, batch_size: int) -> None:
        return None


class TwoTables(nn.Module):
    """A split embedding of its own: two plain parameters, no size attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Parameter(torch.randn(30, H)), nn.Parameter(torch.randn(10, H))

    def forward(self, ids: Tensor) -> Tensor:
        return torch.cat([self.a, self.b])[ids]


class Factorized(nn.Module):
    """A small table, then a projection to the hidden size."""

    def __init__(self) -> None:
        super().__init__()
        self.table, self.up = nn.Embedding(V, 3), nn.Linear(3, H)

    def forward(self, ids: Tensor) -> Tensor:
        return self.up(self.table(ids))


def _embedding_and_head(kind: str) -> tuple[nn.Module, nn.Module]:
    if kind == "nn.Embedding":
        emb = nn.Embedding(V, H)
        return emb, LMHead(H, V, tie_to=emb)
    if kind == "SplitEmbedding":
        emb = SplitEmbedding(SPLITS, H)
        return emb, SplitLMHead(SPLITS, H, tie_to=emb)
    return (TwoTables() if kind == "two tables" else Factorized()), LMHead(H, V)


KINDS = ["nn.Embedding", "SplitEmbedding", "two tables", "factorized"]


@pytest.mark.parametrize("kind", KINDS)
def test_sizes_come_from_the_embedding(kind):
    emb, _ = _embedding_and_head(kind)
    assert embedding_sizes(emb) == (V, H)
    assert emb.training  # the embedding's mode is left as it was


@pytest.mark.parametrize("kind", KINDS)
def test_a_custom_backbone_in_a_language_model_needs_no_hidden_size(kind):
    torch.manual_seed(0)
    emb, head = _embedding_and_head(kind)
    causal = LanguageModel(emb, MeanBackbone(H, causal=True), head)
    rep = check_causal(causal, lengths=(9, 16))
    assert rep.ok, str(rep)
    assert any(c.startswith("gradient") for c in rep.checked) and any(c.startswith("black-box") for c in rep.checked)
    leaky = LanguageModel(emb, MeanBackbone(H, causal=False), head)
    rep = check_causal(leaky, lengths=(9,))
    assert not rep.ok and {f.kind for f in rep.findings} == {"future"}
    assert {f.detector for f in rep.findings} == {"gradient", "black-box"}
    assert all(k > t for f in rep.findings for t, k in f.pairs)


def test_explicit_sizes_are_a_fallback_and_must_agree():
    emb, head = _embedding_and_head("nn.Embedding")
    model = LanguageModel(emb, MeanBackbone(H, causal=True), head)
    assert check_causal(model, lengths=(9,), hidden_size=H, vocab_size=V).ok
    with pytest.raises(ValueError, match=r"hidden_size=7 but the model's embedding \(Embedding\) says 8"):
        check_causal(model, hidden_size=7)
    with pytest.raises(ValueError, match=r"vocab_size=41 but .* says 40"):
        check_causal(model, vocab_size=41)
    with pytest.raises(ValueError, match="hidden_size must be a positive integer, got 0"):
        check_causal(model, hidden_size=0)
    bare = MeanBackbone(H, causal=True)  # no embedding, no size attribute: only the argument tells it
    with pytest.raises(ValueError, match="cannot tell the hidden size of MeanBackbone.*pass hidden_size="):
        check_causal(bare)
    assert check_causal(bare, hidden_size=H, lengths=(9,)).ok

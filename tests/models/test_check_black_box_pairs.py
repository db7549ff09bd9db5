"""The black-box detector names the real input behind a leak (bisection over the replaced inputs,
confirmed with that input replaced alone), or says it could not isolate one; it never invents one."""

import pytest
import torch
from torch import nn

from headway.check import check_causal

H = 8


def causal_mix(x: torch.Tensor) -> torch.Tensor:
    n = torch.arange(1, x.shape[1] + 1, dtype=x.dtype)[None, :, None]
    return x.cumsum(1) / n


class Tap(nn.Module):
    """Causal except that output `out` also reads input `src` (a later one)."""

    def __init__(self, out: int, src: int) -> None:
        super().__init__()
        self.out, self.src = out, src

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = causal_mix(x).clone()
        y[:, self.out] = y[:, self.out] + x[:, self.src]
        return y


class Product(nn.Module):
    """Output 0 reads the product of inputs 20 and 25: each of them alone moves it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = causal_mix(x).clone()
        y[:, 0] = y[:, 0] + x[:, 20] * x[:, 25]
        return y


class ExpertChoice(nn.Module):
    """Expert-choice routing: the top quarter of positions by score over the whole sequence get the
    expert, so an output moves when a later position takes its place in the top quarter."""

    def __init__(self) -> None:
        super().__init__()
        self.score, self.expert = nn.Linear(H, 1), nn.Linear(H, H)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.score(x).squeeze(-1)
        chosen = torch.zeros_like(s).scatter(1, s.topk(max(1, x.shape[1] // 4), dim=1).indices, 1.0)
        return causal_mix(x) + chosen[..., None] * self.expert(x)


class NeedsTwo(nn.Module):
    """y[t] = x[t] + [at least two inputs after t differ from the reference r]: no single input moves
    any output, two together do. r is the first input of each shape it sees (the detector's
    unperturbed run), so the function is fixed before any perturbed input arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[tuple[int, ...], torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ref = self.refs.setdefault(tuple(x.shape), x.clone())
        moved = (x != ref).any(-1).to(x.dtype)  # (B, S)
        later = moved.flip(1).cumsum(1).flip(1) - moved  # how many positions after t moved
        return x + (later >= 2).to(x.dtype)[..., None]


def _moves(model: nn.Module, S: int, t: int, k: int, draws: int = 500) -> bool:
    """Whether replacing input k alone (random base, random replacement) ever moves output t."""
    g = torch.Generator().manual_seed(1)
    for _ in range(draws):
        x = torch.randn(2, S, H, generator=g)
        x2 = x.clone()
        x2[:, k] = torch.randn(2, H, generator=g)
        with torch.no_grad():
            if not torch.allclose(model(x)[:, t], model(x2)[:, t], atol=1e-6, rtol=1e-4):
                return True
    return False


@pytest.mark.parametrize("out,src", [(0, 23), (3, 9), (30, 31)])
def test_black_box_names_the_input_an_output_reads(out, src):
    rep = check_causal(Tap(out, src), hidden_size=H, packed=False, lengths=(32,), detectors=("black-box",))
    assert not rep.ok
    f = rep.findings[0]
    assert f.kind == "future" and f.pairs == [(out, src)], f.pairs
    assert f"out {out} <- in {src}" in str(rep)


def test_black_box_names_the_input_on_token_ids_too():
    emb = nn.Embedding(50, H)

    def reads_23(ids: torch.Tensor) -> torch.Tensor:
        y = causal_mix(emb(ids)).clone()
        y[:, 0] = y[:, 0] + emb(ids[:, 23])
        return y

    rep = check_causal(reads_23, vocab_size=50, lengths=(32,))
    assert not rep.ok and rep.findings[0].detector == "black-box" and rep.leaks == [(0, 23)]


@pytest.mark.parametrize("net,S", [(Product(), 32), (ExpertChoice(), 16), (ExpertChoice(), 33)],
                         ids=["product", "expert-choice-16", "expert-choice-33"])
def test_interactions_give_a_real_pair_or_none(net, S):
    torch.manual_seed(0)
    rep = check_causal(net, hidden_size=H, packed=False, lengths=(S,), detectors=("black-box",))
    assert not rep.ok
    for f in rep.findings:
        assert f.outputs, f
        for t, k in f.pairs:
            assert k > t and _moves(net, S, t, k), (t, k)  # the dependence exists: that input alone moves it
        if not f.pairs:
            assert "input not isolated" in f.describe()


def test_a_dependence_on_inputs_only_together_is_reported_without_a_pair():
    rep = check_causal(NeedsTwo(), hidden_size=H, packed=False, lengths=(32,))
    assert not rep.ok
    f = rep.findings[0]
    assert f.detector == "black-box" and f.kind == "future" and f.pairs == [] and f.outputs[0] == 0
    assert "out 0 <- input not isolated" in str(rep)


def test_rows_and_documents_get_real_pairs_too():
    from headway.models import GatedSSM, GatedSSMConfig

    class RowMixer(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return causal_mix(x) + x.mean(0, keepdim=True)

    rep = check_causal(RowMixer(), hidden_size=H, packed=False, detectors=("black-box",), lengths=(16,))
    f = rep.findings[0]
    assert f.kind == "other row" and f.pairs and all(t == k for t, k in f.pairs)  # position t of the other row
    assert "of another row" in str(rep)

    class NoReset(GatedSSM):
        def forward(self, x, batch=None, cache=None):  # noqa: ANN001, ANN201
            return super().forward(x, None, cache)  # ignores the packing

    torch.manual_seed(0)
    S = 16
    rep = check_causal(NoReset(GatedSSMConfig(32, 1, num_modes=8)), lengths=(S,), detectors=("black-box",))
    f = rep.findings[0]
    assert f.kind == "other document" and f.pairs
    assert all(k < S // 2 <= t for t, k in f.pairs)  # an output of the second document, an input of the first

"""Speculative decoding with the MTP depths: plain greedy's output exactly (float32), with drafts
accepted and rejected; the incremental drafts equal a full recomputation; every backbone's cache."""

import pytest
import torch

from headway.data.collate import collate
from headway.models import build_model
from headway.models.speculative import compare_with_greedy, speculative_generate
from headway.models.transformer import attention_layout
from headway.types import Example, Vocab

V = Vocab(base_size=40, num_sentinels=4)
PATTERN = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7]  # a period of 14 a trained model continues


def _trained(backbone: str = "transformer", depth: int = 2, steps: int = 120, size: str = "tiny"):
    """A tiny model with `depth` MTP depths fitted to the repeated PATTERN: its drafts get accepted."""
    torch.manual_seed(0)
    m = build_model(V, backbone, size, mtp_depth=depth)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    seq = torch.tensor(PATTERN * 5)
    for step in range(steps):
        rows = []
        for r in range(4):
            s = seq[(step + r) % 14 :][:48]
            rows.append([Example(s[:-1].numpy(), s[1:].numpy())])
        loss = m(collate(rows, 47, V.pad))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


@pytest.fixture(scope="module")
def trained():
    return _trained()


def _prompts():
    g = torch.Generator().manual_seed(1)
    return [torch.tensor(PATTERN[:5]), torch.tensor(PATTERN[3:12]), torch.randint(0, 40, (6,), generator=g),
            torch.randint(0, 40, (1,), generator=g), torch.tensor(PATTERN * 2 + [7, 7, 0])]


def test_speculative_output_is_plain_greedy_with_drafts_accepted_and_rejected(trained):
    accepted = rejected = 0
    for prompt in _prompts():
        for n in (1, 7, 30):
            want = trained.generate(prompt, n, temperature=0.0)
            got, st = speculative_generate(trained, prompt, n)
            assert torch.equal(got, want), (prompt, n)
            assert st.tokens == n and sum(len(e) for e in st.emitted) + 1 >= n
            accepted += st.accepted
            rejected += st.drafted - st.accepted
    assert accepted > 20 and rejected > 5  # both paths ran: the test is not vacuous
    r = compare_with_greedy(trained, torch.tensor(PATTERN[:5]), 40)
    assert r.identical and r.stats.tokens_per_step > 1.5 and "identical to plain greedy: yes" in r.describe()


def test_eos_ends_the_output_as_plain_greedy_does(trained):
    for eos in (PATTERN[7], PATTERN[12]):
        want = trained.generate(torch.tensor(PATTERN[:4]), 30, temperature=0.0, eos_id=eos)
        got, _ = speculative_generate(trained, torch.tensor(PATTERN[:4]), 30, eos_id=eos)
        assert got.tolist() == want.tolist() and got[-1] == eos


@torch.no_grad()
def _full_drafts(m, seq: list[int], n: int) -> list[int]:
    """The drafts recomputed from scratch: the backbone over x_0 .. x_{L-2}, then each depth over every
    position with the tokens j ahead (the known ones, then the drafts so far)."""
    L = len(seq)
    h = m.backbone(m.embedding(torch.tensor([seq[:-1]])))
    pos, mask, causal = attention_layout(1, L - 1, h.device)
    rot = m.mtp.rope(pos)
    ext, drafts = list(seq), []
    for j, depth in enumerate(m.mtp.depths[:n], start=1):
        e = m.embedding(torch.tensor([ext[j : j + L - 1]]))
        h = depth(h, e, rot, mask, causal)
        drafts.append(int(m.head.logits(depth.norm(h[:, -1:]))[0, -1].argmax()))
        ext.append(drafts[-1])
    return drafts


def test_incremental_drafts_equal_a_full_recomputation(trained):
    prompt = PATTERN[:3] + [0, 7]
    out, st = speculative_generate(trained, torch.tensor(prompt), 25)
    known = prompt + [int(out[0])]
    for drafts, emitted in zip(st.drafts, st.emitted):
        assert drafts == _full_drafts(trained, known, len(drafts))
        known += emitted


@pytest.mark.parametrize("backbone,size", [("gated_ssm", "tiny"), ("hf:llama", "32x2x2"), ("hf:mamba2", "32x2x2")])
def test_every_backbones_cache_gives_plain_greedy(backbone, size):
    if backbone.startswith("hf:"):
        pytest.importorskip("transformers")
    m = _trained(backbone, steps=40, size=size)
    accepted = 0
    for prompt in _prompts()[:3]:
        want = m.generate(prompt, 20, temperature=0.0)
        got, st = speculative_generate(m, prompt, 20)
        assert torch.equal(got, want)
        accepted += st.accepted
    assert accepted > 0


def test_refusals():
    m = build_model(V, size="tiny")
    with pytest.raises(ValueError, match="mtp-depth"):
        speculative_generate(m, torch.tensor([1, 2]), 3)
    m = build_model(V, size="tiny", mtp_depth=2)
    with pytest.raises(ValueError, match="num_drafts"):
        speculative_generate(m, torch.tensor([1, 2]), 3, num_drafts=3)
    with pytest.raises(ValueError, match="1-D"):
        speculative_generate(m, torch.tensor([[1, 2]]), 3)
    assert speculative_generate(m, torch.tensor([1]), 0)[0].numel() == 0

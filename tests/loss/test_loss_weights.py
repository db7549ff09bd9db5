"""Per-token loss weights: every reduction and every gradient equal float64
``F.cross_entropy(reduction="none") * w`` reduced by hand, on random odd sizes, through the chunked
path (both CPU roads), the reference path, the head and the vocab-parallel loss; unweighted calls unchanged."""

import contextlib
import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import headway as hw
from headway.loss.core import separate_passes
from tests.support import random_loss_inputs

N, H, V = 41, 13, 523


def make(seed=0, lead=(N,), dtype=torch.float64, ignore_every=3, bias=False):
    g = torch.Generator().manual_seed(seed)
    h, w, b, y = random_loss_inputs(g, lead, H, V, dtype, bias, ignore_every)
    tw = torch.rand(*lead, dtype=dtype, generator=g) * 3  # weights in [0, 3)
    tw = torch.where(y == hw.IGNORE_INDEX, 0.0, tw)
    return h, w, b, y, tw


def oracle(h, w, b, y, tw, reduction, num_items=None):
    """float64 F.cross_entropy(reduction='none') * w, reduced by hand (the contract)."""
    z = h.reshape(-1, H).double() @ w.double().t()
    if b is not None:
        z = z + b.double()
    ce = F.cross_entropy(z, y.reshape(-1), reduction="none", ignore_index=hw.IGNORE_INDEX)
    per = ce * tw.reshape(-1).double()
    if reduction == "none":
        return per.reshape(y.shape)
    if reduction == "sum":
        return per.sum()
    n = num_items if num_items is not None else max(int((y != hw.IGNORE_INDEX).sum()), 1)
    return per.sum() / n


def _grads(out, ts):
    gout = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)  # non-uniform upstream
    return torch.autograd.grad((out * gout).sum(), [t for t in ts if t is not None])


@pytest.mark.parametrize("impl,reduction,bias,shift,chunk,fused",
                         [(i, r, b, s, c, f) for i, r, b, s, c, f in itertools.product(
                             ["chunked", "reference"], ["mean", "sum", "none"], [False, True], [False, True],
                             [None, 1, 7], [True, False]) if i == "chunked" or (c is None and f)])
def test_weighted_loss_and_gradients_equal_float64_cross_entropy_times_w(impl, reduction, bias, shift, chunk, fused):
    h, w, b, y, tw = make(bias=bias, lead=(3, 17))
    yy, ww = y, tw
    if shift:  # HF-style labels: position t predicts labels[t + 1], with that label's weight
        yy = torch.cat([y[:, 1:], torch.full_like(y[:, :1], hw.IGNORE_INDEX)], 1)
        ww = torch.cat([tw[:, 1:], torch.zeros_like(tw[:, :1])], 1)
    tw_got = tw.clone().requires_grad_()
    tw_ref = ww.clone().requires_grad_()
    with separate_passes() if not fused else contextlib.nullcontext():
        got = hw.linear_cross_entropy(h, w, y, bias=b, reduction=reduction, shift=shift, chunk_size=chunk,
                                      impl=impl, loss_weights=tw_got)
        g_got = _grads(got, (h, w, b, tw_got))
    ref = oracle(h, w, b, yy, tw_ref, reduction)
    g_ref = _grads(ref, (h, w, b, tw_ref))
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    if shift:  # the weight of the shifted-in label sits one position to the right
        d = torch.zeros_like(tw)
        d[:, 1:] = g_ref[-1][:, :-1]
        g_ref = (*g_ref[:-1], d)
    for a, r in zip(g_got, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-12)


@given(n=st.integers(1, 29), hid=st.integers(1, 11), v=st.integers(2, 97), seed=st.integers(0, 10**6),
       reduction=st.sampled_from(["mean", "sum", "none"]), chunk=st.sampled_from([None, 1, 3, 16]),
       num_items=st.sampled_from([None, 7.0]))
def test_random_odd_sizes_match_the_oracle(n, hid, v, seed, reduction, chunk, num_items):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hid, dtype=torch.float64, generator=g).requires_grad_()
    w = torch.randn(v, hid, dtype=torch.float64, generator=g).requires_grad_()
    y = torch.randint(0, v, (n,), generator=g)
    y[torch.rand(n, generator=g) < 0.3] = hw.IGNORE_INDEX
    tw = torch.where(y == hw.IGNORE_INDEX, 0.0, torch.rand(n, dtype=torch.float64, generator=g) * 5 - 1)  # some < 0
    if reduction != "mean":
        num_items = None
    got = hw.linear_cross_entropy(h, w, y, reduction=reduction, chunk_size=chunk, impl="chunked",
                                  num_items_in_batch=num_items, loss_weights=tw)
    z = h @ w.t()
    per = F.cross_entropy(z, y, reduction="none", ignore_index=hw.IGNORE_INDEX) * tw
    ref = per if reduction == "none" else per.sum()
    if reduction == "mean":
        ref = ref / (num_items if num_items is not None else max(int((y != hw.IGNORE_INDEX).sum()), 1))
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    for a, r in zip(_grads(got, (h, w)), _grads(ref, (h, w))):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-12)


def test_unit_weights_are_the_unweighted_loss_bit_for_bit_in_float32():
    h, w, _, y, _ = make(dtype=torch.float32)
    ones = torch.ones(N)
    for red in ("mean", "sum", "none"):
        a = hw.linear_cross_entropy(h, w, y, reduction=red)
        b = hw.linear_cross_entropy(h, w, y, reduction=red, loss_weights=ones)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        ga, gb = _grads(a, (h, w)), _grads(b, (h, w))
        for x, z in zip(ga, gb):
            torch.testing.assert_close(x, z, rtol=1e-6, atol=1e-7)


def test_a_weighted_call_gives_the_head_and_the_model_the_same_numbers():
    h, w, _, y, tw = make(dtype=torch.float32, lead=(2, 9))
    from headway.heads import LMHead

    head = LMHead(H, V)
    with torch.no_grad():
        head.weight.copy_(w)
    got = head(h, y, loss_weights=tw.float(), num_items_in_batch=5)
    want = hw.linear_cross_entropy(h, w, y, loss_weights=tw.float(), num_items_in_batch=5)
    torch.testing.assert_close(got, want)


def test_weights_are_checked():
    h, w, _, y, tw = make()
    with pytest.raises(ValueError, match="loss_weights.*shape"):
        hw.linear_cross_entropy(h, w, y, loss_weights=tw[:-1])
    with pytest.raises(ValueError, match="loss_weights.*floating"):
        hw.linear_cross_entropy(h, w, y, loss_weights=torch.ones(N, dtype=torch.long))
    bad = tw.clone()
    bad[1] = float("nan")  # a valid label (every third is ignored)
    with pytest.raises(ValueError, match="loss_weights.*finite"):
        hw.linear_cross_entropy(h, w, y, loss_weights=bad)
    bad = tw.clone()
    bad[0] = float("nan")  # an ignored position: never read
    assert torch.isfinite(hw.linear_cross_entropy(h, w, y, loss_weights=bad))


def test_every_label_ignored_gives_zero_and_zero_gradients_with_weights():
    h, w, _, y, tw = make()
    y[:] = hw.IGNORE_INDEX
    loss = hw.linear_cross_entropy(h, w, y, loss_weights=tw + 1)
    assert float(loss.detach()) == 0.0
    gh, gw = torch.autograd.grad(loss, [h, w])
    assert not gh.any() and not gw.any()


def test_the_vocab_parallel_loss_takes_weights(one_rank_group):
    from headway.loss.vocab_parallel import vocab_parallel_linear_cross_entropy

    h, w, _, y, tw = make()
    got = vocab_parallel_linear_cross_entropy(h, w, y, loss_weights=tw, num_items_in_batch=11)
    ref = oracle(h, w, None, y, tw, "mean", 11)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    for a, r in zip(_grads(got, (h, w)), _grads(ref, (h, w))):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-12)

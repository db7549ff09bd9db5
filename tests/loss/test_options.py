"""LossOptions: checked on construction; `options=` gives exactly the keyword call on every path;
a keyword that disagrees with the options is refused by name; one reduction helper."""

import dataclasses
import math
import random

import pytest
import torch

import headway as hw
from headway.loss import LossOptions
from headway.loss.reduction import loss_scale, reduce_losses

N, H, V = 37, 13, 211  # odd sizes: chunks of 5, 7, 9 rows leave a remainder


def _inputs(seed: int, bias: bool, ignore_index: int, lead: tuple[int, ...] = (N,)):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*lead, H, dtype=torch.float64, generator=g).requires_grad_()
    w = (torch.randn(V, H, dtype=torch.float64, generator=g) * 0.5).requires_grad_()
    b = (torch.randn(V, dtype=torch.float64, generator=g) * 0.5).requires_grad_() if bias else None
    y = torch.randint(0, V, lead, generator=g)
    y.view(-1)[:: 3 + seed % 4] = ignore_index
    return h, w, b, y


def _random_options(rng: random.Random) -> LossOptions:
    return LossOptions(
        label_smoothing=rng.choice([0.0, 0.0, round(rng.uniform(0.01, 0.5), 3)]),
        z_loss=rng.choice([0.0, 0.0, round(rng.uniform(1e-4, 5e-2), 5)]),
        softcap=rng.choice([None, None, round(rng.uniform(1.5, 20.0), 3)]),
        ignore_index=rng.choice([hw.IGNORE_INDEX, hw.IGNORE_INDEX, 7, V + 11]),
        chunk_size=rng.choice([None, 5, 7, 9, 64]),
        impl=rng.choice(["auto", "chunked", "reference"]),
    )


def _grads(out: torch.Tensor, params: list) -> tuple:
    gout = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
    return torch.autograd.grad((out * gout).sum(), [p for p in params if p is not None])


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_options_give_exactly_the_keyword_call(seed, reduction):
    """For random options on odd sizes in float64, `options=o` equals the keyword call bit for bit: loss,
    lse and every gradient, with and without bias, num_items_in_batch and shift."""
    rng = random.Random(seed * 3 + len(reduction))
    o = _random_options(rng)
    bias, shift = rng.random() < 0.5, rng.random() < 0.3
    extra = dict(reduction=reduction, shift=shift, bias=None)
    if reduction == "mean" and rng.random() < 0.5:
        extra["num_items_in_batch"] = 50
    h, w, b, y = _inputs(seed, bias, o.ignore_index, lead=(N,) if seed % 2 else (3, 11))
    extra["bias"] = b
    keywords = dataclasses.asdict(o)
    by_kw = hw.linear_cross_entropy(h, w, y, **keywords, **extra)
    by_opt = hw.linear_cross_entropy(h, w, y, options=o, **extra)
    assert torch.equal(by_kw, by_opt), o
    for a, c in zip(_grads(by_kw, [h, w, b]), _grads(by_opt, [h, w, b])):
        assert torch.equal(a, c), o
    if o.impl != "auto":  # return_lse: the same lse too
        k_loss, k_lse = hw.linear_cross_entropy(h, w, y, return_lse=True, **keywords, **extra)
        o_loss, o_lse = hw.linear_cross_entropy(h, w, y, return_lse=True, options=o, **extra)
        assert torch.equal(k_loss, o_loss) and torch.equal(k_lse, o_lse)
    # and both are the materializing oracle's numbers (to float64 rounding)
    ref = hw.linear_cross_entropy(h, w, y, **{**keywords, "impl": "reference", "chunk_size": None}, **extra)
    torch.testing.assert_close(by_opt, ref, rtol=1e-10, atol=1e-12)
    logp_kw = hw.token_logprobs(h, w, y, bias=b, shift=shift, ignore_index=o.ignore_index, softcap=o.softcap,
                                chunk_size=o.chunk_size, impl=o.impl)
    assert torch.equal(hw.token_logprobs(h, w, y, bias=b, shift=shift, options=o), logp_kw)


def test_token_logprobs_takes_a_heads_options_without_its_training_terms():
    """label_smoothing and z_loss shape a training loss, not log p(label): token_logprobs leaves them out."""
    h, w, _, y = _inputs(0, False, hw.IGNORE_INDEX)
    o = LossOptions(label_smoothing=0.3, z_loss=1e-2, softcap=4.0)
    want = hw.token_logprobs(h, w, y, softcap=4.0)
    assert torch.equal(hw.token_logprobs(h, w, y, options=o), want)
    z = 4.0 * torch.tanh((h @ w.T) / 4.0)
    ref = torch.log_softmax(z, -1).gather(-1, y.clamp(min=0)[:, None]).squeeze(1) * (y != hw.IGNORE_INDEX)
    torch.testing.assert_close(want, ref, rtol=1e-12, atol=1e-12)


def test_a_keyword_that_disagrees_with_the_options_is_refused_naming_both():
    h, w, _, y = _inputs(1, False, hw.IGNORE_INDEX)
    o = LossOptions(z_loss=1e-4, chunk_size=8)
    with pytest.raises(ValueError, match=r"linear_cross_entropy: z_loss=0.001 and options.z_loss=0.0001 disagree"):
        hw.linear_cross_entropy(h, w, y, z_loss=1e-3, options=o)
    with pytest.raises(ValueError, match=r"chunk_size=16 and options.chunk_size=8"):
        hw.linear_cross_entropy(h, w, y, chunk_size=16, options=o)
    with pytest.raises(ValueError, match=r"token_logprobs: impl='reference' and options.impl='auto'"):
        hw.token_logprobs(h, w, y, impl="reference", options=o)
    with pytest.raises(ValueError, match=r"softcap=3.0 and options.softcap=None"):
        hw.linear_cross_entropy(h, w, y, softcap=3.0, options=o)
    with pytest.raises(ValueError, match="`options` must be a headway.LossOptions"):
        hw.linear_cross_entropy(h, w, y, options={"z_loss": 1e-4})  # type: ignore[arg-type]
    # a keyword equal to the option, or left at its default, is no conflict
    want = hw.linear_cross_entropy(h, w, y, options=o)
    assert torch.equal(hw.linear_cross_entropy(h, w, y, z_loss=1e-4, options=o), want)
    assert torch.equal(hw.linear_cross_entropy(h, w, y, z_loss=0.0, chunk_size=None, options=o), want)
    assert torch.equal(hw.linear_cross_entropy(h, w, y, z_loss=1e-4, chunk_size=8), want)


@pytest.mark.parametrize("field,value,expected", [
    ("label_smoothing", 1.5, "a number in [0, 1]"),
    ("label_smoothing", float("nan"), "a number in [0, 1]"),
    ("z_loss", -1.0, "a finite number >= 0"),
    ("z_loss", float("inf"), "a finite number >= 0"),
    ("softcap", 0.0, "None (no capping) or a finite number > 0"),
    ("softcap", float("inf"), "None (no capping) or a finite number > 0"),
    ("ignore_index", 1.5, "an int"),
    ("ignore_index", True, "an int"),
    ("chunk_size", 0, "None or a positive int"),
    ("chunk_size", 2.0, "None or a positive int"),
    ("impl", "triton", "one of ('auto', 'chunked', 'reference', 'cce', 'liger')"),
])
def test_bad_options_name_the_field_what_it_must_be_and_what_it_got(field, value, expected):
    with pytest.raises(ValueError) as e:
        LossOptions(**{field: value})
    msg = str(e.value)
    assert msg.startswith(f"LossOptions: `{field}` must be ") and expected in msg, msg
    assert msg.endswith(f"got {value!r}") or msg.endswith(f"got {value}"), msg
    # the keyword API refuses the same value with the same words
    h, w, _, y = _inputs(2, False, hw.IGNORE_INDEX)
    with pytest.raises(ValueError, match=f"linear_cross_entropy: `{field}` must be"):
        hw.linear_cross_entropy(h, w, y, **{field: value})


def test_options_are_frozen_plain_data():
    o = LossOptions(z_loss=1, softcap=30, chunk_size=64, impl="chunked")
    assert o.z_loss == 1.0 and isinstance(o.z_loss, float) and isinstance(o.softcap, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.z_loss = 0.5  # type: ignore[misc]
    assert LossOptions.from_dict(o.to_dict()) == o
    assert o.replace(z_loss=0.0) == LossOptions(softcap=30.0, chunk_size=64, impl="chunked")
    with pytest.raises(ValueError, match="LossOptions: `z_loss`"):
        o.replace(z_loss=-1)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['zloss'\]"):
        LossOptions.from_dict({"zloss": 1e-4})
    assert hw.LossOptions is LossOptions is hw.loss.LossOptions
    assert LossOptions() == LossOptions(0.0, 0.0, None, hw.IGNORE_INDEX, None, "auto")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_one_reduction(dtype):
    """mean = sum / count of valid tokens (or / num_items_in_batch), no valid token gives 0; the liger
    path's summed loss reduces the same way as the per-token losses it sums."""
    losses = torch.tensor([0.5, 0.0, 2.0, 1.25], dtype=dtype)
    n = torch.tensor(3)
    assert reduce_losses(losses, n, "sum", None, dtype, (4,)) == 3.75
    assert reduce_losses(losses, n, "mean", None, dtype, (4,)) == 3.75 * (1 / 3.0)
    assert reduce_losses(losses, n, "mean", 5, dtype, (4,)) == 3.75 * (1 / 5.0)
    assert reduce_losses(losses.sum(), n, "mean", None, dtype, ()) == reduce_losses(losses, n, "mean", None, dtype, ())
    assert torch.equal(reduce_losses(losses, n, "none", None, dtype, (2, 2)), losses.reshape(2, 2))
    assert reduce_losses(torch.zeros(0, dtype=dtype), torch.tensor(0), "mean", None, dtype, (0,)) == 0
    assert loss_scale("sum", n, None, dtype) == 1 and loss_scale("mean", n, None, dtype) == 1 / 3.0
    assert not math.isnan(float(loss_scale("mean", torch.tensor(0), None, dtype)))
    with pytest.raises(ValueError, match="per-token"):
        reduce_losses(losses.sum(), n, "none", None, dtype, (4,))


def test_vocab_parallel_loss_takes_options_and_refuses_what_it_cannot_run(one_rank_group):
    from headway.loss.vocab_parallel import vocab_parallel_linear_cross_entropy as vp

    o = LossOptions(label_smoothing=0.1, z_loss=1e-3, softcap=5.0, ignore_index=7, chunk_size=9)
    h, w, b, y = _inputs(3, True, 7)
    for reduction in ("mean", "sum", "none"):
        want = vp(h, w, y, bias=b, reduction=reduction, **{k: v for k, v in o.to_dict().items() if k != "impl"})
        got = vp(h, w, y, bias=b, reduction=reduction, options=o)
        assert torch.equal(got, want)
        for a, c in zip(_grads(want, [h, w, b]), _grads(got, [h, w, b])):
            assert torch.equal(a, c)
        single = hw.linear_cross_entropy(h, w, y, bias=b, reduction=reduction, options=o)
        torch.testing.assert_close(got, single, rtol=1e-12, atol=1e-12)
    assert torch.equal(vp(h, w, y, options=o.replace(impl="chunked")), vp(h, w, y, options=o))
    with pytest.raises(ValueError, match=r"vocab_parallel_linear_cross_entropy: z_loss=0.01 and options.z_loss"):
        vp(h, w, y, z_loss=1e-2, options=o)
    for impl in ("reference", "cce", "liger"):
        with pytest.raises(ValueError, match=f"`impl` must be one of \\('auto', 'chunked'\\).*got '{impl}'"):
            vp(h, w, y, options=o.replace(impl=impl))

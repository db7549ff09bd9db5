"""Under `torch.autocast` the fused loss follows autocast's rules as `F.linear` does.

The products run in the autocast dtype (fp32 hidden, weight and bias are cast to it, float64 is
never cast) and every gradient reaches the tensor passed in, in its dtype. Outside autocast a dtype
mismatch is refused. Tolerances against `F.linear` + `F.cross_entropy` are error bounds derived
from the dtypes' unit roundoffs and the problem size (`_bounds`), never measured values.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import headway as hw
from headway.loss import matmul

N, H, V = 37, 19, 101
AMP = [torch.bfloat16, torch.float16]
PRODUCTS = {"mm", "addmm", "addmm_", "bmm", "mv", "addmv", "matmul", "linear", "_linear_pointwise"}


def _amp_or_skip(amp: torch.dtype) -> None:
    """Skip only where torch itself cannot run `F.linear` under CPU autocast to `amp`."""
    try:
        with torch.autocast("cpu", dtype=amp):
            F.linear(torch.randn(2, 3), torch.randn(4, 3), torch.randn(4))
    except RuntimeError as e:
        pytest.skip(f"torch cannot run F.linear under CPU autocast to {amp}: {e}")


def make(h_dtype=torch.float32, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, H, generator=g).to(h_dtype).requires_grad_()
    w = (torch.randn(V, H, generator=g) * 0.5).requires_grad_()
    b = (torch.randn(V, generator=g) * 0.5).requires_grad_() if bias else None
    y = torch.randint(0, V, (N,), generator=g)
    y[::5] = hw.IGNORE_INDEX
    return h, w, b, y


class ProductDtypes(TorchDispatchMode):
    """Records the operand dtypes of every matrix product run inside the block (backward included)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, tuple[torch.dtype, ...]]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = func.overloadpacket.__name__
        if name in PRODUCTS:
            self.seen.add((name, tuple(a.dtype for a in args if isinstance(a, torch.Tensor))))
        return func(*args, **(kwargs or {}))


def _bounds(h, w, b, y, g, amp):
    """Elementwise bounds on |ours - F.linear reference| for the per-token loss and for dh, dw, db.

    Both sides compute z = fl_amp(hq @ wq.T (+ bq)) from the same cast inputs hq, wq, bq, each
    within δ1 = (u + 2(H + 2) u32) * S of the exact logits, S = |hq| @ |wq|.T + |bq| (one rounding to
    the autocast dtype, unit roundoff u, and float32 accumulation); then float32 softmax
    statistics (relative error (V + 4) u32). Per token: |Δ loss| <= 2 δ1 (both sides) * 2 + float32
    terms. Gradients, with g the per-token incoming weight and A = |g| (p + onehot(y)) >= |dz|:
    |Δ dz| <= A * r + 2 η, r = 2 (exp(2 δ1) - 1) + 2 u + 2 (V + 4) u32 (the softmax moved by the
    logits' error, each side's dz rounded to the autocast dtype; η: half its subnormal spacing);
    each product adds its output rounding (u + float32 accumulation) on both sides.
    """
    u, u32 = torch.finfo(amp).eps / 2, torch.finfo(torch.float32).eps / 2
    eta = torch.finfo(amp).tiny * torch.finfo(amp).eps / 2
    hq, wq = h.detach().to(amp).double(), w.detach().to(amp).double()
    bq = torch.zeros(V, dtype=torch.float64) if b is None else b.detach().to(amp).double()
    z = hq @ wq.T + bq
    S = hq.abs() @ wq.abs().T + bq.abs()
    d1 = (u + 2 * (H + 2) * u32) * S.amax(1)  # (N,) per side
    lse = torch.logsumexp(z, 1)
    valid = y != hw.IGNORE_INDEX
    f32 = 4 * u32 * (V + 4 + lse.abs() + z.abs().amax(1))
    t_loss = torch.where(valid, 4 * d1 + f32, 0.0)
    p = torch.softmax(z, 1)
    onehot = F.one_hot(y.clamp(min=0), V).double()
    A = (g.abs().double() * valid)[:, None] * (p + onehot)
    r = 2 * torch.expm1(2 * d1) + 2 * u + 2 * (V + 4) * u32
    dz_err = A * r[:, None] + 2 * eta * valid[:, None]
    t_h = dz_err @ wq.abs() + (2 * u + 2 * V * u32) * (A @ wq.abs()) + 2 * eta
    t_w = dz_err.T @ hq.abs() + (2 * u + 2 * N * u32) * (A.T @ hq.abs()) + 2 * eta
    t_b = dz_err.sum(0) + (2 * u + 2 * N * u32) * A.sum(0) + 2 * eta
    return t_loss, t_h, t_w, t_b


def _assert_within(got, ref, bound, what):
    err = (got.double() - ref.double()).abs()
    assert bool((err <= bound).all()), f"{what}: max error {err.max().item():.3g} over bound, " \
        f"worst excess {(err - bound).max().item():.3g}"


@pytest.mark.parametrize("amp", AMP)
@pytest.mark.parametrize("h_amp", [False, True], ids=["fp32_hidden", "amp_hidden"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("impl", ["chunked", "reference"])
@pytest.mark.parametrize("use_onednn", [True, False], ids=["onednn", "torch_mm"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_equals_f_linear_under_autocast(amp, h_amp, reduction, impl, use_onednn, bias):
    """fp32 (or autocast-dtype) hidden with fp32 weight and bias: the loss equals
    F.cross_entropy(F.linear(h, w, b).float(), y) under the same autocast, every product runs in
    the autocast dtype, and the gradients come back in the inputs' own dtypes."""
    _amp_or_skip(amp)
    h, w, b, y = make(h_dtype=amp if h_amp else torch.float32, bias=bias)
    params = [t for t in (h, w, b) if t is not None]
    gout = torch.linspace(0.5, 1.5, N) if reduction == "none" else torch.ones(())
    with matmul.onednn(use_onednn), ProductDtypes() as rec:
        with torch.autocast("cpu", dtype=amp):
            got = hw.linear_cross_entropy(h, w, y, bias=b, reduction=reduction, impl=impl, chunk_size=8)
        grads = torch.autograd.grad((got * gout).sum(), params)
    assert rec.seen and all(set(dts) == {amp} for _, dts in rec.seen), rec.seen
    with torch.autocast("cpu", dtype=amp):
        ref = F.cross_entropy(F.linear(h, w, b).float(), y, reduction=reduction)
    ref_grads = torch.autograd.grad((ref * gout).sum(), params)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert [t.dtype for t in grads] == [t.dtype for t in params]
    assert grads[1].dtype == torch.float32 and grads[0].dtype == h.dtype
    n_valid = int((y != hw.IGNORE_INDEX).sum())
    g = gout.expand(N) / (n_valid if reduction == "mean" else 1)
    t_loss, t_h, t_w, t_b = _bounds(h, w, b, y, g, amp)
    if reduction == "none":
        _assert_within(got, ref, t_loss, "loss")
    else:
        total = t_loss.sum() / (n_valid if reduction == "mean" else 1)
        _assert_within(got, ref, total + 2 * N * torch.finfo(torch.float32).eps * ref.abs(), "loss")
    for what, a_, r_, t in zip(("dh", "dw", "db"), grads, ref_grads, (t_h, t_w, t_b)):
        _assert_within(a_, r_, t, what)


@pytest.mark.parametrize("amp", AMP)
def test_token_logprobs_under_autocast(amp):
    _amp_or_skip(amp)
    h, w, b, y = make(bias=True)
    gout = torch.linspace(-1.0, 2.0, N)
    with torch.autocast("cpu", dtype=amp):
        lp = hw.token_logprobs(h, w, y, bias=b, chunk_size=7)
        ls = torch.log_softmax(F.linear(h, w, b).float(), -1)
    ref = torch.where(y != hw.IGNORE_INDEX, ls.gather(1, y.clamp(min=0)[:, None]).squeeze(1), 0.0)
    assert lp.dtype == torch.float32
    t_loss, t_h, t_w, t_b = _bounds(h, w, b, y, gout, amp)
    _assert_within(lp, ref, t_loss, "logprob")
    got_g = torch.autograd.grad((lp * gout).sum(), (h, w, b))
    ref_g = torch.autograd.grad((ref * gout).sum(), (h, w, b))
    assert all(t.dtype == torch.float32 for t in got_g)
    for what, a_, r_, t in zip(("dh", "dw", "db"), got_g, ref_g, (t_h, t_w, t_b)):
        _assert_within(a_, r_, t, what)


OPTIONS = [dict(), dict(label_smoothing=0.1, z_loss=1e-2, softcap=4.0), dict(shift=True)]


@pytest.mark.parametrize("amp", AMP)
@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize("reduction,return_lse", [("mean", False), ("sum", True), ("none", False), ("none", True)])
@pytest.mark.parametrize("impl,chunk", [("chunked", None), ("chunked", 8), ("reference", None)])
def test_autocast_is_the_loss_of_the_cast_inputs(amp, opts, reduction, return_lse, impl, chunk):
    """Under autocast the loss is exactly the loss of hidden, weight and bias cast to the autocast
    dtype (every option, the lse and its gradient, the recomputing backward); the gradients are
    the same in the inputs' dtypes. The chunked weight and bias gradients are summed over chunks in
    float32 and not rounded to the autocast dtype (rounding them gives the cast inputs' gradients)."""
    _amp_or_skip(amp)
    h, w, b, y = make(bias=True)
    kw = dict(bias=b, reduction=reduction, impl=impl, chunk_size=chunk, return_lse=return_lse, **opts)
    with torch.autocast("cpu", dtype=amp):
        out = hw.linear_cross_entropy(h, w, y, **kw)
    hc, wc, bc = (t.detach().to(amp).requires_grad_() for t in (h, w, b))
    out_c = hw.linear_cross_entropy(hc, wc, y, **{**kw, "bias": bc})
    outs, outs_c = (out, out_c) if return_lse else ((out,), (out_c,))
    gout = torch.linspace(0.5, 1.5, N) if reduction == "none" else torch.ones(())
    obj = [(o_ * (gout if i == 0 else 0.3 * o_)).sum() for i, o_ in enumerate(outs)]
    obj_c = [(o_ * (gout if i == 0 else 0.3 * o_)).sum() for i, o_ in enumerate(outs_c)]
    for a_, c_ in zip(outs, outs_c):
        assert a_.dtype == c_.dtype == torch.float32
        torch.testing.assert_close(a_, c_, rtol=0, atol=0)
    got = torch.autograd.grad(sum(obj), (h, w, b))
    cast = torch.autograd.grad(sum(obj_c), (hc, wc, bc))
    assert all(t.dtype == torch.float32 for t in got) and all(t.dtype == amp for t in cast)
    for a_, c_ in zip(got, cast):
        torch.testing.assert_close(a_.to(amp), c_, rtol=0, atol=0)
    if impl == "chunked" and chunk is not None:  # five chunks: the sum over them is not an amp value
        assert bool((got[1] != got[1].to(amp).float()).any())


def test_float64_is_not_cast_and_mismatches_are_refused():
    h, w, _, y = make()
    hd, wd = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    plain = hw.linear_cross_entropy(hd, wd, y)
    with torch.autocast("cpu", dtype=torch.bfloat16), ProductDtypes() as rec:
        inside = hw.linear_cross_entropy(hd, wd, y)
        inside.backward()
    assert {dts for _, dts in rec.seen} == {(torch.float64, torch.float64)}
    torch.testing.assert_close(inside, plain, rtol=0, atol=0)
    assert hd.grad.dtype == wd.grad.dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as F.linear: float64 stays, the fp32 weight is cast
        with pytest.raises(ValueError, match=r"`weight` must be dtype torch.float64.*autocast.*"
                                             r"got torch.float32 \(cast to torch.bfloat16\)"):
            hw.linear_cross_entropy(hd, w, y)


@pytest.mark.parametrize("fn", [hw.linear_cross_entropy, hw.token_logprobs])
def test_outside_autocast_dtypes_must_match(fn):
    h, w, b, y = make(h_dtype=torch.bfloat16, bias=True)
    with pytest.raises(ValueError, match=r"`weight` must be dtype torch.bfloat16 \(same as hidden\), "
                                         r"got torch.float32$"):
        fn(h, w, y)
    with pytest.raises(ValueError, match=r"`bias` must be dtype torch.bfloat16 \(same as hidden\), got torch.float32$"):
        fn(h, w.detach().bfloat16(), y, bias=b)
    with torch.autocast("cpu", enabled=False):
        with pytest.raises(ValueError, match="weight.*dtype"):
            fn(h, w, y)


@pytest.mark.parametrize("gather_tokens,reduction", list(itertools.product([False, True], ["mean", "none"])))
def test_vocab_parallel_follows_autocast(one_rank_group, gather_tokens, reduction):
    from headway.loss.vocab_parallel import vocab_parallel_linear_cross_entropy

    amp = torch.bfloat16
    h, w, b, y = make(bias=True)
    gout = torch.linspace(0.5, 1.5, N) if reduction == "none" else torch.ones(())
    with ProductDtypes() as rec:
        with torch.autocast("cpu", dtype=amp):
            got = vocab_parallel_linear_cross_entropy(h, w, y, bias=b, chunk_size=8, reduction=reduction,
                                                      gather_tokens=gather_tokens)
        grads = torch.autograd.grad((got * gout).sum(), (h, w, b))
    assert rec.seen and all(set(dts) == {amp} for _, dts in rec.seen), rec.seen
    with torch.autocast("cpu", dtype=amp):
        ref = F.cross_entropy(F.linear(h, w, b).float(), y, reduction=reduction)
    ref_grads = torch.autograd.grad((ref * gout).sum(), (h, w, b))
    assert got.dtype == torch.float32 and all(t.dtype == torch.float32 for t in grads)
    n_valid = int((y != hw.IGNORE_INDEX).sum())
    g = gout.expand(N) / (n_valid if reduction == "mean" else 1)
    t_loss, t_h, t_w, t_b = _bounds(h, w, b, y, g, amp)
    if reduction == "mean":
        t_loss = t_loss.sum() / n_valid + 2 * N * torch.finfo(torch.float32).eps * ref.abs()
    _assert_within(got, ref, t_loss, "loss")
    for what, a_, r_, t in zip(("dh", "dw", "db"), grads, ref_grads, (t_h, t_w, t_b)):
        _assert_within(a_, r_, t, what)

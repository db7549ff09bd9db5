"""The chunked loss against the materializing reference, F.cross_entropy and HF's ForCausalLMLoss."""

import contextlib
import itertools
import os

import pytest
import torch
import torch.nn.functional as F

import headway as hw
from headway.cpu import has_avx512
from tests.support import random_loss_inputs

N, H, V = 37, 19, 1031


def make(dtype=torch.float64, bias=False, seed=0, lead=(N,), ignore_every=5):
    return random_loss_inputs(torch.Generator().manual_seed(seed), lead, H, V, dtype, bias, ignore_every)


def grads(loss, params):
    params = [p for p in params if p is not None]
    return torch.autograd.grad(loss.sum() if loss.dim() else loss, params)


OPTIONS = [
    dict(),
    dict(label_smoothing=0.1),
    dict(z_loss=1e-2),
    dict(softcap=2.5),
    dict(label_smoothing=0.2, z_loss=1e-3, softcap=4.0),
]


@pytest.mark.parametrize("opts,reduction,bias,shift,chunk",
                         list(itertools.product(OPTIONS, ["mean", "sum", "none"], [False, True], [False, True],
                                                [None, 1, 7, 64])))
def test_matches_reference_float64(opts, reduction, bias, shift, chunk):
    h, w, b, y = make(bias=bias, lead=(3, 13))
    kw = dict(bias=b, reduction=reduction, shift=shift, **opts)
    got = hw.linear_cross_entropy(h, w, y, chunk_size=chunk, impl="chunked", **kw)
    ref = hw.linear_cross_entropy(h, w, y, impl="reference", **kw)
    assert got.shape == ref.shape == ((3, 13) if reduction == "none" else ())
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    # a non-uniform incoming gradient exercises the rescaling paths
    gout = torch.rand_like(got) + 0.5
    for a_, b_ in zip(torch.autograd.grad((got * gout).sum(), [t for t in (h, w, b) if t is not None]),
                      torch.autograd.grad((ref * gout).sum(), [t for t in (h, w, b) if t is not None])):
        torch.testing.assert_close(a_, b_, rtol=1e-9, atol=1e-11)


def _product_path(enabled: bool):  # noqa: ANN202
    """Force the loss's float32 CPU products onto oneDNN (True) or torch.mm (False), on any CPU."""
    from headway.loss import matmul

    return matmul.onednn(enabled)


PATHS = [False, True] if torch.backends.mkldnn.is_available() else [False]


@pytest.mark.parametrize("onednn_path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_torch_cross_entropy(dtype, onednn_path):
    h, w, b, y = make(dtype=dtype, bias=True)
    with _product_path(onednn_path):
        _equals_torch_cross_entropy(h, w, b, y, dtype)


def _equals_torch_cross_entropy(h, w, b, y, dtype) -> None:
    for smoothing, red in itertools.product([0.0, 0.3], ["mean", "sum", "none"]):
        got = hw.linear_cross_entropy(h, w, y, bias=b, label_smoothing=smoothing, reduction=red, chunk_size=8)
        ref = F.cross_entropy(h @ w.T + b, y, label_smoothing=smoothing, reduction=red)
        tol = 1e-5 if dtype == torch.float32 else 1e-10
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
        for a_, b_ in zip(grads(got, (h, w, b)), grads(ref, (h, w, b))):
            torch.testing.assert_close(a_, b_, rtol=tol * 10, atol=tol)


def test_equals_hf_for_causal_lm_loss_with_shift_and_num_items():
    loss_utils = pytest.importorskip("transformers.loss.loss_utils")
    h, w, _, y = make(dtype=torch.float32, lead=(2, 17), ignore_every=4)
    num_items = int((y[:, 1:] != hw.IGNORE_INDEX).sum()) + 3  # as if accumulated over more batches
    for n in (None, num_items):
        ref = loss_utils.ForCausalLMLoss(h @ w.T, y, vocab_size=V, num_items_in_batch=n)
        got = hw.linear_cross_entropy(h, w, y, shift=True, num_items_in_batch=n, chunk_size=5)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        for a_, b_ in zip(grads(got, (h, w)), grads(ref, (h, w))):
            torch.testing.assert_close(a_, b_, rtol=1e-4, atol=1e-6)


def test_num_items_in_batch_divides_the_sum():
    h, w, _, y = make()
    total = hw.linear_cross_entropy(h, w, y, reduction="sum")
    torch.testing.assert_close(hw.linear_cross_entropy(h, w, y, num_items_in_batch=100), total / 100)
    torch.testing.assert_close(hw.linear_cross_entropy(h, w, y, num_items_in_batch=torch.tensor(100)),
                               total / 100)


@pytest.mark.parametrize("impl", ["chunked", "reference"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_gives_zero_loss_and_zero_grads(impl, reduction):
    h, w, b, y = make(bias=True)
    y[:] = hw.IGNORE_INDEX
    loss = hw.linear_cross_entropy(h, w, y, bias=b, reduction=reduction, impl=impl, z_loss=1e-3)
    assert torch.isfinite(loss).all() and float(loss.detach().sum()) == 0.0
    for g in grads(loss, (h, w, b)):
        assert torch.isfinite(g).all() and float(g.abs().sum()) == 0.0


def test_ignore_index_custom_and_lse():
    h, w, _, y = make(ignore_every=0)
    y[3] = 7777
    loss, lse = hw.linear_cross_entropy(h, w, y, ignore_index=7777, return_lse=True)
    logits = h @ w.T
    keep = torch.arange(N) != 3
    torch.testing.assert_close(loss, F.cross_entropy(logits[keep], y[keep]))
    torch.testing.assert_close(lse[keep], torch.logsumexp(logits[keep], -1))
    assert lse[3] == 0


def test_token_logprobs_equal_log_softmax_gather():
    h, w, b, y = make(bias=True)
    lp = hw.token_logprobs(h, w, y, bias=b, chunk_size=6)
    ls = torch.log_softmax(h @ w.T + b, -1)
    valid = y != hw.IGNORE_INDEX
    ref = torch.where(valid, ls.gather(1, y.clamp(min=0)[:, None]).squeeze(1), torch.zeros(()).double())
    torch.testing.assert_close(lp, ref)
    for a_, b_ in zip(grads(lp, (h, w, b)), grads(ref, (h, w, b))):
        torch.testing.assert_close(a_, b_)


def test_gradcheck_float64_all_options():
    h, w, b, y = make(bias=True, lead=(2, 5))
    h, w, b = (t.detach()[..., :] for t in (h, w[:23, :], b[:23]))
    y = y % 23
    y[0, 1] = hw.IGNORE_INDEX
    for red in ("mean", "none"):
        def f(h_, w_, b_, red=red):
            return hw.linear_cross_entropy(h_, w_, y, bias=b_, reduction=red, label_smoothing=0.1, z_loss=0.01,
                                           softcap=3.0, chunk_size=3)
        assert torch.autograd.gradcheck(f, (h.requires_grad_(), w.requires_grad_(), b.requires_grad_()))


def test_bfloat16_close_to_float32_and_fp32_weight_grad_accumulation():
    h, w, _, y = make(dtype=torch.float32, ignore_every=0)
    hb, wb = h.detach().bfloat16().requires_grad_(), w.detach().bfloat16().requires_grad_()
    got = hw.linear_cross_entropy(hb, wb, y, chunk_size=4)
    ref = hw.linear_cross_entropy(hb.float(), wb.float(), y, impl="reference")
    assert abs(got.item() - ref.item()) < 2e-2 * abs(ref.item())
    got.backward()
    assert hb.grad.dtype == torch.bfloat16 and wb.grad.dtype == torch.bfloat16
    wf = wb.detach().float().requires_grad_()
    (rgw,) = torch.autograd.grad(F.cross_entropy(hb.detach().float() @ wf.T, y), wf)
    assert F.cosine_similarity(wb.grad.float().flatten(), rgw.flatten(), dim=0) > 0.999


def test_only_some_inputs_require_grad():
    h, w, b, y = make(bias=True)
    w2 = w.detach()
    loss = hw.linear_cross_entropy(h, w2, y, bias=b.detach())
    (gh,) = torch.autograd.grad(loss, h)
    ref = F.cross_entropy(h @ w2.T + b.detach(), y)
    torch.testing.assert_close(gh, torch.autograd.grad(ref, h)[0])
    with torch.no_grad():
        torch.testing.assert_close(hw.linear_cross_entropy(h, w, y), F.cross_entropy(h @ w.T, y))


def test_second_backward_recomputes_instead_of_reusing_stolen_grads():
    h, w, _, y = make()
    loss = hw.linear_cross_entropy(h, w, y)
    loss.backward(retain_graph=True)
    first = h.grad.clone(), w.grad.clone()
    w.grad.mul_(0.0)  # the optimizer may mutate what autograd stored in .grad
    h.grad = None
    (2 * loss).backward()
    torch.testing.assert_close(h.grad, 2 * first[0])
    torch.testing.assert_close(w.grad, 2 * first[1])


def test_torch_compile_matches_eager():
    h, w, _, y = make(dtype=torch.float32, ignore_every=0)
    compiled = torch.compile(lambda a, b: hw.linear_cross_entropy(a, b, y, chunk_size=16), backend="eager")
    got = compiled(h, w)
    torch.testing.assert_close(got, F.cross_entropy(h @ w.T, y))
    for a_, b_ in zip(grads(got, (h, w)), grads(F.cross_entropy(h @ w.T, y), (h, w))):
        torch.testing.assert_close(a_, b_, rtol=1e-4, atol=1e-6)


BAD = [
    (dict(labels=torch.zeros(N, dtype=torch.float32)), "labels.*integer"),
    (dict(labels=torch.full((N,), V)), r"labels.*\[0, 1031\)"),
    (dict(labels=torch.full((N,), -3)), r"labels.*\[0, 1031\)"),
    (dict(labels=torch.zeros(N + 1, dtype=torch.long)), "labels.*shape"),
    (dict(weight=torch.randn(V, H + 1, dtype=torch.float64)), "hidden.*shape"),
    (dict(weight=torch.randn(V, H, dtype=torch.float32)), "weight.*dtype"),
    (dict(weight=torch.randn(V * H, dtype=torch.float64)), "weight.*2-D"),
    (dict(bias=torch.randn(V + 1, dtype=torch.float64)), "bias.*shape"),
    (dict(bias=torch.randn(V, dtype=torch.float32)), "bias.*dtype"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(reduction="avg"), "reduction"),
    (dict(impl="triton"), "impl"),
    (dict(label_smoothing=1.5), "label_smoothing"),
    (dict(softcap=0.0), "softcap"),
    (dict(z_loss=-1.0), "z_loss"),
    (dict(reduction="sum", num_items_in_batch=4), "num_items_in_batch"),
    (dict(num_items_in_batch=0), "num_items_in_batch"),
    (dict(impl="cce"), "cce"),
    (dict(softcap=float("inf")), "softcap"),
    (dict(softcap=float("nan")), "softcap"),
    (dict(softcap=-2.0), "softcap"),
    (dict(z_loss=float("nan")), "z_loss"),
    (dict(z_loss=float("inf")), "z_loss"),
    (dict(label_smoothing=float("nan")), "label_smoothing"),
    (dict(num_items_in_batch=float("inf")), "num_items_in_batch"),
    (dict(num_items_in_batch=float("nan")), "num_items_in_batch"),
    (dict(num_items_in_batch=-3), "num_items_in_batch"),
    (dict(weight=torch.randn(0, H, dtype=torch.float64)), r"weight.*at least one row"),
    (dict(weight=torch.randn(V, H, dtype=torch.float64, device="meta")), "weight.*meta"),
    (dict(hidden=torch.randn(N, H, dtype=torch.float64, device="meta")), "hidden.*meta"),
]


@pytest.mark.parametrize("override,match", BAD)
def test_bad_input_raises_value_error_naming_the_argument(override, match):
    h, w, _, y = make()
    kw = dict(hidden=h, weight=w, labels=y)
    kw.update(override)
    with pytest.raises(ValueError, match=match):
        hw.linear_cross_entropy(kw.pop("hidden"), kw.pop("weight"), kw.pop("labels"), **kw)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["chunked", "cce", "liger"])
def test_cuda_bf16_backends_match_reference(impl):
    if impl != "chunked":
        pytest.importorskip({"cce": "cut_cross_entropy", "liger": "liger_kernel"}[impl])
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(512, 256, device="cuda", generator=g).bfloat16().requires_grad_()
    w = (torch.randn(32003, 256, device="cuda", generator=g) * 0.05).bfloat16().requires_grad_()
    y = torch.randint(0, 32003, (512,), device="cuda", generator=g)
    y[::7] = -100
    got = hw.linear_cross_entropy(h, w, y, impl=impl)
    ref = hw.linear_cross_entropy(h.float(), w.float(), y, impl="reference")
    assert abs(got.item() - ref.item()) < 1e-2 * ref.item()
    gh, gw = torch.autograd.grad(got, (h, w))
    rh, rw = torch.autograd.grad(ref, (h, w))
    assert torch.nn.functional.cosine_similarity(gh.float().flatten(), rh.flatten(), dim=0) > 0.99
    assert torch.nn.functional.cosine_similarity(gw.float().flatten(), rw.flatten(), dim=0) > 0.99


@pytest.mark.parametrize("onednn_path", PATHS)
@pytest.mark.parametrize("dtype,scale", [(torch.float32, 60.0), (torch.float64, 400.0)])
def test_targets_whose_probability_underflows(dtype, scale, onednn_path):
    """lse is read off the target's softmax probability; where that underflows to 0 (a very wrong
    prediction with huge logits) it must be recomputed, not turned into an infinite loss (on both
    float32 product paths)."""
    with _product_path(onednn_path):
        _underflow(dtype, scale)


def _underflow(dtype: torch.dtype, scale: float) -> None:
    h, w, b, y = make(dtype=dtype, bias=True, ignore_every=0)
    with torch.no_grad():
        h.mul_(scale)
        z = h @ w.t() + b
        y[::2] = z.argmin(dim=1)[::2]  # every other target is the least likely word
        assert torch.softmax(z, 1).gather(1, y[:, None]).eq(0).any()
    for opts in OPTIONS:
        got = hw.linear_cross_entropy(h, w, y, bias=b, reduction="none", chunk_size=7, **opts)
        ref = hw.linear_cross_entropy(h, w, y, bias=b, reduction="none", impl="reference", **opts)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, ref, rtol=1e-5 if dtype == torch.float32 else 1e-10, atol=1e-4)
        ga = torch.autograd.grad(got.sum(), (h, w, b))
        gr = torch.autograd.grad(ref.sum(), (h, w, b))
        tol = 2e-3 if dtype == torch.float32 else 1e-9  # float32 logits of size ~500 carry ~3e-5 of rounding
        for a_, b_ in zip(ga, gr):
            torch.testing.assert_close(a_, b_, rtol=tol, atol=tol)


def test_onednn_products_equal_torch_mm_in_float32():
    """float32 CPU products go through oneDNN (headway.loss.matmul); the loss and every gradient
    match the torch.mm path to float32 rounding, and the switch really changes the path."""
    from headway.loss import matmul

    h, w, b, y = make(dtype=torch.float32, bias=True, lead=(5, 41))
    a, bt = torch.randn(37, 19), torch.randn(1031, 19)
    torch.testing.assert_close(matmul.mm_nt(a, bt), a @ bt.t(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(matmul.mm_nt(a, bt.t().contiguous().t()), a @ bt.t(), rtol=1e-5, atol=1e-5)
    results = []
    default = matmul.use_onednn(h)  # on where the CPU has AVX-512 (HEADWAY_ONEDNN overrides)
    assert default == (torch.backends.mkldnn.is_available() and os.environ.get(
        "HEADWAY_ONEDNN", "1" if has_avx512() else "0") != "0")
    for enabled in (True, False):
        with matmul.onednn(enabled):
            assert matmul.use_onednn(h) == (enabled and torch.backends.mkldnn.is_available())
            loss = hw.linear_cross_entropy(h, w, y, bias=b, z_loss=1e-3, softcap=5.0, chunk_size=16)
            results.append((loss, *torch.autograd.grad(loss, (h, w, b))))
        assert matmul.use_onednn(h) == default  # the block's setting ended with it
    for x, z in zip(*results):
        torch.testing.assert_close(x, z, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("use_loss", [True, False])
def test_returned_lse_is_differentiable(opts, reduction, use_loss):
    """The lse is an output: the z-loss recipe `loss + c * lse**2` (CCE's) and an lse-only objective
    get the reference's gradients, through softcap and with ignored tokens (whose lse is 0)."""
    h, w, b, y = make(bias=True, lead=(3, 11))
    params = (h, w, b)
    outs = {}
    for impl in ("chunked", "reference"):
        loss, lse = hw.linear_cross_entropy(h, w, y, bias=b, reduction=reduction, impl=impl, chunk_size=5,
                                            return_lse=True, **opts)
        assert lse.requires_grad
        obj = 0.37 * (lse.square() * torch.linspace(0.5, 2, lse.numel()).double().view_as(lse)).sum()
        if use_loss:
            obj = obj + loss.sum()
        outs[impl] = (loss.detach(), lse.detach(), torch.autograd.grad(obj, params))
    ignored = y == hw.IGNORE_INDEX
    assert bool((outs["chunked"][1][ignored] == 0).all())
    torch.testing.assert_close(outs["chunked"][0], outs["reference"][0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(outs["chunked"][1][~ignored], outs["reference"][1][~ignored], rtol=1e-10, atol=1e-10)
    for a_, b_ in zip(outs["chunked"][2], outs["reference"][2]):
        torch.testing.assert_close(a_, b_, rtol=1e-9, atol=1e-11)


def test_lse_gradcheck_float64():
    h, w, b, y = make(bias=True, lead=(2, 5))
    h, w, b = (t.detach() for t in (h, w[:23, :], b[:23]))
    y = y % 23

    def f(h_, w_, b_):
        loss, lse = hw.linear_cross_entropy(h_, w_, y, bias=b_, softcap=3.0, z_loss=0.01, chunk_size=3,
                                            return_lse=True)
        return loss + 0.1 * lse.square().sum()
    assert torch.autograd.gradcheck(f, (h.requires_grad_(), w.requires_grad_(), b.requires_grad_()))


def _products(fn) -> int:
    """How many matrix products `fn` runs (mm / addmm / addmm_), counted by the profiler."""
    from torch.profiler import ProfilerActivity, profile

    from headway.loss.matmul import onednn

    with onednn(False), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key in ("aten::mm", "aten::addmm", "aten::addmm_"))


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_no_gradient_work_when_autograd_is_off(mode):
    """Evaluation under no_grad must not compute dE and dW: one product per chunk, not three."""
    h, w, b, y = make(dtype=torch.float32, bias=True, ignore_every=0)
    chunks = -(-N // 8)
    ctx = torch.no_grad if mode == "no_grad" else torch.inference_mode
    with ctx():
        assert _products(lambda: hw.linear_cross_entropy(h, w, y, bias=b, chunk_size=8)) == chunks
    assert _products(lambda: hw.linear_cross_entropy(h, w, y, bias=b, chunk_size=8)) == 3 * chunks


@pytest.mark.parametrize("opts", [dict(), dict(z_loss=1e-2)])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_single_softmax_road_equals_the_separate_passes(opts, reduction):
    """The CPU chunk's one in-place softmax (`_fused_chunk`) and the separate max/exp/sum passes give
    the same loss, lse and gradients (with bias, z-loss and a used lse), and the switch is scoped."""
    from headway.loss import core

    h, w, b, y = make(bias=True, lead=(3, 13))
    results = []
    for passes in (False, True):
        with core.separate_passes() if passes else contextlib.nullcontext():
            assert core.FUSED_ON_CPU is not passes
            loss, lse = hw.linear_cross_entropy(h, w, y, bias=b, reduction=reduction, chunk_size=5,
                                                return_lse=True, **opts)
            obj = loss.sum() + 0.3 * lse.square().sum()
            results.append((loss, lse, *torch.autograd.grad(obj, (h, w, b))))
    assert core.FUSED_ON_CPU
    for a_, b_ in zip(*results):
        torch.testing.assert_close(a_, b_, rtol=1e-12, atol=1e-12)


# (options, the term added to sum_t g_t loss_t): a used lse (its weight in every row), none (rows whose
# loss weight is zero have c = 0 and g = 0), minus the lse (c = 0 with g != 0: the one-hot on the small side)
TERMS = [(dict(), "lse^2"), (dict(z_loss=1e-2), "lse^2"), (dict(), "none"), (dict(), "minus lse")]


@pytest.mark.parametrize("opts,term", TERMS)
@pytest.mark.parametrize("block_rows", [1, 3, 64])
@pytest.mark.parametrize("underflow", [False, True])
def test_16bit_softmax_in_row_blocks_equals_the_separate_passes(opts, term, block_rows, underflow, monkeypatch):
    """16-bit inputs on CPU: the fused road's float32 softmax works on a few rows at a time (a last
    block and a last chunk shorter than the rest, per-token weights with zeros, rows with c = 0,
    targets whose p_y underflows) and gives the separate passes' loss and lse to float32 rounding
    and their gradients to one rounding of dz to bf16; against float64, each row's loss and lse are
    within the rounding of its logits to bf16 and the gradients within a few bf16 roundings."""
    from headway.loss import core

    g = torch.Generator().manual_seed(3)
    N, H, V = 53, 24, 211
    w = (torch.randn(V, H, generator=g) * 0.5).bfloat16()
    h = torch.randn(N, H, generator=g).bfloat16()
    y = torch.randint(0, V, (N,), generator=g)
    huge = 4 if underflow else 0
    h[:huge] *= 40  # huge logits: the target's p_y underflows on these rows
    y[:huge] = (h[:huge].float() @ w.float().T).argmin(dim=1)
    gout = torch.linspace(0.5, 1.5, N)
    gout[5::7] = 0.0  # rows whose loss weight is zero

    def objective(loss: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
        gw = gout.to(loss.dtype)
        extra = {"lse^2": 0.3 * lse.square().sum(), "none": 0.0, "minus lse": -(gw * lse).sum()}[term]
        return (loss * gw).sum() + extra

    monkeypatch.setattr(core, "SOFTMAX_BLOCK_BYTES", 4 * V * block_rows)
    taken = []
    fused_low = core._fused_low_chunk
    monkeypatch.setattr(core, "_fused_low_chunk", lambda *a: taken.append(1) or fused_low(*a))
    results = []
    for passes in (False, True):
        hb, wb = h.clone().requires_grad_(), w.clone().requires_grad_()
        with core.separate_passes() if passes else contextlib.nullcontext():  # backward recomputes: inside
            loss, lse = hw.linear_cross_entropy(hb, wb, y, reduction="none", chunk_size=16, return_lse=True, **opts)
            objective(loss, lse).backward()
        assert torch.isfinite(loss).all()
        results.append((loss, lse, hb.grad, wb.grad))
        assert bool(taken) is not passes  # the fused road ran (and only without separate_passes)
        taken.clear()
    hd, wd = h.double().requires_grad_(), w.double().requires_grad_()
    loss_d, lse_d = hw.linear_cross_entropy(hd, wd, y, reduction="none", impl="reference", return_lse=True, **opts)
    objective(loss_d, lse_d).backward()
    (fl, fs, fgh, fgw), (sl, ss, sgh, sgw) = results
    zmax = (h.double() @ w.double().T).abs().amax(dim=1)  # (N,) each row's largest |logit|
    eps32, u = torch.finfo(torch.float32).eps, 2.0**-8  # float32's and bf16's unit roundoff
    scale = 1 + 2 * opts.get("z_loss", 0.0) * zmax  # the z-loss term multiplies an lse error by at most this
    for got, other, ref in ((fl, sl, loss_d), (fs, ss, lse_d)):  # per row: the two roads, then float64
        assert bool(((got - other).abs().double() <= 16 * eps32 * (zmax + 1) * scale).all())
        assert bool(((got.double() - ref.detach()).abs() <= 4 * u * zmax * scale).all())
    for got, other, ref in ((fgh, sgh, hd.grad), (fgw, sgw, wd.grad)):
        assert float((got.double() - other.double()).norm() / ref.norm()) < 2 * u
    # against float64: the huge rows' bf16 products are off by more than their softmax's width
    assert float((fgh[huge:].double() - hd.grad[huge:]).norm() / hd.grad[huge:].norm()) < 8 * u
    if not underflow:
        assert float((fgw.double() - wd.grad).norm() / wd.grad.norm()) < 8 * u


def test_fp16_rows_whose_lse_weight_nearly_cancels_keep_finite_gradients():
    """fp16: when c_t, the weight of softmax(z)_t, is tiny against g_t (a loss minus almost the
    same lse), g / c is beyond fp16's range; those rows keep the one-hot on the small side, so the
    gradients stay finite and equal float64's within fp16 rounding."""
    g = torch.Generator().manual_seed(0)
    N, H, V = 29, 16, 97
    h, w = torch.randn(N, H, generator=g).half(), (torch.randn(V, H, generator=g) * 0.5).half()
    y = torch.randint(0, V, (N,), generator=g)
    grads = []
    for hh, ww, impl in ((h.clone(), w.clone(), "chunked"), (h.double(), w.double(), "reference")):
        hh.requires_grad_(), ww.requires_grad_()
        loss, lse = hw.linear_cross_entropy(hh, ww, y, reduction="sum", impl=impl, chunk_size=8, return_lse=True)
        (loss - 0.99999 * lse.sum()).backward()
        grads.append((hh.grad, ww.grad))
    u = 2.0**-11  # fp16's unit roundoff
    for got, ref in zip(*grads):
        assert torch.isfinite(got).all()
        assert float((got.double() - ref).norm() / ref.norm()) < 8 * u


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_buffers_kept_from_inference_mode_serve_later_training_calls(dtype):
    """The loss keeps its chunk buffers across calls; made under `torch.inference_mode()` (an
    evaluation first) they must still be writable by a later call that trains, on every road."""
    from headway.loss.core import ChunkBuffers

    g = torch.Generator().manual_seed(0)
    N, H, V = 8, 16, 6007
    h, w = torch.randn(N, H, generator=g).to(dtype), torch.randn(V, H, generator=g).to(dtype)
    y, b = torch.randint(0, V, (N,), generator=g), torch.randn(V, generator=g).to(dtype)
    for kw in (dict(), dict(label_smoothing=0.1), dict(bias=b), dict(softcap=5.0)):
        ChunkBuffers._kept.__dict__.clear()  # the first call of each road makes its buffers
        with torch.inference_mode():
            hw.linear_cross_entropy(h, w, y, **kw)
        hh = h.clone().requires_grad_()
        hw.linear_cross_entropy(hh, w, y, **kw).backward()
        assert torch.isfinite(hh.grad).all()


@pytest.mark.parametrize("rows,cols,block_bytes", [(0, 5, 4), (1, 1, 4), (37, 13, 4 * 13 * 5), (211, 24, 2**20)])
def test_add_rows_equals_one_add(rows, cols, block_bytes):
    """`add_rows` (dst += src in row blocks, for a bf16 product into a float32 sum) equals one add."""
    from headway.loss.core import add_rows

    g = torch.Generator().manual_seed(0)
    dst, src = torch.randn(rows, cols, generator=g), torch.randn(rows, cols, generator=g).bfloat16()
    want = dst + src.float()
    add_rows(dst, src, block_bytes)
    torch.testing.assert_close(dst, want, rtol=0, atol=0)


@pytest.mark.parametrize("passes", ["fused", "separate"])
def test_bfloat16_gradients_of_confident_tokens_keep_p_minus_one(passes):
    """Confident tokens (1 - p_y below bf16's resolution at 1): dz_y = g (p_y - 1) must survive the
    rounding to bf16 on both CPU roads; the error against float64 on the same rounded inputs stays
    a few bf16 roundings of the gradient, not the size of the gradient itself."""
    from headway.loss.core import separate_passes

    g = torch.Generator().manual_seed(0)
    N, H, V = 96, 32, 211
    w = torch.randn(V, H, generator=g).bfloat16()
    y = torch.randint(0, V, (N,), generator=g)
    noise = torch.randn(N, H, generator=g)
    for scale in (0.5, 0.75, 1.0, 1.5, 2.0):  # the smallest scale whose tokens are confident in bf16's terms
        h = (scale * w[y].float() + 0.1 * noise).bfloat16()
        p_y = torch.softmax(h.double() @ w.double().T, 1).gather(1, y[:, None])
        if float((1 - p_y).median()) < 2.0**-9:
            break
    assert float((1 - p_y).median()) < 2.0**-9 and float((1 - p_y).min()) > 0
    hd, wd = h.double().requires_grad_(), w.double().requires_grad_()
    F.cross_entropy(hd @ wd.T, y).backward()
    hb, wb = h.clone().requires_grad_(), w.clone().requires_grad_()
    with separate_passes() if passes == "separate" else contextlib.nullcontext():
        hw.linear_cross_entropy(hb, wb, y, chunk_size=32).backward()
    u = 2.0**-8  # bf16's unit roundoff
    for got, ref in ((hb.grad, hd.grad), (wb.grad, wd.grad)):
        rel = float((got.double() - ref).norm() / ref.norm())
        assert rel < 8 * u, rel

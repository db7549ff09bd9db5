"""The fused distillation loss against its float64 full-logit reference, on every option; gradients
reach the student only; no tensor of the (N, V) logits' size ever exists."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import headway as hw
from headway.loss.reference import reference_distillation

N, H, HT, V = 37, 11, 13, 301  # N not a multiple of the chunk sizes below


def tol(dtype: torch.dtype) -> float:
    """Tolerance from the dtype: 1024 ulps at 1 (measured errors: about 60 ulps on the loss, 15 on the
    gradients, at V=1031 with chunks of 13 tokens)."""
    return 1024 * torch.finfo(dtype).eps


def make(dtype=torch.float64, lead=(N,), v=V, h=H, ht=HT, bias=False, ignore_every=4, seed=0,  # noqa: ANN001, ANN201
         ignore_index=hw.IGNORE_INDEX):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(*lead, h, dtype=dtype, generator=g).requires_grad_()
    w = (torch.randn(v, h, dtype=dtype, generator=g) * 0.5).requires_grad_()
    t = torch.randn(*lead, ht, dtype=dtype, generator=g).requires_grad_()  # requires grad: it must get none
    tw = (torch.randn(v, ht, dtype=dtype, generator=g) * 0.5).requires_grad_()
    y = torch.randint(0, v, lead, generator=g)
    if ignore_every:
        y.view(-1)[::ignore_every] = ignore_index
    b = (torch.randn(v, dtype=dtype, generator=g) * 0.3).requires_grad_() if bias else None
    tb = (torch.randn(v, dtype=dtype, generator=g) * 0.3) if bias else None
    return s, w, t, tw, y, b, tb


def check(kw: dict, chunk: int | None, dtype=torch.float64, lead=(N,), bias=False, **shape) -> None:  # noqa: ANN001
    """The fused loss and its gradients (under a non-uniform incoming gradient) equal the reference's."""
    s, w, t, tw, y, b, tb = make(dtype, lead, bias=bias, ignore_index=kw.get("ignore_index", hw.IGNORE_INDEX), **shape)
    if "ignore_index" in kw:
        y[y == hw.IGNORE_INDEX] = 0  # -100 is a bad label when another id is the ignored one
    got = hw.distillation_loss(s, w, t, tw, y, student_bias=b, teacher_bias=tb, chunk_size=chunk, **kw)
    ref = reference_distillation(s, w, t, tw, y, student_bias=b, teacher_bias=tb, **kw)
    assert got.shape == ref.shape and got.dtype == dtype
    torch.testing.assert_close(got.double(), ref, rtol=tol(dtype), atol=tol(dtype))
    gout = torch.rand(ref.shape, dtype=torch.float64) + 0.5
    params = [p for p in (s, w, b) if p is not None]
    for a, r in zip(torch.autograd.grad((got * gout.to(dtype)).sum(), params),
                    torch.autograd.grad((ref * gout).sum(), params)):
        torch.testing.assert_close(a.double(), r.double(), rtol=tol(dtype), atol=tol(dtype))


KINDS = ["kl", "reverse_kl", "jsd"]
OPTIONS = [
    dict(),
    dict(temperature=1.0),
    dict(temperature=4.0, alpha=1.0),
    dict(alpha=0.0),
    dict(alpha=0.8, beta=0.1),
    dict(alpha=0.3, beta=0.9, temperature=0.5),
    dict(softcap=3.0),
    dict(teacher_softcap=2.0, temperature=1.5),
    dict(softcap=5.0, teacher_softcap=4.0, alpha=0.6),
    dict(ignore_index=7),
]


@pytest.mark.parametrize("kind,opts,reduction,chunk",
                         list(itertools.product(KINDS, OPTIONS, ["mean", "sum", "none"], [None, 1, 7])))
def test_matches_the_float64_reference(kind, opts, reduction, chunk):
    check(dict(kind=kind, reduction=reduction, **opts), chunk)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bias_num_items_and_two_dimensional_tokens(kind, dtype):
    check(dict(kind=kind, num_items_in_batch=50), 5, dtype, lead=(3, 13), bias=True)
    check(dict(kind=kind, reduction="none", temperature=3.0), 6, dtype, lead=(3, 13), bias=True)
    check(dict(kind=kind, alpha=0.7), None, dtype, v=1031, h=32, ht=48)


@settings(max_examples=60)
@given(n=st.integers(1, 30), v=st.integers(2, 200), h=st.integers(1, 9), ht=st.integers(1, 9),
       kind=st.sampled_from(KINDS), reduction=st.sampled_from(["mean", "sum", "none"]),
       alpha=st.floats(0, 1), temperature=st.floats(0.25, 8), beta=st.floats(0.05, 0.95),
       softcap=st.one_of(st.none(), st.floats(1, 20)), ignore_every=st.integers(0, 5),
       chunk=st.one_of(st.none(), st.integers(1, 40)), seed=st.integers(0, 2**16))
def test_property_equals_the_reference(n, v, h, ht, kind, reduction, alpha, temperature, beta, softcap,
                                       ignore_every, chunk, seed):
    check(dict(kind=kind, reduction=reduction, alpha=alpha, temperature=temperature, beta=beta, softcap=softcap),
          chunk, lead=(n,), v=v, h=h, ht=ht, ignore_every=ignore_every, seed=seed)


def test_gradients_reach_the_student_only():
    s, w, t, tw, y, b, tb = make(bias=True)
    teacher_bias = tb.requires_grad_()
    hw.distillation_loss(s, w, t, tw, y, student_bias=b, teacher_bias=teacher_bias, kind="jsd").backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (s, w, b))
    assert t.grad is None and tw.grad is None and teacher_bias.grad is None
    # through a teacher module: its parameters get no gradient either, and the loss needs none of them
    teacher = torch.nn.Linear(HT, HT, dtype=torch.float64)
    out = hw.distillation_loss(s, w, teacher(t), tw, y, reduction="none").sum()
    out.backward()
    assert teacher.weight.grad is None and teacher.bias.grad is None


def test_the_divergence_is_zero_when_the_student_is_the_teacher():
    s, w, _, _, y, _, _ = make()
    for kind in KINDS:
        loss = hw.distillation_loss(s, w, s, w, y, alpha=1.0, kind=kind, reduction="none")
        torch.testing.assert_close(loss, torch.zeros_like(loss), atol=1e-12, rtol=0)
        g = torch.autograd.grad(loss.sum(), [s, w])
        assert all(x.abs().max() < 1e-12 for x in g)


def test_alpha_zero_is_the_cross_entropy():
    s, w, t, tw, y, _, _ = make()
    got = hw.distillation_loss(s, w, t, tw, y, alpha=0.0)
    torch.testing.assert_close(got, hw.linear_cross_entropy(s, w, y), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_no_valid_label_gives_zero_loss_and_zero_gradients(reduction):
    s, w, t, tw, y, _, _ = make()
    y.fill_(hw.IGNORE_INDEX)
    loss = hw.distillation_loss(s, w, t, tw, y, reduction=reduction)
    assert float(loss.detach().abs().sum()) == 0.0
    gs, gw = torch.autograd.grad(loss.sum(), [s, w])
    assert float(gs.abs().sum()) == 0.0 and float(gw.abs().sum()) == 0.0


def test_odd_sizes():
    for n, v, h, ht, chunk in [(1, 2, 1, 1, 1), (2, 3, 1, 5, 1), (5, 2, 3, 1, 2), (17, 257, 2, 3, 16)]:
        for kind in KINDS:
            check(dict(kind=kind, reduction="none"), chunk, lead=(n,), v=v, h=h, ht=ht, ignore_every=0)


def test_a_second_backward_recomputes():
    s, w, t, tw, y, _, _ = make()
    loss = hw.distillation_loss(s, w, t, tw, y, kind="reverse_kl")
    first = torch.autograd.grad(loss, [s, w], retain_graph=True)
    second = torch.autograd.grad(loss * 3, [s, w])
    for a, b in zip(first, second):
        torch.testing.assert_close(3 * a, b)


def test_no_gradient_work_under_no_grad():
    s, w, t, tw, y, _, _ = make()
    with torch.no_grad():
        loss = hw.distillation_loss(s, w, t, tw, y)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, reference_distillation(s, w, t, tw, y).detach(), rtol=1e-12, atol=1e-12)


class _Sizes(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("kind,reduction", [("kl", "mean"), ("jsd", "none"), ("reverse_kl", "sum")])
def test_no_tensor_of_the_logits_size_exists(kind, reduction):
    n, v, chunk = 64, 509, 8
    s, w, t, tw, y, _, _ = make(torch.float32, (n,), v=v, h=16, ht=24)
    with _Sizes() as sizes:
        loss = hw.distillation_loss(s, w, t, tw, y, kind=kind, reduction=reduction, chunk_size=chunk, softcap=9.0)
        loss.sum().backward()
    # the largest tensors are the weights (and dW) and one chunk's logits: nothing of (n, V)'s size
    assert sizes.largest <= max(chunk * v, v * 24) < n * v


def test_autocast_bf16_on_cpu_is_close_and_the_weight_gradient_stays_float32():
    s, w, t, tw, y, _, _ = make(torch.float32, v=509, h=32, ht=32)
    ref = hw.distillation_loss(s, w, t, tw, y)
    g_ref = torch.autograd.grad(ref, [w])[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = hw.distillation_loss(s, w, t, tw, y)
    g = torch.autograd.grad(got, [w])[0]
    assert got.dtype == torch.float32 and g.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=3e-2, atol=3e-2)
    assert float((g - g_ref).norm() / g_ref.norm()) < 5e-2


@pytest.mark.parametrize("override,match", [
    (dict(alpha=1.5), "`alpha` must be a number in \\[0, 1\\]"),
    (dict(temperature=0.0), "`temperature` must be a finite number > 0"),
    (dict(kind="kld"), "`kind` must be one of kl | reverse_kl | jsd"),
    (dict(beta=1.0), "`beta` must be a number in \\(0, 1\\)"),
    (dict(teacher_softcap=-1.0), "`teacher_softcap`"),
    (dict(softcap=0.0), "distillation_loss: `softcap`"),
    (dict(reduction="avg"), "distillation_loss: `reduction`"),
    (dict(teacher_weight=torch.zeros(V + 1, HT, dtype=torch.float64)), "`teacher_weight` must be \\(V, Ht\\)"),
    (dict(teacher_hidden=torch.zeros(N - 1, HT, dtype=torch.float64)), "`teacher_hidden` must be"),
    (dict(teacher_weight=torch.zeros(V, HT, dtype=torch.float32)), "`teacher_weight` must have"),
])
def test_bad_arguments_raise_naming_the_argument(override, match):
    s, w, t, tw, y, _, _ = make()
    args = dict(student_hidden=s, student_weight=w, teacher_hidden=t, teacher_weight=tw, labels=y)
    kw = {k: v for k, v in override.items() if k not in args}
    args.update({k: v for k, v in override.items() if k in args})
    with pytest.raises(ValueError, match=match):
        hw.distillation_loss(**args, **kw)

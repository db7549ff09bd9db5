"""Rotary embedding: the whole-tensor form `rope` computes equals the pairwise definition
(x1 cos a - x2 sin a, x2 cos a + x1 sin a) on each interleaved pair, bit for bit in every dtype,
gradients included, on odd shapes and positions that do not start at zero."""

import pytest
import torch

from headway.models.transformer import rope, rope_table


def pairwise(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """The definition, pair by pair, from the angles pos · θ^(-2i/hd)."""
    hd = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    ang = pos[:, None, :, None].float() * inv
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 3, 7, 8), (1, 5, 13, 2), (3, 1, 1, 34)])
def test_rope_equals_the_pairwise_definition(dtype, shape):
    g = torch.Generator().manual_seed(sum(shape))
    B, nh, S, hd = shape
    pos = torch.randint(0, 1000, (B, S), generator=g)
    x = torch.randn(shape, generator=g).to(dtype).requires_grad_()
    ref = x.detach().clone().requires_grad_()
    y, y_ref = rope(x, rope_table(pos, hd, 10000.0)), pairwise(ref, pos, 10000.0)
    assert y.dtype == dtype and torch.equal(y, y_ref)
    grad = torch.randn(shape, generator=g).to(dtype)
    y.backward(grad)
    y_ref.backward(grad)
    assert torch.equal(x.grad, ref.grad)


def test_rope_is_a_rotation():
    """Each pair keeps its length (to the float32 tables' precision), and position 0 is the identity."""
    x = torch.randn(2, 3, 11, 16, dtype=torch.float64)
    pos = torch.arange(11).expand(2, 11)
    y = rope(x, rope_table(pos, 16, 500.0))
    norms = lambda t: t.unflatten(-1, (-1, 2)).norm(dim=-1)  # noqa: E731
    assert torch.allclose(norms(y), norms(x), rtol=1e-6, atol=0)
    assert torch.equal(y[:, :, 0], x[:, :, 0])

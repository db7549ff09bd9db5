"""The MFU that `headway train` prints: `flops_per_token` against torch's own FLOP counter on a real
forward+backward (odd sizes, tied and untied heads, both backbones), and the measured matmul peak."""

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from headway.loss import matmul
from headway.models import build_model
from headway.train.flops import flops_per_token, matmul_peak
from headway.types import Batch, Vocab


def _linear_pointwise_flop(x_shape, w_shape, *args, **kwargs) -> int:
    """oneDNN's linear, x (..., K) @ w (M, K)ᵀ: 2·(rows of x)·K·M, as torch counts `mm`. torch's counter
    has no formula for it, so without this the loss's products on the oneDNN path would go uncounted."""
    return 2 * math.prod(x_shape[:-1]) * x_shape[-1] * w_shape[0]


COUNT_ALSO = {torch.ops.mkldnn._linear_pointwise: _linear_pointwise_flop}  # keyed by the op, as torch looks up
PATHS = [False, True] if matmul._AVAILABLE else [False]  # both product paths, forced, on any CPU


def _counted_per_token(model, vocab: Vocab, B: int, S: int, onednn_path: bool) -> float:
    """FLOPs torch counts in one forward+backward of B causal rows of S tokens, per token, with the
    loss's products forced onto one path (oneDNN or `torch.mm`): the count is the model's, whichever
    kernels this CPU would pick. The math attention kernel runs QKᵀ and AV as counted batched products
    over the whole S×S map (the convention's 12·L·H·S); the fused CPU kernel is not counted by torch."""
    ids = torch.randint(0, vocab.size, (B, S))
    batch = Batch(ids, ids.clone(), torch.arange(S).expand(B, S).clone(), torch.zeros(B, S, dtype=torch.long),
                  torch.zeros(B, 1, dtype=torch.long))
    with (matmul.onednn(onednn_path), sdpa_kernel(SDPBackend.MATH),
          FlopCounterMode(display=False, custom_mapping=COUNT_ALSO) as fc):
        model(batch).backward()
    return fc.get_total_flops() / (B * S)


@pytest.mark.parametrize("onednn_path", PATHS)
@pytest.mark.parametrize("size,tied,S", [("tiny", True, 37), ("tiny", False, 29), ("small", True, 19)])
def test_transformer_flops_per_token_equal_what_torch_counts(size, tied, S, onednn_path):
    vocab = Vocab(base_size=301, num_sentinels=4)
    model = build_model(vocab, "transformer", size, tie_head=tied)
    assert flops_per_token(model, S) == _counted_per_token(model, vocab, 3, S, onednn_path)


@pytest.mark.parametrize("onednn_path", PATHS)
def test_gated_ssm_flops_per_token_count_its_products_not_its_kernel_parameters(onednn_path):
    # its state-space parameters (dim >= 2) make the convolution kernel once per sequence: they are not
    # per-token products, so counting them as 6·N would overstate its MFU
    vocab = Vocab(base_size=301, num_sentinels=4)
    model = build_model(vocab, "gated_ssm", "tiny")
    S = 37
    counted = _counted_per_token(model, vocab, 3, S, onednn_path)
    assert 0.97 * counted <= flops_per_token(model, S) <= counted  # only the per-sequence kernel is left out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matmul_peak_is_a_finite_rate_in_every_precision(dtype):
    peak = matmul_peak(dtype, torch.device("cpu"))
    assert math.isfinite(peak) and peak > 1e7  # FLOP/s; bf16/fp16 may be emulated (~1 GFLOP/s) on this CPU

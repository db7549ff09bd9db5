"""The MFU that `headway train` prints: `flops_per_token` against torch's own FLOP counter on a real
forward+backward (odd sizes, tied and untied heads, both backbones), and the measured matmul peak."""

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from headway.models import build_model
from headway.train.flops import flops_per_token, matmul_peak
from headway.types import Batch, Vocab


def _counted_per_token(model, vocab: Vocab, B: int, S: int) -> float:
    """FLOPs torch counts in one forward+backward of B causal rows of S tokens, per token. The math
    attention kernel runs QKᵀ and AV as counted batched products over the whole S×S map (the
    convention's 12·L·H·S); the fused CPU kernel is not counted by torch."""
    ids = torch.randint(0, vocab.size, (B, S))
    batch = Batch(ids, ids.clone(), torch.arange(S).expand(B, S).clone(), torch.zeros(B, S, dtype=torch.long),
                  torch.zeros(B, 1, dtype=torch.long))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        model(batch).backward()
    return fc.get_total_flops() / (B * S)


@pytest.mark.parametrize("size,tied,S", [("tiny", True, 37), ("tiny", False, 29), ("small", True, 19)])
def test_transformer_flops_per_token_equal_what_torch_counts(size, tied, S):
    vocab = Vocab(base_size=301, num_sentinels=4)
    model = build_model(vocab, "transformer", size, tie_head=tied)
    assert flops_per_token(model, S) == _counted_per_token(model, vocab, 3, S)


def test_gated_ssm_flops_per_token_count_its_products_not_its_kernel_parameters():
    # its state-space parameters (dim >= 2) make the convolution kernel once per sequence: they are not
    # per-token products, so counting them as 6·N would overstate its MFU
    vocab = Vocab(base_size=301, num_sentinels=4)
    model = build_model(vocab, "gated_ssm", "tiny")
    S = 37
    counted = _counted_per_token(model, vocab, 3, S)
    assert 0.97 * counted <= flops_per_token(model, S) <= counted  # only the per-sequence kernel is left out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matmul_peak_is_a_finite_rate_in_every_precision(dtype):
    peak = matmul_peak(dtype, torch.device("cpu"))
    assert math.isfinite(peak) and peak > 1e7  # FLOP/s; bf16/fp16 may be emulated (~1 GFLOP/s) on this CPU

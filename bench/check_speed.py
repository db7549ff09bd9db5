"""Seconds per causality check (default settings: both detectors, train and eval, lengths 15, 16,
17, 33, two rows, packed) for the default `headway train` model and a 4-layer HF Llama, and the
smallest leak each detector catches, as a fraction of the legitimate dependence.

    python bench/check_speed.py
"""

import time

import torch
from torch import nn

from headway.check import check_causal
from headway.models import build_model
from headway.types import Vocab


class TinyLeak(nn.Module):
    """y[t] = running mean of x[..t] + eps * x[t+1]: a future dependence eps times the legitimate one
    of the most recent input (1/(t+1) .. 1)."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x):
        n = torch.arange(1, x.shape[1] + 1, dtype=x.dtype)[None, :, None]
        nxt = torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], 1)
        return x.cumsum(1) / n + self.eps * nxt


def seconds(model, **kw) -> float:
    check_causal(model, lengths=(8,), **kw)  # warm up autograd and the kernels
    t = time.perf_counter()
    rep = check_causal(model, **kw)
    assert rep.ok, rep
    return time.perf_counter() - t


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    default = build_model(Vocab(8192), "transformer", "tiny")
    print(f"default headway model (tiny transformer, 8k BPE): {seconds(default):.2f} s")
    try:
        from transformers import LlamaConfig, LlamaForCausalLM

        llama = LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2))
        print(f"HF Llama, 4 layers, hidden 64: {seconds(llama):.2f} s")
    except ImportError:
        print("transformers not installed: no HF row")
    for det in ("gradient", "black-box"):
        smallest = None
        for k in range(1, 16):
            eps = 10.0 ** -k
            if check_causal(TinyLeak(eps), hidden_size=8, packed=False, detectors=(det,), modes=("eval",)).ok:
                break
            smallest = eps
        print(f"{det}: smallest leak caught {smallest:.0e} of the legitimate dependence")


if __name__ == "__main__":
    main()

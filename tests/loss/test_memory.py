"""Memory follows the work: one forward + backward of the chunked loss holds one chunk's logits at a
time (16-bit inputs: that chunk in their dtype, a few rows in float32 and one (V, H) product buffer), whatever
the number of tokens, on both product paths (oneDNN and torch.mm). Measured as the peak resident
memory of a fresh process above its inputs and the gradients it must return."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

N, H, V, CHUNK = 4096, 64, 32768, 512  # 8 chunks of 64 MiB float32 logits

CHILD = f"""
import json, os, torch
import headway as hw
torch.manual_seed(0)
dtype = getattr(torch, os.environ["DTYPE"])
h = (torch.randn({N}, {H}) * 0.5).to(dtype).requires_grad_()
w = (torch.randn({V}, {H}) * 0.05).to(dtype).requires_grad_()
y = torch.randint(0, {V}, ({N},))

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def peak():
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmHWM:"))

try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak starts from here
except OSError:
    pass
base = rss()
hw.linear_cross_entropy(h, w, y, chunk_size={CHUNK}).backward()
out = h.grad.numel() * h.grad.element_size() + w.grad.numel() * w.grad.element_size()
print(json.dumps({{"extra": peak() - base - out}}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's /proc")
@pytest.mark.parametrize("onednn", ["0", "1"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_one_chunk_of_logits_is_held_at_a_time(dtype, onednn):
    env = {**os.environ, "DTYPE": dtype, "HEADWAY_ONEDNN": onednn, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    extra = json.loads(r.stdout.strip().splitlines()[-1])["extra"]
    from headway.loss.core import SOFTMAX_BLOCK_BYTES

    chunk = CHUNK * V * (4 if dtype == "float32" else 2)  # one chunk's logits (bf16: float32 only a block of rows)
    # slack: one float32 chunk more for the (N, H) work, the products' scratch (oneDNN and MKL pack their
    # operands) and the allocator; measured 30-45 MiB of it depending on the environment. A second chunk
    # held at once (float32), or a float32 copy of a bf16 chunk, still exceeds it.
    allowed = chunk + CHUNK * V * 4
    if dtype == "bfloat16":
        allowed += SOFTMAX_BLOCK_BYTES + V * H * (4 + 2)  # the float32 rows, dW and each chunk's bf16 dW product
    assert extra <= allowed, f"{extra / 2**20:.0f} MiB above inputs and gradients; allowed {allowed / 2**20:.0f} MiB"

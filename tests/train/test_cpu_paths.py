"""Each CPU path is chosen by the CPU's features and can be forced on any machine by an environment
variable, so one machine's test run can take another CPU kind's path (real subprocesses: both are
read when headway starts)."""

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, torch
from headway.loss import matmul
from headway.train.device import resolve_precision
print(json.dumps({"precision": resolve_precision("auto", torch.device("cpu")),
                  "onednn": matmul.use_onednn(torch.zeros(2, 2))}))
"""


def _paths(**env: str) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("HEADWAY_ONEDNN", "HEADWAY_FAST_BF16")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**e, **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("fast_bf16,precision", [("1", "bf16"), ("0", "fp32")])
def test_auto_precision_follows_the_forced_bf16_path(fast_bf16, precision):
    assert _paths(HEADWAY_FAST_BF16=fast_bf16)["precision"] == precision


def test_onednn_products_can_be_forced_on_and_off():
    import torch

    assert _paths(HEADWAY_ONEDNN="0")["onednn"] is False
    assert _paths(HEADWAY_ONEDNN="1")["onednn"] is torch.backends.mkldnn.is_available()


def test_without_overrides_the_paths_follow_the_cpu_flags():
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    got = _paths()
    assert got["precision"] == ("bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32")
    import torch

    assert got["onednn"] is (torch.backends.mkldnn.is_available() and "avx512f" in flags)

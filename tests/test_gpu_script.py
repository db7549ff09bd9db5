"""`bench/gpu.sh --dry-run`: the GPU check's every step, on CPU at tiny sizes, as one real command."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_the_gpu_check_runs_every_step_in_a_dry_run(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run", "--out", str(tmp_path),
                        "--wheels", str(tmp_path / "no-wheels")], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (report,) = tmp_path.glob("*-gpu-dry-run.md")
    text = report.read_text()
    for section in ("## CUDA-marked tests", "## The loss in bf16 at N,H,V = 64,32,1000", "## The default run on cpu"):
        assert section in text
    assert text.count("exit 0 after") == 3
    assert "| headway |" in text and "validation bits/byte" in text

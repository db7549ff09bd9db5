"""`--compile` with multi-token prediction, masked diffusion and distillation: a compiled run (a fresh
process, as a user runs it) trains the same steps as the eager one."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from headway.cli import main
from tests.support import OBJECTIVE_FLAGS, float32_rel_tolerance, teacher_run, train_args

STEPS, BATCH, SEQ_LEN, DEPTHS = 3, 2, 64, 2  # train_args' batch and row length; DEPTHS: the mtp flags' --mtp-depth


@pytest.fixture(scope="module")
def teacher(corpus, tmp_path_factory) -> Path:
    return teacher_run(corpus, tmp_path_factory.mktemp("teacher") / "run")


def _steps(out: Path) -> list[float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    return [v for r in rows for v in (r["loss"], r["grad_norm"])]


@pytest.mark.parametrize("objective", OBJECTIVE_FLAGS)
def test_objective_compiled_trains_the_same_steps_as_eager(corpus, tmp_path, request, objective):
    flags = OBJECTIVE_FLAGS[objective] + (["--teacher", str(request.getfixturevalue("teacher"))]
                                          if objective == "distill" else [])
    args = lambda out: train_args(corpus, out, "--steps", str(STEPS), "--precision", "fp32", *flags)  # noqa: E731
    r = subprocess.run([sys.executable, "-m", "headway", *args(tmp_path / "compiled"), "--compile"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert main(args(tmp_path / "eager")) == 0
    compiled, eager = _steps(tmp_path / "compiled"), _steps(tmp_path / "eager")
    assert len(compiled) == 2 * STEPS
    depths = DEPTHS if objective == "mtp" else 0
    assert compiled == pytest.approx(eager, rel=float32_rel_tolerance((1 + depths) * BATCH * SEQ_LEN, STEPS))

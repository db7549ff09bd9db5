"""Multi-token prediction, masked diffusion and distillation under torchrun (gloo, real processes):
DDP, FSDP2 and the vocabulary-parallel head train exactly like one process on the same global
batches, and the checkpoint (gathered on rank 0 when sharded) evaluates in one process like the
distributed run; distillation with the vocabulary-parallel head is refused, naming the flags, before
any work."""

import json
import re
from pathlib import Path

import pytest

from headway.cli import load_run, main
from tests.distributed.test_ddp_train import _one_process_steps, _torchrun, _train_args, corpus  # noqa: F401
from tests.support import OBJECTIVE_FLAGS, float32_rel_tolerance, teacher_run

MODES = {
    "ddp": [],
    "fsdp": ["--parallel", "fsdp"],
    # AdamW: Muon's bf16 Newton-Schulz would round the head's other summation order (test_sharded_train)
    "ddp+vocab-parallel-head": ["--tensor-parallel-head", "--optimizer", "adamw"],
}
REFUSED = {("distill", "ddp+vocab-parallel-head")}  # test_distillation_with_the_vocab_parallel_head_is_refused_...
CASES = [(o, m) for o in OBJECTIVE_FLAGS for m in MODES if (o, m) not in REFUSED]
STEPS, BATCH, SEQ_LEN, DEPTHS = 4, 2, 64, 2  # batch per rank, 2 ranks; DEPTHS: the mtp flags' --mtp-depth


@pytest.fixture(scope="module")
def teacher(corpus, tmp_path_factory) -> Path:  # noqa: F811
    return teacher_run(corpus, tmp_path_factory.mktemp("teacher") / "run")


def objective_args(objective: str, request: pytest.FixtureRequest) -> list[str]:
    """The objective's flags; distillation's teacher is trained once per module, when first needed."""
    if objective != "distill":
        return OBJECTIVE_FLAGS[objective]
    return OBJECTIVE_FLAGS[objective] + ["--teacher", str(request.getfixturevalue("teacher"))]


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def _single_process_eval(run: Path, capsys: pytest.CaptureFixture) -> float:
    """Bits per byte of the run's validation split by `headway eval` in this process (one rank): the
    masked-diffusion ELBO bound for a diffusion run, else the left-to-right figure."""
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    m = re.search(r"masked-diffusion ELBO: <= \S+ nats/token, <= (\S+) ±", out) or re.search(
        r"^loss \S+ nats/token, perplexity \S+, (\S+) bits/byte", out, re.M)
    assert m, out
    return float(m.group(1))


@pytest.mark.parametrize("objective,mode", CASES, ids=[f"{o}-{m}" for o, m in CASES])
def test_objective_under_torchrun_equals_one_process_on_the_same_global_batches(
        corpus, tmp_path, capsys, request, objective, mode):  # noqa: F811
    two = tmp_path / "two"
    r = _torchrun(2, _train_args(corpus, two, batch=BATCH, steps=STEPS) + objective_args(objective, request)
                  + MODES[mode])
    assert r.returncode == 0, r.stderr[-3000:]
    kind = "FSDP" if "fsdp" in mode else "DDP"
    head = ", vocab-parallel head" if "vocab-parallel" in mode else ""
    assert f"data parallel: 2 processes ({kind}{head})" in r.stdout
    got, want = _rows(two), _one_process_steps(two, tmp_path / "one", STEPS)
    depths = DEPTHS if objective == "mtp" else 0
    rel = float32_rel_tolerance((1 + depths) * 2 * BATCH * SEQ_LEN, STEPS)  # the head's rows per global step
    assert [x["loss"] for x in got] == pytest.approx([x["loss"] for x in want], rel=rel)
    if depths:  # the logged main and per-depth losses are the global batch's, not rank 0's share of it
        assert all(len(x["mtp_loss"]) == depths for x in got)
        assert [x["main_loss"] for x in got] == pytest.approx([x["main_loss"] for x in want], rel=rel)
        flat = lambda rows: [v for x in rows for v in x["mtp_loss"]]  # noqa: E731
        assert flat(got) == pytest.approx(flat(want), rel=rel)
    summary = json.loads((two / "summary.json").read_text())
    model = load_run(str(two))[0]  # the checkpoint holds the student alone and loads as any run's
    assert type(model).__name__ == "LanguageModel"
    assert summary["params"] == sum(p.numel() for p in model.parameters())
    # the checkpoint scores the validation split in one process as the distributed run did
    val = summary["val_elbo" if objective == "diffusion" else "val"]
    ran = val["bits_per_byte_bound" if objective == "diffusion" else "bits_per_byte"]
    printed = 5e-5  # `headway eval` prints 4 decimals
    tol = float32_rel_tolerance(val["tokens"], 1) * ran + printed
    assert _single_process_eval(two, capsys) == pytest.approx(ran, abs=tol)


def test_distillation_with_the_vocab_parallel_head_is_refused_before_any_work(corpus, tmp_path, request):  # noqa: F811
    out = tmp_path / "run"
    r = _torchrun(2, _train_args(corpus, out, batch=BATCH) + objective_args("distill", request)
                  + MODES["ddp+vocab-parallel-head"], timeout=120)
    assert r.returncode != 0
    assert "--tensor-parallel-head cannot be used with --objective distill: the fused distillation loss" in r.stderr
    assert "Distill with DDP or FSDP (--parallel ddp | fsdp) without --tensor-parallel-head" in r.stderr
    assert not (out / "data").exists() and not (out / "config.json").exists()

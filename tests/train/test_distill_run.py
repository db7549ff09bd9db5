"""`headway train --objective distill --teacher FOLDER`: the flags and their refusals, the `Distiller`
(student state only, frozen teacher, student cross-entropy in eval mode), a headway teacher and a
HuggingFace one, the tokenizer and Vocab checks, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import headway as hw
from headway.cli import main
from headway.models.distiller import Distiller
from headway.objectives.registry import REGISTRY
from headway.train.config import TrainConfig
from headway.train.runs import load_run
from headway.types import Batch
from tests.support import run_losses, tiny_llama_checkpoint, train_args


@pytest.fixture(scope="module")
def teacher(corpus, tmp_path_factory) -> Path:
    """A small headway run (byte tokenizer) to distill from."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    assert main(train_args(corpus, out, "--size", "32x2", "--steps", "4", "--objective", "clm")) == 0
    return out


def test_distill_is_registered_with_its_flags():
    reg = REGISTRY["distill"]
    assert reg.flags == ("teacher", "distill_alpha", "distill_temperature", "distill_loss", "distill_beta")
    ex = hw.build_objective("distill", hw.Vocab(300))(torch.arange(5).numpy(), None)
    clm = hw.build_objective("clm", hw.Vocab(300))(torch.arange(5).numpy(), None)
    assert (ex.input_ids == clm.input_ids).all() and (ex.labels == clm.labels).all()


@pytest.mark.parametrize("changes,match", [
    (dict(objective="distill"), "--teacher must be given with --objective distill"),
    (dict(objective="distill", teacher="/nonexistent"), "--teacher must be a headway run or checkpoint folder"),
    (dict(objective="clm:0.5,distill:0.5", teacher="T"), "distill cannot be mixed"),
    (dict(objective="clm", distill_alpha=0.3), "--distill-alpha is read by --objective distill"),
    (dict(objective="clm", teacher="T"), "--teacher is read by --objective distill"),
    (dict(objective="distill", teacher="T", distill_alpha=1.5), "--distill-alpha must be a finite number >= 0 and "
                                                                "<= 1"),
    (dict(objective="distill", teacher="T", distill_temperature=0.0), "--distill-temperature must be"),
    (dict(objective="distill", teacher="T", distill_beta=1.0), "--distill-beta must be < 1"),
    (dict(objective="distill", teacher="T", distill_loss="kld"), "--distill-loss must be one of kl | reverse_kl"),
    (dict(objective="distill", teacher="T", z_loss=1e-4), "--z-loss must be 0 with --objective distill"),
    (dict(objective="distill", teacher="T", tensor_parallel_head=True), "--tensor-parallel-head cannot be used "
                                                                        "with --objective distill"),
    (dict(objective="distill", teacher="T", mtp_depth=2), "--mtp-depth 2 cannot be used with --objective distill"),
])
def test_the_flags_are_checked_naming_them(teacher, changes, match):
    if changes.get("teacher") == "T":
        changes["teacher"] = str(teacher)
    with pytest.raises(ValueError, match=match):
        TrainConfig(**changes).check()


def test_a_teacher_with_another_tokenizer_is_refused_by_name_before_any_work(corpus, teacher, tmp_path, capsys):
    ok = train_args(teacher / "data", tmp_path / "s1", "--objective", "distill", "--teacher", str(teacher))
    assert main(ok) == 0  # the teacher's prepared data: its tokenizer
    other = tmp_path / "other"
    assert main(train_args(corpus, other, "--tokenizer", "bpe", "--vocab-size", "300", "--steps", "1")) == 0
    code = main(train_args(other / "data", tmp_path / "s2", "--objective", "distill", "--teacher", str(teacher)))
    assert code == 2
    err = capsys.readouterr().err
    assert f"--teacher {(teacher / 'step-0000004').resolve()}: its tokenizer" in err
    left = {p.name for p in (tmp_path / "s2").iterdir()} if (tmp_path / "s2").exists() else set()
    assert not left & {"data", "config.json", "metrics.jsonl"}  # refused before the data, the model, the run


def test_a_teacher_with_another_vocab_is_refused_by_name(corpus, teacher, tmp_path):
    from headway.train.teacher import _refuse_vocab

    with pytest.raises(ValueError, match="its Vocab .* 200 sentinels\\) is not the run's .* 100 sentinels"):
        _refuse_vocab(hw.Vocab(256, num_sentinels=200), hw.Vocab(256), teacher)


def test_distill_trains_keeps_the_student_alone_and_resumes_exactly(corpus, teacher, tmp_path):
    out = tmp_path / "student"
    args = train_args(corpus, out, "--objective", "distill", "--teacher", str(teacher), "--distill-loss", "jsd",
                      "--distill-beta", "0.3", "--steps", "4", "--checkpoint-every", "2")
    assert main(args) == 0
    straight = run_losses(out)
    assert len(straight) == 4 and all(torch.isfinite(torch.tensor(straight)))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["teacher"] == str((teacher / "step-0000004").resolve())  # pinned: a resume reloads the same one
    assert (cfg["distill_loss"], cfg["distill_beta"], cfg["tokenizer"]) == ("jsd", 0.3, "bytes")
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["val"]["bits_per_byte"] < 20
    # the checkpoint holds the student alone: it loads as a plain LanguageModel
    model, _, _, _ = load_run(out)
    assert type(model) is hw.LanguageModel
    student_params = sum(p.numel() for p in model.parameters())
    assert summary["params"] == student_params

    (out / "latest").write_text("step-0000002")
    (out / "metrics.jsonl").write_text("")
    assert main([*args, "--resume"]) == 0
    assert run_losses(out) == pytest.approx(straight[2:], rel=1e-6, abs=1e-6)


def test_choosing_the_size_loads_the_teacher_once(corpus, teacher, tmp_path, monkeypatch):
    from headway.train import autosize
    from headway.train import teacher as teacher_module

    loads = []
    real = teacher_module.load_teacher
    monkeypatch.setattr(teacher_module, "load_teacher", lambda *a: loads.append(1) or real(*a))
    monkeypatch.setattr(autosize, "TOKENS_PER_PARAM", 0.0)  # every size has tokens enough: all are measured
    monkeypatch.setattr(autosize, "LADDER", ("32x2", "64x2", "64x3"))
    args = [a for a in train_args(corpus, tmp_path / "s", "--objective", "distill", "--teacher", str(teacher))
            if a not in ("--steps", "3")]
    args[args.index("--size") + 1] = "auto"
    assert main([*args, "--time-budget", "3"]) == 0
    assert json.loads((tmp_path / "s" / "config.json").read_text())["size"] == "64x3"
    assert len(loads) == 2  # once for the measuring (shared by the three sizes), once for the run


def _batch(vocab: hw.Vocab) -> Batch:
    ids = torch.randint(0, vocab.base_size, (2, 9))
    labels = torch.cat([ids[:, 1:], torch.full((2, 1), vocab.eos)], 1)
    labels[0, :3] = hw.IGNORE_INDEX
    pos = torch.arange(9).expand(2, 9)
    return Batch(ids, labels, pos, torch.zeros(2, 9, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long))


def test_the_distiller_trains_the_student_against_a_frozen_teacher():
    vocab = hw.Vocab(50, num_sentinels=2)
    torch.manual_seed(0)
    student, teacher = hw.build_model(vocab, size="16x1"), hw.build_model(vocab, size="24x2")
    for p in teacher.parameters():
        p.data.normal_(0, 0.1)
    d = Distiller(student, teacher, alpha=0.7, temperature=1.5, kind="reverse_kl")
    assert set(d.state_dict()) == set(student.state_dict())
    assert {id(p) for p in d.parameters()} == {id(p) for p in student.parameters()}
    batch = _batch(vocab)
    d.train()
    assert not teacher.training
    loss = d(batch)
    with torch.no_grad():
        th = teacher.hidden(batch.input_ids, batch)
    want = hw.distillation_loss(student.hidden(batch.input_ids, batch), student.head.weight, th, teacher.head.weight,
                                batch.labels, alpha=0.7, temperature=1.5, kind="reverse_kl")
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    d.eval()  # validation: the student's own cross-entropy
    torch.testing.assert_close(d(batch, reduction="sum"), student(batch, reduction="sum"))
    d.double()
    assert teacher.head.weight.dtype == torch.float64
    with pytest.raises(ValueError, match=r"the teacher takes \d+ ids and the student \d+"):
        Distiller(hw.build_model(hw.Vocab(50, num_sentinels=3), size="16x1"), teacher)


def test_a_huggingface_teacher_with_the_students_tokenizer(corpus, tmp_path):
    pytest.importorskip("transformers")
    ckpt = tmp_path / "llama"
    tiny_llama_checkpoint(ckpt)
    out = tmp_path / "student"
    args = train_args(corpus, out, "--objective", "distill", "--teacher", str(ckpt), "--final-eval-tokens", "3000")
    i = args.index("--tokenizer")
    del args[i:i + 2]  # the default (bpe): the run takes the teacher's tokenizer
    assert main(args) == 0
    assert json.loads((out / "config.json").read_text())["tokenizer"] == str(ckpt.resolve())
    assert all(torch.isfinite(torch.tensor(run_losses(out))))


def test_show_prints_clms_targets_and_says_the_teacher_is_a_target(tmp_path, capsys):
    png = tmp_path / "show.png"
    assert main(["show", "--objective", "distill", "--text", "ab\n", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "teacher's distribution" in out and png.exists()

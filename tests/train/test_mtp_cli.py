"""End-to-end `--mtp-depth`: a run with multi-token prediction resumes exactly, logs each depth's
loss, samples speculatively with plain greedy's output, shows its depth targets, refuses MLM, and
exports without the depths (remote code and native) generating what headway generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from headway.cli import main
from headway.train.runs import load_run
from tests.support import run_without_headway, train_args


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def test_a_run_with_depths_resumes_exactly_and_samples_speculatively(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    args = train_args(corpus, out, "--mtp-depth", "2", "--steps", "6", "--checkpoint-every", "3",
                      "--objective", "clm:0.5,fim:0.5")
    assert main(args) == 0
    straight = _rows(out)
    assert len(straight) == 6 and all(len(r["mtp_loss"]) == 2 and r["main_loss"] > 0 for r in straight)
    (out / "latest").write_text("step-0000003")  # as if the run had stopped after step 3
    (out / "metrics.jsonl").write_text("")
    assert main([*args, "--resume"]) == 0
    resumed = _rows(out)
    assert [r["step"] for r in resumed] == [4, 5, 6]
    for key in ("loss", "grad_norm", "main_loss"):
        assert [r[key] for r in resumed] == pytest.approx([r[key] for r in straight[3:]], rel=1e-6, abs=1e-6)
    flat = lambda rows: [x for r in rows for x in r["mtp_loss"]]  # noqa: E731
    assert flat(resumed) == pytest.approx(flat(straight[3:]), rel=1e-6, abs=1e-6)
    capsys.readouterr()
    assert main([*args, "--resume", "--mtp-depth", "1"]) == 2  # the depth defines the model: a resume keeps it
    assert "--mtp-depth (run: 2, given: 1)" in capsys.readouterr().err

    model, _, _, cfg = load_run(out)
    assert cfg.mtp_depth == 2 and model.mtp is not None and model.mtp.num_depths == 2
    capsys.readouterr()
    assert main(["sample", str(out), "--prompt", "def ", "--max-new-tokens", "24", "--speculative"]) == 0
    cap = capsys.readouterr()
    assert cap.out.startswith("def ")
    assert "tokens per step" in cap.err and "tokens/s" in cap.err and "identical to plain greedy: yes" in cap.err
    assert main(["sample", str(out), "--speculative", "--temperature", "0.8"]) == 2
    assert "--speculative decodes greedily" in capsys.readouterr().err


def test_speculative_sampling_needs_depths_and_mlm_refuses_them(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(corpus, out, "--steps", "1")) == 0
    capsys.readouterr()
    assert main(["sample", str(out), "--speculative", "--max-new-tokens", "3"]) == 2
    assert "--mtp-depth" in capsys.readouterr().err
    assert main(train_args(corpus, tmp_path / "mlm", "--objective", "mlm", "--mtp-depth", "2")) == 2
    assert "--mtp-depth 2" in capsys.readouterr().err


def test_show_draws_each_depths_targets(tmp_path, capsys):
    png = tmp_path / "clm.png"
    assert main(["show", "--objective", "clm", "--mtp-depth", "2", "--png", str(png), "--text", "abcdef"]) == 0
    text = capsys.readouterr().out
    assert "t+2" in text and "t+3" in text and "depth 1: 6" in text and "depth 2: 5" in text
    assert png.stat().st_size > 1000


LOAD = r'''
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
ids = torch.tensor([json.loads(sys.argv[2])])
gen = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
print(json.dumps(gen[0, ids.shape[1]:].tolist()))
'''


@pytest.mark.parametrize("backbone", ["transformer", "hf:llama"])
def test_export_drops_the_depths_and_generates_as_before(corpus, tmp_path, backbone):
    transformers = pytest.importorskip("transformers")
    run, folder = tmp_path / "run", tmp_path / "hf"
    extra = ["--size", "32x2x2"] if backbone.startswith("hf:") else []
    assert main(train_args(corpus, run, "--backbone", backbone, "--mtp-depth", "2", "--steps", "8", "--lr", "1e-2",
                           *extra)) == 0
    assert main(["export", str(run), str(folder)]) == 0
    model, tok, vocab, _ = load_run(run)
    ids = [vocab.eos] + tok.encode("def area(")
    want = model.generate(torch.tensor(ids), 10, temperature=0.0).tolist()
    from safetensors.torch import load_file

    assert not [k for k in load_file(str(next(folder.glob("*.safetensors")))) if "mtp" in k]
    if backbone == "transformer":
        got = run_without_headway(LOAD, str(folder), json.dumps(ids))
    else:
        hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        t = torch.tensor([ids])
        got = hf.generate(t, max_new_tokens=10, do_sample=False, attention_mask=torch.ones_like(t),
                          eos_token_id=None)[0, t.shape[1]:].tolist()
    assert got == want

"""End-to-end: `headway train --objective diffusion` on tiny real files resumes exactly, reports the
ELBO's bound with its standard error, samples and infills by unmasking, and exports as a masked LM."""

import json
from pathlib import Path

import pytest
import torch

from headway.cli import main
from tests.support import exported_model_script, run_without_headway, train_args


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def diffusion_run(corpus, tmp_path_factory):
    """A 6-step diffusion run with a checkpoint after step 3, and its losses."""
    out = tmp_path_factory.mktemp("diffusion") / "run"
    args = train_args(corpus, out, "--objective", "diffusion", "--steps", "6", "--checkpoint-every", "3",
                      "--infill-lines", "3")
    assert main(args) == 0
    return out, args, [r["loss"] for r in _metrics(out) if "loss" in r]


def test_a_diffusion_run_reports_the_elbo_bound_with_its_standard_error(diffusion_run):
    out, _, losses = diffusion_run
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    s = json.loads((out / "summary.json").read_text())
    assert s["val"] == {}  # no left-to-right figure for a model that never predicts left to right
    e = s["val_elbo"]
    assert 0 < e["bits_per_byte_bound"] < 20 and 0 < e["standard_error"] < e["bits_per_byte_bound"]
    assert e["draws"] >= 4 and e["tokens"] > 0 and "upper bound" in e["note"]
    assert set(s["compressors"]) == {"gzip -9 (per file)", "xz -9e (per file)", "xz -9e (whole split)"}
    assert s["infill_eval"]["layout"] == "diffusion" and s["infill_eval"]["lines"] == 3
    assert s["infill"]["given_length"] >= 1
    rows = [r for r in _metrics(out) if "val_elbo_bpb" in r]
    assert rows and rows[-1]["val_elbo_bpb"] == pytest.approx(e["bits_per_byte_bound"])
    assert not any("val_bpb" in r for r in _metrics(out))


def test_a_diffusion_run_resumes_exactly(diffusion_run):
    out, args, straight = diffusion_run
    (out / "latest").write_text("step-0000003")  # as if the run had stopped after step 3
    (out / "metrics.jsonl").write_text("")
    assert main([*args, "--resume", "--infill-lines", "0"]) == 0
    resumed = [r for r in _metrics(out) if "loss" in r]
    assert [r["step"] for r in resumed] == [4, 5, 6]
    assert [r["loss"] for r in resumed] == pytest.approx(straight[3:], rel=1e-6, abs=1e-6)


def test_sample_and_infill_unmask(diffusion_run, capsys):
    out = diffusion_run[0]
    assert main(["sample", str(out), "--prompt", "def ", "--max-new-tokens", "12", "--steps", "4"]) == 0
    assert capsys.readouterr().out.startswith("def ")
    assert main(["infill", str(out), "--prefix", "def area(", "--suffix", "):\n", "--max-new-tokens", "5",
                 "--block-length", "2"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("def area(") and text.rstrip("\n").endswith("):")
    assert main(["eval", str(out), "--infill", "2"]) == 0
    text = capsys.readouterr().out
    assert "masked-diffusion ELBO: <=" in text and "an upper bound" in text and "given the middle's length" in text
    assert "perplexity" not in text  # no left-to-right figure for a model that never predicts left to right


def test_a_mix_with_clm_reports_both_figures_and_the_ssm_refuses_it(corpus, tmp_path, capsys):
    out = tmp_path / "mix"
    assert main(train_args(corpus, out, "--objective", "clm:0.5,diffusion:0.5", "--steps", "2", "--eval-every", "1",
                           "--eval-tokens", "500")) == 0
    s = json.loads((out / "summary.json").read_text())
    assert 0 < s["val"]["bits_per_byte"] < 20 and 0 < s["val_elbo"]["bits_per_byte_bound"] < 20
    step1 = [r for r in _metrics(out) if r["step"] == 1 and r.get("subset")]  # the periodic validation: both
    assert any("val_elbo_bpb" in r for r in step1) and any("val_bpb" in r for r in step1)
    assert main(["sample", str(out), "--max-new-tokens", "4", "--steps", "2"]) == 0  # --steps: by unmasking
    capsys.readouterr()
    bad = train_args(corpus, tmp_path / "ssm", "--objective", "clm:0.5,diffusion:0.5", "--backbone", "gated_ssm")
    assert main(bad) == 2
    assert "mixes masked diffusion (bidirectional) with left-to-right objectives" in capsys.readouterr().err


def test_steps_on_a_run_without_diffusion_is_refused(corpus, tmp_path, capsys):
    out = tmp_path / "clm"
    assert main(train_args(corpus, out, "--objective", "clm", "--steps", "1")) == 0
    capsys.readouterr()
    assert main(["sample", str(out), "--steps", "3"]) == 2
    assert "trains no masked diffusion" in capsys.readouterr().err


LOAD = exported_model_script("AutoModelForMaskedLM", r'''
with torch.no_grad():
    z = model(input_ids=ids).logits[0]
print(json.dumps({"ids": ids[0].tolist(), "z": z.tolist(), "mask": tok.mask_token_id}))
''')


@pytest.mark.parametrize("backbone", ["transformer", "gated_ssm"])
def test_a_diffusion_model_exports_as_a_masked_lm(corpus, tmp_path, backbone, diffusion_run):
    pytest.importorskip("transformers")
    from headway.models.diffusion_sampling import bidirectional_row
    from headway.train.runs import load_run

    run = diffusion_run[0]
    if backbone != "transformer":
        run = tmp_path / "run"
        assert main(train_args(corpus, run, "--objective", "diffusion", "--backbone", backbone, "--steps", "2")) == 0
    hf = tmp_path / "hf"
    assert main(["export", str(run), str(hf)]) == 0
    assert json.loads((hf / "config.json").read_text())["architectures"] == ["HeadwayExportForMaskedLM"]
    text = "def area(<mask><mask>, h):"
    got = run_without_headway(LOAD, str(hf), text)
    model, tok, vocab, _ = load_run(str(run))
    assert got["mask"] == vocab.id("<mask>") and got["ids"].count(vocab.id("<mask>")) == 2
    ids = torch.tensor(got["ids"])
    with torch.no_grad():
        want = model.head.logits(model.hidden(ids[None], bidirectional_row(ids)))[0]
    torch.testing.assert_close(torch.tensor(got["z"]), want, rtol=1e-5, atol=1e-5)

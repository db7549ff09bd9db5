"""The single-line infilling score: lines are drawn reproducibly and cut exactly; the score is
exact match; `headway eval --infill` and the end of a run report it."""

import json
import sysconfig
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from headway.cli import main
from headway.data.tokenizer import BPETokenizer
from headway.models import build_model
from headway.train.infill_eval import MAX_CHARS, MIN_CHARS, first_line, line_breaks, nll, pick_lines
from headway.types import Vocab
from tests.support import train_args


def _stdlib_texts() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return [p.read_text(encoding="utf-8") for p in sorted(root.glob("json/*.py"))]


def _check(texts, lines):
    for prefix, line, suffix in lines:
        assert prefix + "\n" + line + suffix in texts  # the cut loses nothing
        assert suffix.startswith("\n") and "\n" not in line
        assert MIN_CHARS <= len(line.strip()) and len(line) <= MAX_CHARS


def test_lines_are_drawn_by_seed_and_cut_exactly():
    texts = _stdlib_texts()
    a, b, c = pick_lines(texts, 50, 0), pick_lines(texts, 50, 0), pick_lines(texts, 50, 1)
    assert len(a) == 50 and a == b and a != c
    _check(texts, a)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300), min_size=1, max_size=4),
       st.integers(0, 30))
def test_any_text_is_cut_exactly(texts, n):
    lines = pick_lines(texts, n, 3)
    assert len(lines) <= n
    _check(texts, lines)


def test_the_generated_line_is_the_text_between_the_first_two_line_breaks():
    assert first_line("\n    return x\n\ndef") == "    return x"
    assert first_line("\n    return x") == "    return x"
    assert first_line("return x\n") is None  # did not start the line: never an exact match


@torch.no_grad()
def test_line_nll_is_the_teacher_forced_sum_of_next_token_losses():
    torch.manual_seed(0)
    model = build_model(Vocab(53), "transformer", "16x2", activation="gelu", qk_norm=False,
                        zero_init=False).eval()
    prompt, target = torch.tensor([3, 9, 4, 1]), torch.tensor([7, 7, 2])
    want = 0.0
    for t in range(len(target)):  # one position at a time, as generation sees it
        z = model.logits(torch.cat([prompt, target[:t]])[None])[0, -1]
        want -= float(torch.log_softmax(z.double(), -1)[target[t]])
    assert abs(nll(model, prompt, target) - want) < 1e-4


def test_first_allowed_constrains_the_first_new_token_only_and_stop_when_ends_it():
    torch.manual_seed(0)
    model = build_model(Vocab(53), "transformer", "16x2", activation="gelu", qk_norm=False,
                        zero_init=False).eval()
    prompt = torch.tensor([3, 9, 4, 1])
    free = model.generate(prompt, 5, temperature=0.0)
    allowed = torch.zeros(model.head.full_weight().shape[0], dtype=torch.bool)
    a = (int(free[0]) + 1) % 53  # not the unconstrained choice
    allowed[a] = True
    got = model.generate(prompt, 5, temperature=0.0, first_allowed=allowed)
    assert int(got[0]) == a and int(free[0]) != a
    assert torch.equal(got[1:], model.generate(torch.cat([prompt, got[:1]]), 4, temperature=0.0))  # then free
    stopped = model.generate(prompt, 5, temperature=0.0, stop_when=lambda new: new[:, -1] == free[2])
    assert torch.equal(stopped, free[:3])  # ends right after the stop token, the tokens before unchanged
    for bad in (allowed.float(), torch.zeros_like(allowed), allowed[:-1], allowed[None]):
        with pytest.raises(ValueError, match="first_allowed"):
            model.generate(prompt, 2, temperature=0.0, first_allowed=bad)


def test_line_breaks_mark_the_ids_that_open_or_hold_a_line_break():
    texts = _stdlib_texts()
    tok = BPETokenizer.train(texts, 600, progress=False)
    vocab = Vocab(tok.base_size)
    opens, holds = line_breaks(tok, vocab)
    assert opens.shape == holds.shape == (vocab.size,) and opens.dtype == holds.dtype == torch.bool
    for i in range(vocab.base_size):
        t = tok.decode([i])
        assert bool(opens[i]) == t.startswith("\n") and bool(holds[i]) == ("\n" in t)
    assert not opens[vocab.base_size:].any() and not holds[vocab.base_size:].any()  # special ids: neither
    for _, line, _ in pick_lines(texts, 30, 0):  # how each drawn line's "\n" + line starts
        assert opens[tok.encode("\n" + line)[0]]


def test_eval_infill_and_the_end_of_a_run_report_both_scores(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(corpus, out, "--infill-lines", "7", "--steps", "2")) == 0
    s = json.loads((out / "summary.json").read_text())
    e = s["infill_eval"]
    assert e["lines"] == 7 and 0 <= e["fim_exact"] <= 1 and 0 <= e["prefix_exact"] <= 1
    assert e["layout"] == "spm" and e["fim_bits"] > 0 and e["prefix_bits"] > 0 and e["fim_bits"] != e["prefix_bits"]
    assert {"line", "fim", "prefix_only"} <= set(e["examples"][0])
    capsys.readouterr()
    assert main(["eval", str(out), "--infill", "5", "--data", str(corpus)]) == 0
    text = capsys.readouterr().out
    assert "single-line infilling on 5 validation lines" in text and "FIM, SPM" in text and "prefix alone" in text
    assert "bits per byte of the lines" in text
    assert main(["eval", str(out), "--infill", "5", "--data", str(corpus), "--infill-layout", "psm"]) == 0
    assert "FIM, PSM" in capsys.readouterr().out
    assert main(["eval", str(out), "--infill", "-1"]) == 2

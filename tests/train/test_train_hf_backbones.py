"""End-to-end: `headway train --backbone hf:NAME` on tiny real files — packed FIM rows through a
transformers architecture, exact resume, the leak check before step 1, one document per row for a
state-space model, MLM refused by name, continued pre-training from a local checkpoint (`--init`)
with its tokenizer, and a native export that transformers loads without remote code and that
generates what headway generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
import transformers  # noqa: E402

from headway.cli import main  # noqa: E402
from headway.train.runs import load_run  # noqa: E402
from tests.support import run_losses, tiny_llama_checkpoint, train_args  # noqa: E402


def _hf_args(corpus: Path, out: Path, backbone: str, *extra: str) -> list[str]:
    return train_args(corpus, out, "--backbone", backbone, "--size", "32x2x2", "--final-eval-tokens", "3000",
                      *extra)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_an_architecture_trains_packed_fim_resumes_exactly_and_exports_natively(corpus, tmp_path, arch):
    out = tmp_path / "run"
    args = _hf_args(corpus, out, f"hf:{arch}", "--steps", "4", "--checkpoint-every", "2")
    assert main(args) == 0
    straight = run_losses(out)
    assert len(straight) == 4 and all(torch.isfinite(torch.tensor(straight)))
    config = json.loads((out / "config.json").read_text())
    assert config["backbone"] == f"hf:{arch}" and config["packing"] == "bfd"
    assert json.loads((out / "architecture.json").read_text())["model_type"] == arch
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["val"]["bits_per_byte"] < 20 and summary["flops_per_token"] > 0

    (out / "latest").write_text("step-0000002")
    (out / "metrics.jsonl").write_text("")
    assert main([*args, "--resume"]) == 0
    assert run_losses(out) == pytest.approx(straight[2:], rel=1e-6, abs=1e-6)

    folder = tmp_path / "exported"
    assert main(["export", str(out), str(folder)]) == 0
    assert not list(folder.glob("*.py"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model, tok, vocab, _ = load_run(out)
    ids = torch.tensor([[vocab.eos] + tok.encode("def area(")])
    mine = model.generate(ids[0], 8, temperature=0.0)
    theirs = hf.generate(ids, max_new_tokens=8, do_sample=False, attention_mask=torch.ones_like(ids),
                         eos_token_id=None)[0, ids.shape[1]:]
    assert mine.tolist() == theirs.tolist()
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    assert hf_tok.convert_tokens_to_ids("<fim_middle>") == vocab.id("<fim_middle>")


def test_a_state_space_model_trains_one_document_per_row_resumes_exactly_and_refuses_mlm(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    args = _hf_args(corpus, out, "hf:mamba2", "--objective", "clm:0.5,fim:0.5", "--steps", "4",
                    "--checkpoint-every", "2")
    assert main(args) == 0
    assert "one document per row" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["packing"] == "single"
    straight = run_losses(out)
    (out / "latest").write_text("step-0000002")
    (out / "metrics.jsonl").write_text("")
    assert main([*args, "--resume"]) == 0
    assert run_losses(out) == pytest.approx(straight[2:], rel=1e-6, abs=1e-6)
    assert main(_hf_args(corpus, tmp_path / "mlm", "hf:mamba2", "--objective", "mlm")) == 2
    assert "--objective mlm: needs bidirectional attention (MLM), which the hf:mamba2 backbone cannot give" in \
        capsys.readouterr().err


def test_init_continues_a_checkpoint_with_its_tokenizer(corpus, tmp_path):
    """The commonest real use: add FIM to an existing model, its tokenizer's whole vocabulary the base
    split and headway's special tokens appended."""
    ckpt = tmp_path / "llama"
    tok = tiny_llama_checkpoint(ckpt)
    out = tmp_path / "run"
    args = [a for a in train_args(corpus, out, "--init", str(ckpt), "--final-eval-tokens", "3000")]
    i = args.index("--tokenizer")
    del args[i:i + 2]  # the checkpoint's tokenizer
    i = args.index("--size")
    del args[i:i + 2]  # the checkpoint's architecture
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["backbone"] == f"hf:{ckpt.resolve()}" and config["tokenizer"] == str(ckpt.resolve())
    model, run_tok, vocab, _ = load_run(out)
    assert vocab.base_size == tok.get_vocab_size(with_added_tokens=True)
    assert run_tok.encode("<|endoftext|>") != [tok.token_to_id("<|endoftext|>")]  # a literal stays text
    assert model.backbone.config.hidden_size == 32


def test_llama_with_an_existing_tokenizer_and_fim_exports_natively(corpus, tmp_path):
    """Pre-train a Llama-architecture model with an existing Llama-style tokenizer and FIM; the
    exported folder's tokenizer gives the ids headway trained on and holds headway's special tokens."""
    from tests.data.test_external_tokenizer import byte_level_with_specials

    tok_file = tmp_path / "tokenizer.json"
    byte_level_with_specials().save(str(tok_file))
    out = tmp_path / "run"
    args = _hf_args(corpus, out, "hf:llama", "--objective", "fim", "--steps", "2")
    args[args.index("--tokenizer") + 1] = str(tok_file)
    assert main(args) == 0
    folder = tmp_path / "exported"
    assert main(["export", str(out), str(folder)]) == 0
    _, tok, vocab, _ = load_run(out)
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    text = "def area(width):\n    return width  # é\n"
    assert hf_tok(text)["input_ids"] == tok.encode(text)  # no BOS: the post-processor was dropped
    literal = "x = '<|endoftext|>'"  # headway encoded the literal as text; it decodes back as text
    assert hf_tok.decode(tok.encode(literal)) == literal
    assert [hf_tok.convert_tokens_to_ids(n) for n in ("<eos>", "<fim_prefix>", "<fim_middle>")] == \
        [vocab.eos, vocab.id("<fim_prefix>"), vocab.id("<fim_middle>")]
    assert transformers.AutoModelForCausalLM.from_pretrained(folder).config.vocab_size == vocab.size

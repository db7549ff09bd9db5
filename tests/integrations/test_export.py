"""`headway export`: a HF folder that transformers loads in a process that cannot import headway,
with the same tokens and the same greedy generation as headway's own model."""

import json

import pytest
import torch

pytest.importorskip("transformers")

from headway.cli import load_run, main  # noqa: E402
from tests.support import exported_model_script, run_without_headway, train_args  # noqa: E402

PROMPT = "def area3(width, heig"

LOAD = exported_model_script("AutoModelForCausalLM", r'''
gen = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)
specials = {n: tok.convert_tokens_to_ids(n) for n in ("<eos>", "<fim_prefix>", "<extra_id_0>")}
print(json.dumps({"ids": ids[0].tolist(), "gen": gen[0, ids.shape[1]:].tolist(), "specials": specials,
                  "decoded": tok.decode(ids[0])}))
''')


@pytest.mark.parametrize("backbone,tokenizer", [("transformer", "bytes"), ("gated_ssm", "bpe")])
def test_exported_folder_loads_without_headway_and_generates_the_same(corpus, tmp_path, backbone, tokenizer):
    run = tmp_path / "run"
    extra = ["--backbone", backbone, "--tokenizer", tokenizer, "--steps", "30", "--lr", "1e-2"]
    if tokenizer == "bpe":
        extra += ["--vocab-size", "300"]
    assert main(train_args(corpus, run, *extra)) == 0
    out = tmp_path / "hf"
    assert main(["export", str(run), str(out)]) == 0
    model, tok, vocab, _ = load_run(str(run))
    ids = tok.encode(PROMPT)
    want = model.generate(torch.tensor(ids), 12, temperature=0.0).tolist()
    got = run_without_headway(LOAD, str(out), PROMPT)
    assert got["ids"] == ids and got["decoded"] == PROMPT
    assert got["gen"] == want
    assert got["specials"] == {n: vocab.id(n) for n in ("<eos>", "<fim_prefix>", "<extra_id_0>")}


@pytest.mark.parametrize("objective,lead", [("clm:0.5,fim:0.5", "<eos>"), ("ul2", "[S2S]")])
def test_exported_bos_is_the_id_the_objective_opens_text_with(corpus, tmp_path, objective, lead):
    run, out = tmp_path / "run", tmp_path / "hf"
    assert main(train_args(corpus, run, "--objective", objective, "--steps", "1")) == 0
    assert main(["export", str(run), str(out)]) == 0
    _, _, vocab, _ = load_run(str(run))
    for name in ("config.json", "generation_config.json"):
        assert json.loads((out / name).read_text())["bos_token_id"] == vocab.id(lead)


def test_export_refuses_a_used_folder_and_an_mlm_model(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(corpus, run, "--objective", "mlm")) == 0
    assert main(["export", str(run), str(tmp_path / "hf")]) == 2
    assert "mlm" in capsys.readouterr().err


def test_remote_code_backbones_import_only_what_the_export_stubs_provide():
    """The rule that makes a remote-code backbone's source portable (export.py's docstring): its
    headway imports are one-line `from headway... import names` whose names the stubs define."""
    import ast
    import inspect

    from headway.integrations.export import STUBS
    from headway.models import build_model
    from headway.models.registry import backbone_names, get_backbone
    from headway.types import Vocab

    namespace: dict = {}
    exec(STUBS, namespace)  # what the generated module defines in place of headway's imports
    stubbed = set(namespace)
    remote = [n for n in backbone_names() if ":" not in n and get_backbone(n).export == "remote_code"
              and get_backbone(n).build.__module__.startswith("headway.")]  # headway's own, not a user's
    assert set(remote) >= {"transformer", "gated_ssm"}
    for name in remote:
        module = inspect.getmodule(type(build_model(Vocab(300), name, "32x1").backbone))
        for node in ast.parse(inspect.getsource(module)).body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("headway"):
                names = {a.name for a in node.names}
                assert names <= stubbed, f"{module.__name__} imports {names - stubbed} from {node.module}"
                assert node.lineno == node.end_lineno, f"{module.__name__}: a headway import spans lines"

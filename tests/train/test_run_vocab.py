"""A run keeps the vocabulary it was trained with: its checkpoints' own sentinel count is read back
(eval, sample, infill, export and resume), whatever `sentinels_for` gives for its objective today."""

import hashlib
import json

from headway.cli import load_run, main
from headway.data.tokenizer import load_tokenizer
from headway.objectives import sentinels_for
from headway.train.checkpoint import resolve
from headway.train.config import TrainConfig
from headway.train.data import run_vocab
from tests.support import train_args


def test_a_checkpoint_with_fewer_sentinels_than_today_still_loads(corpus, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(corpus, out, "--objective", "ul2", "--steps", "2")) == 0
    ck = resolve(out)
    _, _, vocab, _ = load_run(str(ck))
    assert vocab.num_sentinels == sentinels_for("ul2", 64) == 100
    # as if the run had been trained at 1024 tokens per row when 100 sentinels was the rule there
    # (the checkpoint's own config and its checksum, as such a run would have written them)
    for cfg_file in (ck / "config.json", out / "config.json"):
        cfg = json.loads(cfg_file.read_text())
        cfg["seq_len"] = 1024
        cfg_file.write_text(json.dumps(cfg))
    state = json.loads((ck / "state.json").read_text())
    state["files"]["config.json"] = hashlib.sha256((ck / "config.json").read_bytes()).hexdigest()
    (ck / "state.json").write_text(json.dumps(state))
    assert sentinels_for("ul2", 1024) > 100
    model, _, vocab, _ = load_run(str(ck))  # loads: the checkpoint's 100 sentinels, not today's rule
    assert vocab.num_sentinels == 100 and model.vocab_size == vocab.size
    tok = load_tokenizer(ck)
    cfg = TrainConfig.load(ck / "config.json")
    assert run_vocab(tok, cfg, ck).num_sentinels == 100  # what a resume builds
    assert run_vocab(tok, cfg).num_sentinels == sentinels_for("ul2", 1024)  # a new run at 1024
    assert main(["eval", str(ck)]) == 0

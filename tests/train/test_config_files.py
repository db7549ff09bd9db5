"""Config files: TOML and YAML, flags win, unknown keys and bad types named, --print-config round
trips, every file in configs/ is a valid run."""

import dataclasses
from pathlib import Path

import pytest

from headway.cli import main
from headway.train.config import TrainConfig
from headway.train.config_file import load_config_file

ROOT = Path(__file__).resolve().parents[2]


def _printed(capsys, *argv) -> str:
    capsys.readouterr()
    assert main(["train", *argv, "--print-config"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("suffix,text", [
    (".toml", '[train]\nobjective = "ul2"\nseq-len = 128\nlr = 1\ndata = ["a", "b"]\n'),
    (".yaml", "objective: ul2\nseq_len: 128\nlr: 1\ndata: [a, b]\n"),
])
def test_toml_and_yaml_files_and_flags_win(tmp_path, capsys, suffix, text):
    f = tmp_path / f"run{suffix}"
    f.write_text(text)
    assert load_config_file(f) == {"objective": "ul2", "seq_len": 128, "lr": 1.0, "data": ["a", "b"]}
    out = _printed(capsys, "--config", str(f), "--seq-len", "64")
    assert 'objective = "ul2"' in out and "seq_len = 64" in out and "lr = 1.0" in out


def test_print_config_round_trips(tmp_path, capsys):
    first = _printed(capsys, "--objective", "span", "--steps", "7", "--eval-tokens", "100")
    f = tmp_path / "printed.toml"
    f.write_text(first)
    assert _printed(capsys, "--config", str(f)) == first
    cfg = TrainConfig(**load_config_file(f))
    assert cfg.steps == 7 and cfg.objective == "span" and cfg.time_budget == 460.0


@pytest.mark.parametrize("text,match", [
    ("lerning_rate = 0.1\n", "unknown key `lerning_rate`"),
    ("seq_lenn = 3\n", "did you mean `seq_len`"),
    ('lr = "fast"\n', "`lr` must be float"),
    ("steps = 1.5\n", "`steps` must be int"),
    ("[train\n", "not valid TOML"),
])
def test_bad_config_files_are_named(tmp_path, capsys, text, match):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    assert main(["train", "--config", str(f), "--print-config"]) == 2
    assert match in capsys.readouterr().err


def test_every_shipped_config_is_a_valid_run(capsys):
    files = sorted((ROOT / "configs").glob("*.toml"))
    assert len(files) >= 5
    for f in files:
        cfg = TrainConfig(**load_config_file(f))
        cfg.check()
    # the default run needs no file: default.toml is exactly the defaults
    assert TrainConfig(**load_config_file(ROOT / "configs" / "default.toml")) == TrainConfig()
    assert [f.name for f in dataclasses.fields(TrainConfig)]  # every field appears in --print-config
    out = _printed(capsys)
    assert all(f.name in out for f in dataclasses.fields(TrainConfig))

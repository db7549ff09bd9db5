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
    assert cfg.steps == 7 and cfg.objective == "span" and cfg.time_budget == 400.0


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


def test_tensorboard_and_wandb_offline_receive_the_metrics(corpus, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.support import train_args

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    assert main(train_args(corpus, out, "--log", "tensorboard,wandb", "--eval-every", "2", "--eval-tokens",
                           "200", "--steps", "4")) == 0
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/tokens_per_s", "train/grad_norm", "val/loss",
            "val/bits_per_byte"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    records = list((out / "wandb").glob("offline-run-*/run-*.wandb"))  # the offline run's history records
    assert records and all(k in records[0].read_bytes() for k in (b"train/loss", b"val/bits_per_byte"))


def test_a_missing_logging_package_is_a_clear_error(corpus, tmp_path, capsys, monkeypatch):
    import importlib.util

    from tests.support import train_args

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    assert main(train_args(corpus, tmp_path / "run", "--log", "wandb")) == 2
    assert "pip install wandb" in capsys.readouterr().err
    assert main(train_args(corpus, tmp_path / "run", "--log", "neptune")) == 2

"""Config files: TOML and YAML, sectioned, flat or under [train], flags win, unknown keys, keys in
the wrong section and bad types named, --print-config round trips, every file in configs/ is a
valid run. Every field's help, section and choices live in its metadata, and the flags, their
`--help` groups, the validation of choices and RESUMABLE all come from it."""

import argparse
import dataclasses
import json
import typing
from pathlib import Path

import pytest

from headway.cli import main, parser
from headway.train.config import RESUMABLE, SECTIONS, TrainConfig
from headway.train.config_file import load_config_file, to_toml

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
    # the default run needs no file: default.toml is exactly the defaults, as --print-config writes them
    assert TrainConfig(**load_config_file(ROOT / "configs" / "default.toml")) == TrainConfig()
    assert (ROOT / "configs" / "default.toml").read_text() == to_toml(TrainConfig())
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


FIELDS = dataclasses.fields(TrainConfig)
CHOICES = [f for f in FIELDS if f.metadata["choices"]]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def test_every_field_carries_its_help_section_and_choices():
    for f in FIELDS:
        assert isinstance(f.metadata["help"], str) and len(f.metadata["help"]) > 10, f.name
        assert f.metadata["section"] in SECTIONS, f.name
        choices = f.metadata["choices"]
        assert choices is None or (isinstance(choices, tuple) and getattr(TrainConfig(), f.name) in choices), f.name
        assert isinstance(f.metadata["resumable"], bool), f.name
    assert {f.metadata["section"] for f in FIELDS} == set(SECTIONS)
    assert RESUMABLE == {f.name for f in FIELDS if f.metadata["resumable"]}
    assert "loss_impl" in RESUMABLE and "init" not in RESUMABLE and "lr" not in RESUMABLE


def test_sections_split_the_fields_and_attributes_stay_flat():
    cfg = TrainConfig(lr=0.01, data=["a"], steps=5)
    parts = [cfg.section(s) for s in SECTIONS]
    assert sum(len(p) for p in parts) == len(FIELDS)
    assert {k: v for p in parts for k, v in p.items()} == dataclasses.asdict(cfg)
    assert cfg.section("optim")["lr"] == cfg.lr == 0.01
    assert {"objective", "backbone", "size", "init", "loss_impl"} <= set(cfg.section("model"))
    assert {"data", "tokenizer", "seq_len", "batch_size"} <= set(cfg.section("data"))
    with pytest.raises(ValueError, match="one of model"):
        cfg.section("optimizer")


def test_the_flags_are_the_fields_grouped_by_section():
    p = _train_parser()
    extra = {"help", "resume", "config", "print_config", "overwrite"}
    assert {a.dest for a in p._actions} - extra == {f.name for f in FIELDS}
    groups = {g.title.split()[0]: {a.dest for a in g._group_actions} for g in p._action_groups}
    for f in FIELDS:
        assert f.name in groups[f.metadata["section"]], f.name
    hints = typing.get_type_hints(TrainConfig)
    actions = {a.dest: a for a in p._actions}
    for f in FIELDS:
        a = actions[f.name]
        assert a.option_strings[0] == _flag(f.name) and a.default is argparse.SUPPRESS
        if hints[f.name] is bool:
            assert isinstance(a, argparse.BooleanOptionalAction)
        if f.metadata["choices"]:
            assert a.metavar == "{" + ",".join(f.metadata["choices"]) + "}"
    a = p.parse_args(["--eval-tokens", "none", "--steps", "3", "--no-qk-norm", "--data", "x", "y", "--lr", "1"])
    assert (a.eval_tokens, a.steps, a.qk_norm, a.data, a.lr) == (None, 3, False, ["x", "y"], 1.0)


def test_train_help_shows_one_group_per_section(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    starts = [out.index(f"{s} ([{s}] in a --config file):") for s in SECTIONS]
    assert starts == sorted(starts)
    for f in FIELDS:  # every flag is listed in its own section's group
        i = SECTIONS.index(f.metadata["section"])
        end = starts[i + 1] if i + 1 < len(starts) else len(out)
        assert f"  {_flag(f.name)}" in out[starts[i]:end], f.name
    assert "8% slower" in " ".join(out.split())  # help text is written plainly; argparse's %-formatting is escaped


@pytest.mark.parametrize("f", CHOICES, ids=lambda f: f.name)
def test_choices_from_metadata_reject_bad_values_naming_the_flag(f, tmp_path, capsys):
    message = f"{_flag(f.name)} must be one of {' | '.join(f.metadata['choices'])}, got 'bogus'"
    assert main(["train", _flag(f.name), "bogus", "--print-config"]) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="^" + message.replace("|", r"\|")):
        TrainConfig(**{f.name: "bogus"}).check()
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'[{f.metadata["section"]}]\n{f.name} = "bogus"\n')
    assert main(["train", "--config", str(cfg), "--print-config"]) == 2
    assert f"`{f.name}` must be one of" in capsys.readouterr().err


def test_sectioned_toml_and_yaml_round_trip(tmp_path, capsys):
    argv = ["--objective", "ul2", "--steps", "7", "--eval-tokens", "none", "--data", "a", "b", "--lr", "0.01",
            "--no-qk-norm", "--loss-impl", "chunked", "--glob", "*.py", "--precision", "fp32"]
    first = _printed(capsys, *argv)
    assert "[model]" in first and "[optim]" in first and "[train]" not in first
    f = tmp_path / "printed.toml"
    f.write_text(first)
    assert _printed(capsys, "--config", str(f)) == first
    cfg = TrainConfig(**load_config_file(f))
    assert (cfg.objective, cfg.steps, cfg.eval_tokens, cfg.data, cfg.lr, cfg.qk_norm, cfg.loss_impl, cfg.glob) == \
        ("ul2", 7, None, ["a", "b"], 0.01, False, "chunked", "*.py")
    y = tmp_path / "run.yaml"
    y.write_text("model:\n  objective: ul2\n  qk-norm: false\noptim:\n  lr: 0.01\nrun:\n  steps: 7\n"
                 "data:\n  data: [a, b]\n  seq_len: 128\n")
    assert load_config_file(y) == {"objective": "ul2", "qk_norm": False, "lr": 0.01, "steps": 7, "data": ["a", "b"],
                                   "seq_len": 128}


def test_flat_train_table_and_saved_json_files_load_to_the_same_config(tmp_path):
    cfg = TrainConfig(objective="span", lr=0.02, data=["x"], steps=9, eval_tokens=None, compile=True)
    values = {k: v for k, v in dataclasses.asdict(cfg).items() if v is not None}
    flat = "\n".join(f"{k.replace('_', '-')} = {json.dumps(v)}" for k, v in values.items())
    files = {"flat.toml": flat, "train.toml": "[train]\n" + flat, "sectioned.toml": to_toml(cfg),
             "nested.toml": "\n".join(f"[train.{s}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in
                                      cfg.section(s).items() if v is not None) for s in SECTIONS)}
    for name, text in files.items():
        (tmp_path / name).write_text(text + "\n")
    cfg.save(tmp_path / "config.json")  # an earlier run's config.json is a flat JSON config file
    for name in [*files, "config.json"]:
        loaded = load_config_file(tmp_path / name)
        got = TrainConfig(**{"eval_tokens": None, **loaded})
        assert got == cfg, name
    old = json.loads((tmp_path / "config.json").read_text())  # saved before init / loss_impl existed
    del old["init"], old["loss_impl"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert TrainConfig.load(tmp_path / "old.json") == cfg


@pytest.mark.parametrize("text,match", [
    ("[model]\nlr = 0.1\n", r"`lr` belongs in \[optim\], not in \[model\]"),
    ("[run]\nseq-len = 64\n", r"`seq-len` belongs in \[data\], not in \[run\]"),
    ("[train.eval]\nsteps = 3\n", r"`steps` belongs in \[run\], not in \[eval\]"),
    ("[optimizer]\nlr = 0.1\n", r"unknown section `\[optimizer\]`; did you mean `\[optim\]`"),
    ("[model.run]\nsteps = 3\n", r"section `\[run\]` inside `\[model\]`"),
    ("lr = 0.1\n[optim]\nlr = 0.2\n", "`lr` is given twice"),
    ("[optim]\nlerning_rate = 0.1\n", "unknown key `lerning_rate`"),
])
def test_a_key_in_the_wrong_section_is_named_with_the_right_one(tmp_path, text, match):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_config_file(f)
    y = tmp_path / "bad.yaml"
    y.write_text("model:\n  lr: 0.1\n")
    with pytest.raises(ValueError, match=r"`lr` belongs in \[optim\]"):
        load_config_file(y)


# What each file of configs/ gave while the files were flat `[train]` tables; their sectioned form
# must give the same configs.
SHIPPED = {
    "default.toml": {},
    "gated_ssm.toml": {"backbone": "gated_ssm", "time_budget": 120.0, "out": "runs/gated_ssm"},
    "mlm.toml": {"objective": "mlm", "time_budget": 120.0, "out": "runs/mlm"},
    "prefix_lm.toml": {"objective": "prefix_lm", "time_budget": 120.0, "out": "runs/prefix_lm"},
    "span.toml": {"objective": "span", "time_budget": 120.0, "out": "runs/span"},
    "ul2.toml": {"objective": "ul2", "time_budget": 120.0, "out": "runs/ul2"},
}


def test_shipped_configs_are_sectioned_and_give_the_configs_they_always_gave():
    assert sorted(f.name for f in (ROOT / "configs").glob("*.toml")) == sorted(SHIPPED)
    for name, changed in SHIPPED.items():
        text = (ROOT / "configs" / name).read_text()
        assert "[train]" not in text and "[run]" in text, name
        assert TrainConfig(**load_config_file(ROOT / "configs" / name)) == TrainConfig(**changed), name


def test_new_fields_are_validated_naming_their_flag(tmp_path):
    from headway.loss.validate import IMPLS

    assert next(f for f in FIELDS if f.name == "loss_impl").metadata["choices"] == IMPLS
    TrainConfig(tokenizer="bytes").check()
    (tmp_path / "tokenizer.json").write_text("{}")
    TrainConfig(tokenizer=str(tmp_path / "tokenizer.json")).check()  # a file or a folder: checked to exist
    TrainConfig(tokenizer=str(tmp_path)).check()
    with pytest.raises(ValueError, match=r"^--tokenizer must be bpe \| bytes \| the path of a tokenizer.json"):
        TrainConfig(tokenizer=str(tmp_path / "missing")).check()
    with pytest.raises(ValueError, match=r"^--init must be a local HuggingFace checkpoint folder holding "
                                         r"config.json, got '.*missing'"):
        TrainConfig(init=str(tmp_path / "missing")).check()
    hf = tmp_path / "hf"
    hf.mkdir()
    with pytest.raises(ValueError, match="^--init must be a local HuggingFace checkpoint folder"):
        TrainConfig(init=str(hf)).check()
    (hf / "config.json").write_text("{}")
    TrainConfig(init=str(hf)).check()  # the backbone becomes the checkpoint's architecture
    with pytest.raises(ValueError, match="^--init must be given without --backbone"):
        TrainConfig(init=str(hf), backbone="gated_ssm").check()
    with pytest.raises(ValueError, match="^--backbone must be one of"):
        TrainConfig(backbone="lstm").check()


def test_the_cli_page_lists_each_sections_keys():
    rows = {}
    for line in (ROOT / "docs" / "cli.md").read_text().splitlines():
        if line.startswith("| `[") and "]` |" in line:
            table, keys = line.strip("|").split("|")
            rows[table.strip().strip("`[]")] = {k.strip().strip("`") for k in keys.split(",")}
    assert rows == {s: set(TrainConfig().section(s)) for s in SECTIONS}

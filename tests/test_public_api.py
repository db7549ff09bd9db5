"""The public API: `import headway as hw` gives the recipe's names, one import path each; every name
in a public `__all__` has a docstring; the library's defaults are what `headway train` trains; an
old import path still works for one release, with a DeprecationWarning."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

import headway as hw

SRC = Path(hw.__file__).resolve().parent
PACKAGES = ["headway", "headway.check", "headway.data", "headway.heads", "headway.integrations", "headway.loss",
            "headway.models", "headway.objectives", "headway.recipe", "headway.train"]
RECIPE_NAMES = ["Vocab", "ByteTokenizer", "BPETokenizer", "build_objective", "vocab_for", "CLM", "MLM", "PrefixLM",
                "FIM", "SpanCorruption", "Mixture", "ul2", "Packer", "batches", "Loader", "collate", "build_model",
                "make_optimizer", "RECIPE", "check_causal", "linear_cross_entropy", "token_logprobs", "LossOptions",
                "use_fused_loss", "fit_vocab", "ObjectiveCollator", "CausalityCallback", "IGNORE_INDEX"]


@cache
def _attribute_docs() -> dict[str, str]:
    """NAME -> the string literal right after `NAME = ...` at module level, in any headway module."""
    docs: dict[str, str] = {}
    for path in SRC.rglob("*.py"):
        body = ast.parse(path.read_text(encoding="utf-8")).body
        for node, after in zip(body, body[1:]):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            if (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                for t in targets:
                    if isinstance(t, ast.Name):
                        docs[t.id] = after.value.value
    return docs


def _doc(name: str, obj: object) -> str:
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__") or ""
        if dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("):
            return ""  # the signature dataclasses write when a class has no docstring
        return doc
    if inspect.ismodule(obj) or callable(obj):
        return getattr(obj, "__doc__", None) or ""
    return _attribute_docs().get(name, "")


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_has_a_docstring(package: str) -> None:
    if package == "headway.integrations":
        pytest.importorskip("transformers")
    module = importlib.import_module(package)
    missing = [n for n in module.__all__ if n != "__version__" and not _doc(n, getattr(module, n)).strip()]
    assert not missing, f"{package}: no docstring for {missing}"


def test_the_recipe_names_are_one_import_away() -> None:
    assert set(RECIPE_NAMES) <= set(hw.__all__) | set(hw.HF_NAMES)
    for name in hw.__all__:
        assert getattr(hw, name) is not None
    if importlib.util.find_spec("transformers") is not None:
        for name in hw.HF_NAMES:
            assert getattr(hw, name) is getattr(importlib.import_module("headway.integrations.hf"), name)


def test_a_star_import_needs_neither_transformers_nor_a_heavy_import() -> None:
    code = ("import sys; sys.modules['transformers'] = None\n"  # an import of it now fails
            "from headway import *\n"
            "assert Vocab is not None and linear_cross_entropy is not None")
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert hw.Vocab is importlib.import_module("headway.types").Vocab
    assert hw.make_optimizer is importlib.import_module("headway.train").make_optimizer
    assert hw.__version__ == "0.2.0"
    assert (SRC / "py.typed").exists()


def test_the_old_vocab_path_warns_and_still_works() -> None:
    with pytest.warns(DeprecationWarning, match="headway.types"):
        from headway.data.vocab import Vocab
    assert Vocab is hw.Vocab
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from headway.types import Vocab as again  # the canonical path does not warn
    assert again is hw.Vocab


def test_library_defaults_are_what_headway_train_trains() -> None:
    from headway.objectives import build_objective
    from headway.train.autosize import LADDER
    from headway.train.config import TrainConfig
    from headway.train.optim import lr_at
    from headway.train.runs import model_for_run

    cfg, r = TrainConfig(), hw.RECIPE
    for f in dataclasses.fields(r):
        if f.name not in ("optimizer", "size"):
            assert getattr(cfg, f.name) == getattr(r, f.name), f.name
    # the size is the machine's choice (`--size auto`), from the recipe's size up; with no budget to
    # measure against, the library builds the recipe's
    assert cfg.size == "auto" and LADDER[0] == r.size
    cfg = dataclasses.replace(cfg, size=r.size)
    assert cfg.resolved_optimizer() == r.optimizer
    vocab = hw.Vocab(300)
    torch.manual_seed(0)
    cli = model_for_run(cfg, build_objective(cfg.objective, vocab), vocab)
    torch.manual_seed(0)
    lib = hw.build_model(vocab)
    assert cli.backbone.config == lib.backbone.config
    assert all(torch.equal(a, b) for a, b in zip(cli.state_dict().values(), lib.state_dict().values()))
    opt = hw.make_optimizer(lib)
    assert set(opt.parts) == {"adamw", "muon"}
    assert all(g["lr"] == cfg.lr and g["weight_decay"] in (cfg.weight_decay, 0.0) for g in opt.param_groups)
    assert [r.lr_at(s, 300) for s in range(0, 300, 7)] == [lr_at(s, 300, cfg) for s in range(0, 300, 7)]
    from headway.train.device import autocast_for, resolve_precision

    for forced in ("0", "1"):  # the precision `--precision auto` picks on either CPU kind
        with pytest.MonkeyPatch.context() as m:
            m.setenv("HEADWAY_FAST_BF16", forced)
            want = autocast_for(resolve_precision("auto", torch.device("cpu")), torch.device("cpu"))
            with r.autocast("cpu"), want:
                pass
            assert type(r.autocast("cpu")) is type(want)
            assert r.autocast("cpu").fast_dtype == want.fast_dtype and r.autocast("cpu")._enabled == want._enabled


def test_batches_from_memory_are_seeded_and_cover_epochs() -> None:
    tok = hw.ByteTokenizer()
    vocab = hw.Vocab.from_tokenizer(tok)
    docs = [np.array(tok.encode(t * 5)) for t in ("alpha ", "beta beta ", "gamma\n")]
    objective = hw.build_objective("clm", vocab)
    take = lambda seed: [b.input_ids for _, b in zip(range(4), hw.batches(docs, objective, 16, 2, vocab.pad, seed))]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(take(0), take(0)))
    one = list(hw.batches(docs, objective, 16, 2, vocab.pad, 0, epochs=1))
    want = sum(len(c) + 1 for d in docs for c in hw.chunks(d, objective.max_tokens(16)))  # every token, each <eos>
    assert sum(int(b.num_targets) for b in one) == want
    with pytest.raises(ValueError, match="empty"):
        next(hw.batches([np.zeros(0, np.int64)], objective, 16, 2, vocab.pad))


def test_the_schedule_decays_with_the_steps_or_with_the_clock() -> None:
    from headway.recipe import lr_schedule

    assert [lr_schedule(s, 300, 1.0, 50, 0.1) for s in range(50)] == [(s + 1) / 50 for s in range(50)]
    for step in range(50, 300, 13):  # a fixed step count and its fraction done give the same rate
        frac = (step - 50) / (300 - 50)
        assert lr_schedule(step, 300, 1.0, 50, 0.1) == pytest.approx(lr_schedule(step, None, 1.0, 50, 0.1,
                                                                                   progress=frac), rel=1e-12)
    by_clock = [lr_schedule(60, None, 1.0, 50, 0.1, progress=p / 100) for p in range(-10, 121)]
    assert all(b <= a for a, b in zip(by_clock, by_clock[1:]))  # never back up as the clock moves on
    assert by_clock[0] == pytest.approx(1.0) and by_clock[-1] == pytest.approx(0.1)  # clipped to [0, 1]
    with pytest.raises(ValueError, match="total"):
        lr_schedule(60, None, 1.0, 50, 0.1)

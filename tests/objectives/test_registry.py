"""Objectives come from one registry: a new one is one file plus one registration, and spec parsing,
`build_objective`, mixtures, the run config and `--objective`'s help (the field's metadata) all
follow it."""

import dataclasses
import re

import numpy as np
import pytest

from headway.objectives import CLM, SINGLE, Mixture, build_objective, check_spec, register
from headway.objectives.registry import REGISTRY, names
from headway.train.config import TrainConfig
from headway.types import Vocab


def test_every_registered_objective_builds_and_the_cli_help_lists_exactly_them():
    vocab = Vocab(300, num_sentinels=8)
    for name in names():
        objective = build_objective(name, vocab)
        ex = objective(np.arange(40) % 300, np.random.default_rng(0))
        assert len(ex) > 0
    help_text = next(f for f in dataclasses.fields(TrainConfig) if f.name == "objective").metadata["help"]
    listed = re.search(r"weighted mix: ([a-z0-9_ |]+?),", help_text).group(1)
    assert set(listed.replace(" ", "").split("|")) == set(SINGLE)  # headway's own registrations


class ReversedLM:
    """CLM on the document read backwards: an objective written outside headway."""

    name = "reversed_lm"
    needs_bidirectional = False
    trains_left_to_right = True

    def __init__(self, vocab: Vocab) -> None:
        self.clm = CLM(vocab)

    def __call__(self, tokens, rng):
        return self.clm(np.asarray(tokens)[::-1], rng)

    def max_tokens(self, row_length: int) -> int:
        return row_length - 1


@pytest.fixture
def reversed_lm():
    register("reversed_lm", "CLM on the document read backwards (a test objective)")(
        lambda vocab, codec: ReversedLM(vocab))

    try:
        yield
    finally:
        REGISTRY.pop("reversed_lm")


def test_one_registration_makes_a_new_objective_usable_everywhere(reversed_lm):
    vocab = Vocab(300, num_sentinels=8)
    assert check_spec("clm:0.5,reversed_lm:0.5") == [("clm", 0.5), ("reversed_lm", 0.5)]
    ex = build_objective("reversed_lm", vocab)(np.array([1, 2, 3]), np.random.default_rng(0))
    assert ex.input_ids.tolist() == [vocab.eos, 3, 2, 1]
    mix = build_objective("clm:0.5,reversed_lm:0.5", vocab)
    assert isinstance(mix, Mixture) and len(mix.members) == 2
    TrainConfig(objective="reversed_lm").check()  # the run config accepts it


def test_registration_refuses_a_duplicate_or_a_bad_name():
    with pytest.raises(ValueError, match="already registered"):
        register("clm", "again")(lambda vocab, codec: CLM(vocab))
    with pytest.raises(ValueError, match="lowercase identifier"):
        register("Not-A-Name", "bad")
    with pytest.raises(ValueError, match="unknown objective 'nope'"):
        build_objective("nope", Vocab(300))

"""The one registry of objective spec names: name -> factory, help, the config fields it reads.

An objective is one file plus one registration in it:

    @register("clm", "causal LM: every token, then EOS, predicted from the tokens before it")
    def _clm(vocab: Vocab, codec: Codec) -> Objective:
        return CLM(vocab)

`build_objective`, `check_spec`, `headway train --objective` and its `--help` all read the registry;
no other list of objective names exists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from headway.types import Objective, Vocab

Codec = tuple[Callable[[str], list[int]], Callable[[list[int]], str]] | None
Factory = Callable[[Vocab, Codec], Objective]


@dataclass(frozen=True)
class Registration:
    """A spec name: `factory(vocab, codec)` builds the objective; `help` is its line in `--help`;
    `flags` names the config fields it reads (its parameters never go in the spec)."""

    name: str
    factory: Factory
    help: str
    flags: tuple[str, ...] = ()


REGISTRY: dict[str, Registration] = {}


def register(name: str, help: str, flags: tuple[str, ...] = ()) -> Callable[[Factory], Factory]:
    """Decorator: register `factory` under the spec name `name` (a name is registered once)."""
    if not name.isidentifier() or name != name.lower():
        raise ValueError(f"register: an objective name must be a lowercase identifier, got {name!r}")

    def deco(factory: Factory) -> Factory:
        if name in REGISTRY:
            raise ValueError(f"register: objective {name!r} is already registered")
        REGISTRY[name] = Registration(name, factory, help, tuple(flags))
        return factory

    return deco


def names() -> tuple[str, ...]:
    """Every registered spec name, in registration order."""
    return tuple(REGISTRY)


def make(name: str, vocab: Vocab, codec: Codec = None) -> Objective:
    """The objective registered as `name`, or a ValueError naming the choices."""
    reg = REGISTRY.get(name)
    if reg is None:
        raise ValueError(f"unknown objective {name!r}; choose from {list(REGISTRY)} or a mix like 'clm:0.5,fim:0.5'")
    return reg.factory(vocab, codec)


def help_text() -> str:
    """`--objective`'s choices, one per registration: 'clm (causal LM: ...) | mlm (...) | ...'."""
    return " | ".join(f"{r.name} ({r.help})" for r in REGISTRY.values())

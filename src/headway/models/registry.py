"""The backbone registry: a name -> what the backbone is, how to build it and what it can do.

A backbone is one file plus one registration. The file defines the module (``(B, S, H)`` hidden
states in, ``(B, S, H)`` out, see `headway.types.Backbone`) and registers it::

    register_backbone(BackboneSpec(
        name="my_rnn", help="a GRU stack (causal only)",
        build=lambda r: MyRNN(r.hidden_size, r.num_layers),
        follows_mask=False, packs_documents=False))

`build_model`, the trainer, the causality guard, FLOP counting, the CLI's `--backbone` help and
`headway export` read the spec; nothing else names a backbone. A *family* serves many names under
one prefix: ``hf:llama``, ``hf:./config.json`` are resolved by the function the ``hf`` family
registered (`register_family`).

Capabilities, and what the trainer does with them:

- ``follows_mask``: attention follows each batch's mask spec (causal, a bidirectional prefix per
  document, the whole document for MLM, packed documents kept apart). Any objective works.
- ``bidirectional``: without ``follows_mask``, the backbone can be built bidirectional (its
  direction is in its weights, e.g. the gated SSM's backward branch): MLM-only objectives build it
  so; an objective that needs a bidirectional prefix *and* left-to-right targets is refused.
- ``packs_documents``: packed rows never mix documents. Without it the run puts one document per
  row (``packing="single"``) and says so.
- ``export``: how `headway export` writes it: ``"native"`` (a transformers class loads it without
  remote code) or ``"remote_code"`` (headway's source travels with the weights).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["BackboneSpec", "BuildRequest", "register_backbone", "register_family", "get_backbone",
           "backbone_names", "check_backbone"]


@dataclass(frozen=True)
class BuildRequest:
    """What `build_model` asks a backbone builder for: hidden size H, layers L, attention heads,
    whether to build it bidirectional, the recipe options the spec declares (e.g. the transformer's
    activation), and `init` (a checkpoint folder whose weights it starts from, families that take one)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    bidirectional: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    init: str | None = None


@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone (see the module docstring for the capabilities)."""

    name: str
    help: str
    build: Callable[[BuildRequest], nn.Module]
    follows_mask: bool = True
    bidirectional: bool = False
    packs_documents: bool = True
    export: str = "remote_code"  # native | remote_code
    options: tuple[str, ...] = ()  # recipe keyword options `build_model` passes through (e.g. activation)
    extra: dict[str, Any] = field(default_factory=dict)  # what the family's own code needs (export, init, ...)

    def __post_init__(self) -> None:
        if self.export not in ("native", "remote_code"):
            raise ValueError(f"BackboneSpec {self.name!r}: `export` must be 'native' or 'remote_code', got "
                             f"{self.export!r}")


_BACKBONES: dict[str, BackboneSpec] = {}
_FAMILIES: dict[str, tuple[Callable[[str], BackboneSpec], str]] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add `spec` under `spec.name` (a second registration of a name is refused)."""
    if spec.name in _BACKBONES or ":" in spec.name:
        raise ValueError(f"register_backbone: {spec.name!r} is already registered or contains ':'")
    _BACKBONES[spec.name] = spec
    return spec


def register_family(prefix: str, resolve: Callable[[str], BackboneSpec], help: str) -> None:
    """Serve every name ``PREFIX:REST`` with ``resolve(REST)`` (a ValueError there names what is wrong)."""
    if prefix in _FAMILIES:
        raise ValueError(f"register_family: {prefix!r} is already registered")
    _FAMILIES[prefix] = (resolve, help)


def backbone_names() -> list[str]:
    """The registered names, then each family as ``PREFIX:...``."""
    return list(_BACKBONES) + [f"{p}:..." for p in _FAMILIES]


def backbone_help() -> str:
    """One line per backbone and family, for `--backbone`'s help."""
    return " | ".join([f"{s.name} ({s.help})" for s in _BACKBONES.values()]
                      + [f"{p}:NAME ({h})" for p, (_, h) in _FAMILIES.items()])


def get_backbone(name: object) -> BackboneSpec:
    """The spec of `name`; a ValueError naming `--backbone`, the choices and the value otherwise."""
    if isinstance(name, str) and name in _BACKBONES:
        return _BACKBONES[name]
    if isinstance(name, str) and ":" in name:
        prefix, rest = name.split(":", 1)
        if prefix in _FAMILIES and rest:
            try:
                return _FAMILIES[prefix][0](rest)
            except ValueError as e:
                raise ValueError(f"--backbone {name}: {e}") from None
    raise ValueError(f"--backbone must be one of {' | '.join(backbone_names())}, got {name!r}")


def check_backbone(name: object) -> None:
    """A ValueError naming `--backbone`, the expected and the given value, unless `name` resolves."""
    get_backbone(name)

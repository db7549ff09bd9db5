"""`eager_under_compile`: what `@torch.compiler.disable` does, without importing `torch._dynamo`
(about 2 s on a 2-core machine) when headway is imported. Only `torch.compile` needs dynamo, and it
imports dynamo itself; a run without `--compile` and every CLI command start that much sooner."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)


def eager_under_compile(fn: F) -> F:
    """`fn` as is; inside a graph that torch.compile traces, a graph break and `fn` run eagerly
    (`torch.compiler.disable(fn)`, built only then)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if torch.compiler.is_compiling():
            return torch.compiler.disable(fn)(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]

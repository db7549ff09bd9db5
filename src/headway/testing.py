"""Helpers for users' own test suites: `assert_causal(model)` in pytest."""

from __future__ import annotations

from headway.check import CausalityReport, check_causal


def assert_causal(model: object, **kw: object) -> CausalityReport:
    """Fail (AssertionError with the report) unless `check_causal(model, **kw)` finds the model
    causal: no output depends on a later input, another row or another packed document."""
    rep = check_causal(model, **kw)  # type: ignore[arg-type]
    if not rep.ok:
        raise AssertionError(str(rep))
    return rep

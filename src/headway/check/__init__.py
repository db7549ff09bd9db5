"""The causality check: does any output depend on a later input, on another row of the batch, or
on another document packed into the same row?

    report = check_causal(model)            # a headway model/backbone, a transformers model, a callable
    print(report); report.save_heatmap("leak.png")

Two detectors run by default, in train and in eval mode, at several lengths (just below, at and
above powers of two, where FFT-size leaks appear): the exact float64 gradient test and a black-box
perturbation test (`detectors.py` states the math and the tolerances). The report names the first
leaking (output, input) pairs, the first leaking submodule, the detector and mode that found it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from headway.check.adapters import Probe, make_probe, mtp_probe
from headway.check.detectors import BLACKBOX_TOL, GRADIENT_TOL, Finding, Tolerance, black_box, gradient

DEFAULT_LENGTHS = (15, 16, 17, 33)
"""Sequence lengths checked by default: just below, at and above a power of two (FFT-size leaks
appear at some lengths only), and one longer."""
DETECTORS = ("gradient", "black-box")
MODES = ("eval", "train")


@dataclass
class CausalityReport:
    """What `check_causal` found: `ok` (no leak, and at least one detector ran), the `findings`
    (first leaking (output, input) pairs, submodule, detector, mode, length), the checks that ran and
    those skipped with their reason, and the seconds taken. `str(report)` is one line;
    `save_heatmap(path)` draws the first finding's dependence map."""

    ok: bool
    findings: list[Finding] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # "gradient/eval/L=16" ...
    skipped: list[str] = field(default_factory=list)  # detectors that could not run, and why
    seconds: float = 0.0
    name: str = ""
    offset: int = 0  # output t may depend on inputs up to t + offset (an MTP depth k: k)

    @property
    def leaks(self) -> list[tuple[int, int]]:
        """(output, input) pairs of the first finding: each a dependence the detector saw; empty when
        it saw outputs move but could not isolate one input that moves them alone."""
        return self.findings[0].pairs if self.findings else []

    @property
    def layer(self) -> str | None:
        """The first leaking submodule of the first finding."""
        return self.findings[0].module if self.findings else None

    @property
    def seq_len(self) -> int:
        return self.findings[0].length if self.findings else 0

    def __str__(self) -> str:
        if self.ok:
            n = self.offset
            later = "a later input" if not n else f"an input more than {n} position{'s' if n > 1 else ''} on"
            s = (f"causal: no output depends on {later}, another row or another packed document "
                 f"({len(self.checked)} checks: {', '.join(sorted({c.rsplit('/', 1)[0] for c in self.checked}))}; "
                 f"lengths {', '.join(sorted({c.rsplit('=', 1)[1] for c in self.checked}, key=int))}; "
                 f"{self.seconds:.1f} s)")
        else:
            f = self.findings[0]
            where = f"; first leaking submodule {f.module!r}" if f.module else ""
            s = (f"NOT causal: {f.kind} dependence found by the {f.detector} detector in {f.mode} mode at length "
                 f"{f.length}: {f.describe()}{where} ({len(self.findings)} findings)")
        if self.skipped:
            s += " [not run: " + "; ".join(self.skipped) + "]"
        return s

    def save_heatmap(self, path: str | Path) -> Path:
        """PNG of the output x input dependence of the first finding that has one (row 0), with the
        allowed region (causal, same document) outlined."""
        from headway.check.plot import heatmap

        f = next((f for f in self.findings if f.matrix is not None), None)
        if f is None:
            raise ValueError("save_heatmap: no dependence matrix to draw (run check_causal with a gradient "
                             "detector, or on a leaking model)")
        return heatmap(f, Path(path))


def check_causal(model: object, seq_len: int | None = None, packed: bool = True, seed: int = 0, *,
                 lengths: Sequence[int] | None = None, rows: int = 2, detectors: Sequence[str] = DETECTORS,
                 modes: Sequence[str] = MODES, vocab_size: int | None = None, hidden_size: int | None = None,
                 takes: str = "auto", gradient_tol: Tolerance = GRADIENT_TOL,
                 black_box_tol: Tolerance = BLACKBOX_TOL, offset: int = 0, mtp_depth: int = 0) -> CausalityReport:
    """Check `model` for dependence on the future, on other rows and (packed=True) on other
    documents of a packed row.

    model: a headway `LanguageModel` or backbone, a transformers `PreTrainedModel`, or a callable
    ids (B, S) -> (B, S, D) (pass vocab_size) or vectors (B, S, H) -> (B, S, D) (pass hidden_size).
    The model itself is not modified (the detectors work on copies). `seq_len` checks one length;
    `lengths` several (default 15, 16, 17, 33); `rows` rows per batch (>= 2 checks that rows stay
    apart). A detector the model cannot run is listed in `report.skipped`; a model no detector
    could run is not reported causal.

    offset: output t may depend on the inputs up to t + offset (0: causal). mtp_depth: k > 0 checks
    a headway `LanguageModel`'s multi-token prediction depth k instead of its backbone: its hidden
    states (`LanguageModel.mtp_hidden`) may see the inputs up to t + k, nothing later (offset k is
    added to `offset`).
    """
    t0 = time.perf_counter()
    if not isinstance(offset, int) or offset < 0 or not isinstance(mtp_depth, int) or mtp_depth < 0:
        raise ValueError(f"check_causal: offset and mtp_depth must be integers >= 0, got {offset!r}, {mtp_depth!r}")
    if mtp_depth:
        model = mtp_probe(model, mtp_depth)  # type: ignore[arg-type]
        offset += mtp_depth
    probe: Probe = make_probe(model, vocab_size, hidden_size, takes)
    Ls = [seq_len] if seq_len is not None else list(lengths or DEFAULT_LENGTHS)
    for x in Ls:
        if not isinstance(x, int) or x < 2:
            raise ValueError(f"check_causal: lengths must be integers >= 2, got {x!r}")
    if rows < 1:
        raise ValueError(f"check_causal: rows must be >= 1, got {rows}")
    bad = set(detectors) - set(DETECTORS) or set(modes) - set(MODES)
    if bad:
        raise ValueError(f"check_causal: unknown detector or mode {sorted(bad)}; choose from {DETECTORS} / {MODES}")
    report = CausalityReport(ok=True, name=probe.name, offset=offset)
    pack = packed and probe.packing
    if packed and not probe.packing:
        report.skipped.append("packed documents (a plain callable cannot express them)")
    plans = []
    if "gradient" in detectors:
        if probe.vectors is None:
            report.skipped.append("gradient (the model takes token ids only)")
        else:
            plans.append("gradient")
    if "black-box" in detectors:
        plans.append("black-box")
    copies = {}
    for det in plans:
        for mode in modes:
            for L in Ls:
                if det not in copies:
                    copies[det] = probe.clone(torch.float64 if det == "gradient" else None) if probe.clone else probe
                p = copies[det]
                try:
                    if det == "gradient":
                        found = gradient(p, L, rows, pack and L >= 4, mode, seed, gradient_tol, offset)
                    else:
                        found = black_box(p, L, rows, pack and L >= 4, mode, seed, tol=black_box_tol, offset=offset)
                except Exception as e:  # noqa: BLE001 - a detector the model cannot run is reported, not raised
                    report.skipped.append(f"{det}/{mode}/L={L}: {type(e).__name__}: {str(e)[:160]}")
                    continue
                report.checked.append(f"{det}/{mode}/L={L}")
                report.findings.extend(found)
    report.ok = not report.findings and bool(report.checked)
    if not report.checked:
        report.ok = False
        report.skipped.append("no detector could run: the model was not checked")
    report.seconds = time.perf_counter() - t0
    return report


__all__ = ["check_causal", "CausalityReport", "Finding", "Tolerance", "GRADIENT_TOL", "BLACKBOX_TOL",
           "DEFAULT_LENGTHS"]

"""The agreement step of the vocabulary-parallel loss: before any other collective, each rank checks
its own arguments (raising nothing yet) and all-gathers one small int64 row (its error message, slice
size, token count, label range and checksum, options, gradient needs). Every rank reads the same table
and either raises the same `ValueError` or goes on, so all ranks run the same sequence of collectives
and a bad batch on any rank leaves the process group usable.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from headway.loss.amp import cast_dtype
from headway.loss.validate import REDUCTIONS, LossArgs, check_args, shift_labels

_MSG_BYTES = 512  # room for a rank's error message in its row of the agreement table (a longer one is cut)
_NONE = -(2**63)  # an argument that is None
_P, _Q = 65521, 65536  # labels checksum: sum over t of (y_t mod _P) * (t mod _Q + 1), exact in int64
# a rank's row in the agreement table: these columns (the last four computed from the labels where they
# live), then its error message's bytes ("" when its arguments passed the local checks)
_COLS = ("rows", "start", "tokens", "hidden_size", "dtype", "bias", "grad", "grad_hidden", "lse", "gather_tokens",
         "ignore_index", "shift", "label_smoothing", "z_loss", "softcap", "reduction", "num_items_in_batch",
         "valid", "label_min", "label_max", "labels")
C = {name: i for i, name in enumerate(_COLS)}
_LABEL_COLS = 4


def _code(name: str) -> int:
    return zlib.crc32(name.encode())


def _bits(x: object) -> int:
    """A float's exact bit pattern (-0.0 as 0.0), or _NONE for None."""
    return _NONE if x is None else struct.unpack("<q", struct.pack("<d", float(x) + 0.0))[0]  # type: ignore[arg-type]


def _float(v: int) -> float | None:
    return None if v == _NONE else struct.unpack("<d", struct.pack("<q", v))[0]


_DTYPES = {_code(str(d)): str(d) for d in vars(torch).values() if isinstance(d, torch.dtype)}
_REDUCTIONS = {_code(r): repr(r) for r in REDUCTIONS}

# values that must be the same on every rank: (column, what it is, how to show it, for which gather_tokens)
_SAME: tuple[tuple[str, str, Callable[[int], object], bool | None], ...] = (
    ("gather_tokens", "`gather_tokens`", bool, None),
    ("tokens", "the number of tokens in `hidden` and `labels`", int, None),
    ("hidden_size", "the hidden size H (last dim of `hidden` and `weight`)", int, None),
    ("dtype", "the dtype of `hidden` and `weight` (after autocast's cast)", lambda v: _DTYPES.get(v, v), None),
    ("bias", "whether `bias` is given", bool, None),
    ("ignore_index", "`ignore_index`", int, None),
    ("shift", "`shift`", bool, None),
    ("label_smoothing", "`label_smoothing`", _float, None),
    ("z_loss", "`z_loss`", _float, None),
    ("softcap", "`softcap`", _float, None),
    ("grad", "whether a gradient is needed (grad mode on and `hidden`, `weight` or `bias` requiring grad)", bool, None),
    ("grad_hidden", "whether `hidden` needs a gradient (grad mode on and hidden.requires_grad)", bool, None),
    ("reduction", "`reduction` (gather_tokens=False)", lambda v: _REDUCTIONS.get(v, v), False),
    ("num_items_in_batch", "`num_items_in_batch` (gather_tokens=False)", _float, False),
    ("valid", "the number of labels other than ignore_index (gather_tokens=False: the same `labels`)", int, False),
    ("labels", "`labels` (gather_tokens=False; shown: a checksum)", int, False),
)


VOCAB_PARALLEL_IMPLS = ("auto", "chunked")
"""The `impl` values the vocab-parallel loss runs: it has the chunk driver only ("auto" means it)."""


def local_check(fn: str, hidden: Tensor, weight: Tensor, labels: Tensor, vocab_start: int | None,
                gather_tokens: bool, return_lse: bool, kw: dict[str, object], impl: str = "auto"
                ) -> tuple[str, LossArgs | None, Tensor | None, dict[str, int]]:
    """This rank's checks, raising nothing: (error message or "", checked arguments, aligned labels (N,),
    the agreement columns). Labels are range-checked later, against the V that the agreement gives.
    `impl`: the backend asked for (`LossOptions.impl`); only `VOCAB_PARALLEL_IMPLS` run here."""
    try:
        if impl not in VOCAB_PARALLEL_IMPLS:
            raise ValueError(f"{fn}: `impl` must be one of {VOCAB_PARALLEL_IMPLS} (the vocab-parallel loss runs the "
                             f"chunk driver only), got {impl!r}")
        if not isinstance(weight, Tensor) or weight.dim() != 2:
            got = getattr(weight, "shape", type(weight).__name__)
            raise ValueError(f"{fn}: `weight` must be this rank's 2-D (V_r, H) slice, got {got}")
        if weight.is_meta:
            raise ValueError(f"{fn}: `weight` must be a tensor with data (not on the meta device), got a meta tensor")
        devices = {t.device for t in (hidden, weight, labels) if isinstance(t, Tensor)}
        if len(devices) > 1:
            raise ValueError(f"{fn}: `hidden`, `weight` and `labels` must be on one device, got "
                             f"{', '.join(sorted(map(str, devices)))}")
        if vocab_start is not None and (not isinstance(vocab_start, int) or isinstance(vocab_start, bool)):
            raise ValueError(f"{fn}: `vocab_start` must be None or an int, got {vocab_start!r}")
        # every label is 0 here: the range check against the whole vocabulary comes after the agreement
        stand_in = torch.zeros_like(labels) if isinstance(labels, Tensor) else labels
        a = check_args(hidden, weight, stand_in, impl="chunked", fn=fn, **kw)  # type: ignore[arg-type]
        ignore_index = int(kw["ignore_index"])  # type: ignore[call-overload]
        y = (shift_labels(labels, ignore_index) if kw["shift"] else labels).reshape(-1).long()
        grad = torch.is_grad_enabled()
        cols = dict(
            rows=weight.shape[0], start=_NONE if vocab_start is None else vocab_start, tokens=y.shape[0],
            hidden_size=weight.shape[1], bias=a.bias is not None,
            dtype=_code(str(cast_dtype(a.hidden, a.amp, a.hidden.device.type))),  # the products' dtype
            grad=grad and any(t is not None and t.requires_grad for t in (hidden, weight, a.bias)),
            grad_hidden=grad and hidden.requires_grad, lse=bool(return_lse), gather_tokens=bool(gather_tokens),
            ignore_index=ignore_index, shift=bool(kw["shift"]), label_smoothing=_bits(a.label_smoothing),
            z_loss=_bits(a.z_loss), softcap=_bits(a.softcap), reduction=_code(a.reduction),
            num_items_in_batch=_bits(a.num_items_in_batch))
        return "", a, y, {k: int(v) for k, v in cols.items()}
    except Exception as e:  # reported by every rank after the agreement step
        return (str(e) if isinstance(e, ValueError) else f"{fn}: {type(e).__name__}: {e}"), None, None, {}


def comm_device(group) -> torch.device:  # noqa: ANN001
    """Where the agreement row lives: chosen from the backend alone (nccl: this rank's current CUDA
    device; otherwise the CPU), never from a rank's own tensors, which may sit on another device than
    the other ranks' (its local checks then report that, through the agreement, on every rank)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree(group, device: torch.device, cols: dict[str, int], y: Tensor | None, ignore_index: int,  # noqa: ANN001
           error: str) -> tuple[list[list[int]], list[str]]:
    """The agreement step, one all-gather of one small int64 row per rank: every rank's columns and
    error message, the same on every rank."""
    host = torch.tensor([cols.get(c, 0) for c in _COLS[:-_LABEL_COLS]], dtype=torch.long)
    msg = error.encode()[:_MSG_BYTES].decode(errors="ignore").encode().ljust(_MSG_BYTES, b"\0")
    packed = torch.from_numpy(np.frombuffer(msg, dtype=np.int64).copy())
    if y is None:
        lab = torch.zeros(_LABEL_COLS, dtype=torch.long, device=device)
    else:
        valid = y != ignore_index
        lo, hi = torch.aminmax(torch.nn.functional.pad(torch.where(valid, y, 0), (0, 1)))  # 0: always in range
        if cols["gather_tokens"]:  # each rank has its own labels: nothing to compare
            check = torch.zeros((), dtype=torch.long, device=y.device)
        else:
            check = ((y % _P) * (torch.arange(y.shape[0], device=y.device) % _Q + 1)).sum()
        lab = torch.stack([valid.sum(), lo, hi, check]).to(device)
    row = torch.cat([host.to(device), lab, packed.to(device)])
    parts = [torch.empty_like(row) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, row, group=group)
    table = torch.stack(parts).cpu()
    msgs = [table[r, len(_COLS):].numpy().tobytes().rstrip(b"\0").decode(errors="replace")
            for r in range(table.shape[0])]
    return table[:, : len(_COLS)].tolist(), msgs


def _ranks(rs: list[int]) -> str:
    return f"rank {rs[0]}" if len(rs) == 1 else "ranks " + ", ".join(map(str, rs))


def _by_rank(fn: str, per_rank: list[str]) -> str:
    """Each distinct message once, with the ranks that gave it."""
    groups: dict[str, list[int]] = {}
    for r, m in enumerate(per_rank):
        if m:
            groups.setdefault(m.removeprefix(f"{fn}: "), []).append(r)
    return "; ".join(f"{m} (on {_ranks(rs)})" for m, rs in groups.items())


def _disagreement(what: str, values: list[int], show: Callable[[int], object]) -> str:
    groups: dict[int, list[int]] = {}
    for r, v in enumerate(values):
        groups.setdefault(v, []).append(r)
    expected = max(groups, key=lambda v: len(groups[v]))
    got = ", ".join(f"{show(v)} on {_ranks(rs)}" for v, rs in groups.items() if v != expected)
    return (f"{what} must be the same on every rank: expected {show(expected)} as on {_ranks(groups[expected])}, "
            f"got {got}")


def verdict(fn: str, table: list[list[int]], msgs: list[str]) -> str:
    """The one error message every rank raises, "" when there is none: the ranks' own errors first,
    then labels outside the vocabulary, slices that do not tile it, and values that differ across ranks."""
    if any(msgs):
        return f"{fn}: {_by_rank(fn, msgs)}"
    col = lambda name: [row[C[name]] for row in table]  # noqa: E731
    sizes = col("rows")
    V = sum(sizes)
    bad = [f"`labels` must be in [0, {V}) or ignore_index={row[C['ignore_index']]}, got a label "
           f"{row[C['label_min']] if row[C['label_min']] < 0 else row[C['label_max']]}"
           if row[C["label_min"]] < 0 or row[C["label_max"]] >= V else "" for row in table]
    if any(bad):
        return f"{fn}: {_by_rank(fn, bad)}"
    starts = [sum(sizes[:r]) if s == _NONE else s for r, s in enumerate(col("start"))]
    bad = ["" if 0 <= s <= V - n else f"`vocab_start` must be in [0, {V - n}], got {s}" for s, n in zip(starts, sizes)]
    if any(bad):
        return f"{fn}: {_by_rank(fn, bad)}"
    order = sorted(range(len(table)), key=lambda r: starts[r])
    if any(starts[q] != starts[p] + sizes[p] for p, q in zip(order, order[1:])):
        slices = ", ".join(f"[{s}, {s + n}) on rank {r}" for r, (s, n) in enumerate(zip(starts, sizes)))
        return f"{fn}: `vocab_start` must lay the ranks' slices side by side over [0, {V}), got {slices}"
    out: list[str] = []
    differs: set[str] = set()
    for name, what, show, mode in _SAME:
        if mode is not None and ("gather_tokens" in differs or bool(table[0][C["gather_tokens"]]) != mode):
            continue
        if name in ("valid", "labels") and differs & {"tokens", "valid"}:
            continue  # follows from a difference already named
        if len(set(col(name))) > 1:
            differs.add(name)
            out.append(_disagreement(what, col(name), show))
    return f"{fn}: " + "; ".join(out) if out else ""

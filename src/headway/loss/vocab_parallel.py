"""Vocabulary-parallel linear cross-entropy over `torch.distributed`: no rank holds the whole head.

Each rank holds a contiguous slice W_r (V_r, H) of the head weight, rows [start_r, start_r + V_r)
(uneven slices allowed), and the same hidden states and labels. Forward runs the chunk driver of
`core.py` for the local log-sum-exp, target logit and logit sum; ONE all-gather of those (3, N)
statistics combines them (lse = logsumexp over ranks). Backward runs the driver again with the
global lse, producing the local dW_r and bias grad without any communication; dE needs one
all-reduce (sum over ranks). Per-token losses equal the single-process `linear_cross_entropy` on
the concatenated weight, for every option.

Before any other collective, every call runs one agreement step: each rank checks its arguments
locally (raising nothing yet) and all-gathers one small int64 row (its error message if any, its
slice size, token count, label range, options, gradient needs). Every rank then reads the same
table and either raises the same `ValueError` or goes on, so all ranks always run the same
sequence of collectives and a bad batch leaves the process group usable.
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from headway.constants import IGNORE_INDEX
from headway.loss.amp import cast, cast_dtype
from headway.loss.core import (
    ChunkOpts,
    Stats,
    acc_dtype,
    default_chunk_size,
    mean_scale,
    new_grads,
    run_chunks,
    token_losses,
)
from headway.loss.validate import REDUCTIONS, LossArgs, check_args, shift_labels


class _VocabParallelCE(torch.autograd.Function):
    """Per-token losses (N,) and the global lse (N,) against this rank's slice; the chunk driver of
    `core.py` runs once for statistics (forward) and once for gradients (backward).

    `amp`: the autocast dtype (None: autocast off); the slice's weight and bias are cast to it here
    as autocast casts them (`headway.loss.amp`), and their gradients, summed over chunks in float32,
    come back in the caller's dtypes; `h` comes already cast. Autocast is off inside."""

    @staticmethod
    def forward(ctx, h: Tensor, w: Tensor, b: Tensor | None, y: Tensor, start: int, V: int, o: ChunkOpts,  # noqa: ANN001
                group, gathered_tokens: bool, any_lse: bool,  # noqa: ANN001
                amp: torch.dtype | None) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        acc = acc_dtype(h.dtype)
        on_slice = (y >= start) & (y < start + w.shape[0])
        y_loc = torch.where(on_slice, y - start, torch.zeros_like(y))
        with torch.autocast(h.device.type, enabled=False), torch.no_grad():
            wc, bc = cast(w, amp, h.device.type), cast(b, amp, h.device.type)
            st = run_chunks(h, wc, None if bc is None else bc.to(acc), y_loc, o, V, on_slice)
        rows = [st.lse, st.zy] + ([st.zsum] if st.zsum is not None else [])
        parts = [torch.empty(len(rows), h.shape[0], dtype=acc, device=h.device)
                 for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, torch.stack(rows), group=group)  # the one collective of the forward
        gathered = torch.stack(parts)  # (world, 2 or 3, N)
        lse = torch.logsumexp(gathered[:, 0], dim=0)  # the hook: combine the slices' lse
        full = Stats(lse, gathered[:, 1].sum(0), gathered[:, 2].sum(0) if st.zsum is not None else None)
        ctx.save_for_backward(h, w, b, y_loc, on_slice, lse)
        ctx.cfg = (o, group, V, gathered_tokens, any_lse, amp)
        return token_losses(full, o, V), lse

    @staticmethod
    def backward(ctx, g: Tensor | None, g_lse: Tensor | None):  # type: ignore[override]  # noqa: ANN205
        h, w, b, y_loc, on_slice, lse = ctx.saved_tensors
        o, group, V, gathered_tokens, any_lse, amp = ctx.cfg
        acc = acc_dtype(h.dtype)
        g = torch.zeros(h.shape[0], dtype=acc, device=h.device) if g is None else g.to(acc)
        gl = None if g_lse is None else g_lse.to(acc)
        if gathered_tokens:  # each rank's loss covers its own tokens: combine the per-token gradients
            if any_lse:  # one all-reduce of (g, gl) on every rank, whether or not its own lse got a gradient
                both = torch.stack([g, torch.zeros_like(g) if gl is None else gl])
                dist.all_reduce(both, group=group)
                g, gl = both[0], both[1]
            else:  # no rank returned its lse, so no rank has an lse gradient
                g = g.contiguous()
                dist.all_reduce(g, group=group)
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], b is not None and ctx.needs_input_grad[2])
        with torch.autocast(h.device.type, enabled=False), torch.no_grad():
            wc, bc = cast(w, amp, h.device.type), cast(b, amp, h.device.type)
            grads = new_grads(h, wc, bc, need, g, gl, lse)
            run_chunks(h, wc, None if bc is None else bc.to(acc), y_loc, o, V, on_slice, grads)
        if grads.dh is not None:  # every rank needs dE or none does (the agreement step checks it)
            dist.all_reduce(grads.dh, group=group)  # dE = sum over ranks of the local contributions
        to = lambda t, like: None if t is None else t.to(like.dtype)  # noqa: E731
        return to(grads.dh, h), to(grads.dw, w), to(grads.db, b), None, None, None, None, None, None, None, None


class _GatherRows(torch.autograd.Function):
    """(N, H) on each rank -> (world * N, H), rank r's rows at [r * N, (r + 1) * N).

    Backward takes this rank's rows of the incoming gradient, which must be the same on every
    rank (it is: the vocab-parallel backward all-reduces dE)."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:  # noqa: ANN001
        ctx.rank, ctx.n, ctx.group = dist.get_rank(group), x.shape[0], group
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        return g[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n], None


def _gather_labels(y: Tensor, group) -> Tensor:  # noqa: ANN001
    parts = [torch.empty_like(y) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, y.contiguous(), group=group)
    return torch.cat(parts)


_MSG_BYTES = 512  # room for a rank's error message in its row of the agreement table (a longer one is cut)
_NONE = -(2**63)  # an argument that is None
_P, _Q = 65521, 65536  # labels checksum: sum over t of (y_t mod _P) * (t mod _Q + 1), exact in int64
# a rank's row in the agreement table: these columns (the last four computed from the labels where they
# live), then its error message's bytes ("" when its arguments passed the local checks)
_COLS = ("rows", "start", "tokens", "hidden_size", "dtype", "bias", "grad", "grad_hidden", "lse", "gather_tokens",
         "ignore_index", "shift", "label_smoothing", "z_loss", "softcap", "reduction", "num_items_in_batch",
         "valid", "label_min", "label_max", "labels")
_C = {name: i for i, name in enumerate(_COLS)}
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


def _local_check(fn: str, hidden: Tensor, weight: Tensor, labels: Tensor, vocab_start: int | None,
                 gather_tokens: bool, return_lse: bool, kw: dict[str, object]
                 ) -> tuple[str, LossArgs | None, Tensor | None, dict[str, int]]:
    """This rank's checks, raising nothing: (error message or "", checked arguments, aligned labels (N,),
    the agreement columns). Labels are range-checked later, against the V that the agreement gives."""
    try:
        if not isinstance(weight, Tensor) or weight.dim() != 2:
            got = getattr(weight, "shape", type(weight).__name__)
            raise ValueError(f"{fn}: `weight` must be this rank's 2-D (V_r, H) slice, got {got}")
        if weight.is_meta:
            raise ValueError(f"{fn}: `weight` must be a tensor with data (not on the meta device), got a meta tensor")
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


def _comm_device(group, *tensors: object) -> torch.device:  # noqa: ANN001
    """Where the agreement row lives: the first of `tensors` with data, else the backend's device."""
    for t in tensors:
        if isinstance(t, Tensor) and not t.is_meta:
            return t.device
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _agree(group, device: torch.device, cols: dict[str, int], y: Tensor | None, ignore_index: int,  # noqa: ANN001
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


def _verdict(fn: str, table: list[list[int]], msgs: list[str]) -> str:
    """The one error message every rank raises, "" when there is none: the ranks' own errors first,
    then labels outside the vocabulary, slices that do not tile it, and values that differ across ranks."""
    if any(msgs):
        return f"{fn}: {_by_rank(fn, msgs)}"
    col = lambda name: [row[_C[name]] for row in table]  # noqa: E731
    sizes = col("rows")
    V = sum(sizes)
    bad = [f"`labels` must be in [0, {V}) or ignore_index={row[_C['ignore_index']]}, got a label "
           f"{row[_C['label_min']] if row[_C['label_min']] < 0 else row[_C['label_max']]}"
           if row[_C["label_min"]] < 0 or row[_C["label_max"]] >= V else "" for row in table]
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
        if mode is not None and ("gather_tokens" in differs or bool(table[0][_C["gather_tokens"]]) != mode):
            continue
        if name in ("valid", "labels") and differs & {"tokens", "valid"}:
            continue  # follows from a difference already named
        if len(set(col(name))) > 1:
            differs.add(name)
            out.append(_disagreement(what, col(name), show))
    return f"{fn}: " + "; ".join(out) if out else ""


def vocab_parallel_linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    vocab_start: int | None = None,
    bias: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "mean",
    shift: bool = False,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    num_items_in_batch: Tensor | float | None = None,
    chunk_size: int | None = None,
    group=None,  # noqa: ANN001
    gather_tokens: bool = False,
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """`linear_cross_entropy` with the head weight sharded by vocabulary rows across `group`.

    `weight` is this rank's (V_r, H) slice starting at global row `vocab_start` (default: the
    sum of the slice sizes of lower ranks), or a DTensor sharded on dim 0 (its local shard is used;
    its mesh gives the group). Arguments are checked by the same code as `linear_cross_entropy`'s,
    the loss is normalized by the same function, and `return_lse` returns the global (differentiable)
    log-sum-exp of this rank's tokens. Dtypes and autocast follow `linear_cross_entropy`'s rules
    (under autocast the products run in the autocast dtype and each gradient keeps its tensor's dtype).

    gather_tokens=False: `hidden`, `labels` and the options must be the same on every rank; the
    result is too, and equals `linear_cross_entropy(hidden, W, labels)` for the concatenated W.

    gather_tokens=True (data parallel + vocab-parallel head): each rank passes its OWN tokens (the
    same shape on every rank). They are all-gathered, scored against every rank's slice, and each
    rank gets the loss of its own tokens (reduced over them; pass the global target count as
    `num_items_in_batch` for a global mean). Gradients are those of the SUM over ranks of the
    returned losses: each rank's hidden gets its own rows, each slice of W its exact share.

    Errors: every rank must call this function. If any rank's input is bad (anything
    `linear_cross_entropy` refuses, a label outside [0, V), slices that do not tile [0, V)) or a value
    that must agree differs across ranks (H, dtype, token count, bias given or not, `ignore_index`,
    `shift`, `label_smoothing`, `z_loss`, `softcap`, whether gradients are needed; with
    gather_tokens=False also `labels`, `reduction` and `num_items_in_batch`), EVERY rank raises the
    same `ValueError`, naming the argument, the expected and actual values and the ranks (of `group`)
    concerned, without waiting on a collective; the group stays usable for the next call. Slice sizes,
    `vocab_start` and `chunk_size` may differ across ranks, and so may `reduction`, `num_items_in_batch`
    and `return_lse` with gather_tokens=True. The check costs one all-gather of a few hundred bytes
    per rank.
    """
    fn = "vocab_parallel_linear_cross_entropy"
    if hasattr(weight, "to_local") and hasattr(weight, "placements"):  # a DTensor
        if group is None:
            group = weight.device_mesh.get_group()
        weight = weight.to_local()
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(f"{fn}: torch.distributed is not initialized")
    kw: dict[str, object] = dict(
        bias=bias, ignore_index=ignore_index, reduction=reduction, shift=shift, label_smoothing=label_smoothing,
        z_loss=z_loss, softcap=softcap, num_items_in_batch=num_items_in_batch, chunk_size=chunk_size)
    error, a, y, cols = _local_check(fn, hidden, weight, labels, vocab_start, gather_tokens, return_lse, kw)
    table, msgs = _agree(group, _comm_device(group, weight, hidden), cols, y, cols.get("ignore_index", 0), error)
    verdict = _verdict(fn, table, msgs)  # the same on every rank
    if verdict:
        raise ValueError(verdict)
    assert a is not None and y is not None
    rank = dist.get_rank(group)
    sizes = [row[_C["rows"]] for row in table]
    V = sum(sizes)
    start = sum(sizes[:rank]) if vocab_start is None else vocab_start
    # under autocast: hidden cast here (before any gather), weight and bias inside the Function
    flat = cast(a.hidden, a.amp, a.hidden.device.type)
    own = slice(0, y.shape[0])
    if gather_tokens:
        own = slice(rank * y.shape[0], (rank + 1) * y.shape[0])
        flat, y = _GatherRows.apply(flat, group), _gather_labels(y, group)
    valid = y != ignore_index
    idx = valid.nonzero().squeeze(1)
    o = ChunkOpts(a.label_smoothing, a.z_loss, a.softcap, a.chunk_size or default_chunk_size(
        weight.shape[0], a.softcap is not None, hidden=weight.shape[1], device=weight.device))
    with torch.autocast(flat.device.type, enabled=False) if a.amp is not None else contextlib.nullcontext():
        per, lse_v = _VocabParallelCE.apply(flat.index_select(0, idx), weight, bias, y[idx], start, V, o, group,
                                            gather_tokens, any(row[_C["lse"]] for row in table), a.amp)
    full = torch.zeros(y.shape[0], dtype=per.dtype, device=per.device).index_put((idx,), per)[own]
    if reduction == "none":
        loss = full.reshape(a.lead_shape)
    elif reduction == "sum":
        loss = full.sum()
    else:
        loss = full.sum() * mean_scale(valid[own].sum(), a.num_items_in_batch, per.dtype)
    if return_lse:
        lse = torch.zeros(y.shape[0], dtype=lse_v.dtype, device=lse_v.device).index_put((idx,), lse_v)[own]
        return loss, lse.reshape(a.lead_shape)
    return loss

"""The one loss core: a chunk driver shared by the chunked and the vocab-parallel loss.

Tokens are processed in chunks of `chunk_size` rows; each chunk's float32 logits (n, V) live in
one buffer reused by every chunk and never all at once. For hidden h (N, H), a weight slice
W (V_r, H) (the whole head, or one rank's rows), bias b and per-token target columns y:

    z = softcap(h @ W.T + b)                    (n, V_r) float32 (float64 for float64 inputs)
    stats per token: lse_r = logsumexp(z), zy = z[y] (0 when the target is not in this slice),
                     zsum = sum(z) (label smoothing only)
    lse = combine(lse_r) over slices            (identity in one process)
    loss_t = (1 - eps) * (lse - zy) + eps * (lse - zsum / V) + z_loss * lse**2

and the gradient of ``sum_t g_t * loss_t + sum_t gl_t * lse_t`` with respect to the logits,

    dz_t = (g_t * (1 + 2 * z_loss * lse_t) + gl_t) * softmax(z)_t - g_t * ((1 - eps) onehot(y_t) + eps / V)
           (times 1 - (z / c)**2 through a softcap c)

from which each chunk adds dE = dz @ W, dW += dz.T @ h, db += sum(dz). `run_chunks` does all of
this in one pass when the lse needs no combining (one process: stats and gradients together, the
three-product floor); the vocab-parallel loss calls it once for statistics, combines, and once
more in backward for gradients.

On CPU, without softcap, label smoothing or a vocabulary slice (and, for 16-bit inputs, without a
bias), a chunk takes a shorter road (`_fused_chunk`): one in-place softmax (row by row, in cache)
instead of separate max, exp, sum and scale passes over the (n, V) block; lse_t = z_y - log p_y
(recomputed from the logits for the rare rows whose p_y is below float range); and the per-row
weights and the one-hot term go to the small (n, H) side of the products:
dE = c ⊙ (p @ W) - g ⊙ W[y], dW += pᵀ (c ⊙ h) - index_add(y, g ⊙ h).
16-bit inputs keep the chunk's logits in their dtype: the float32 softmax works on a few rows at
a time, in cache, and is rounded back in place (`_fused_low_chunk`); the one-hot joins p_y in
float32 (as dz / c) and is rounded once for the two products.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from headway.loss.matmul import mm_nt, use_onednn

DEFAULT_BUDGET_BYTES = 64 * 2**20
CPU_CACHE_BYTES = 4 * 2**20  # a CPU chunk that fits in cache where the CPU's caches cannot be read
ADD_BLOCK_BYTES = 2 * 2**20  # the float32 rows `add_rows` casts at a time
# the float32 rows a 16-bit chunk's softmax works on at a time (`_fused_low_chunk`); at N=4096, H=768,
# V=50257 in bf16 on a 2-core AVX512-BF16 EPYC, 512 KiB to 32 MiB all took 2.77-2.80 s (best of 3)
SOFTMAX_BLOCK_BYTES = 2 * 2**20
FUSED_ON_CPU = True  # the in-place softmax road on CPU (`_fused_chunk`); `separate_passes()` turns it off


def cpu_chunk_cache_bytes(threads: int | None = None) -> int:
    """The cache a CPU chunk's logits should fit (see `default_chunk_size`): twice the L2 cache of
    each core that works on it, 2 x L2 x threads (4 MiB on the 2-core AMD EPYC with 1 MiB of L2 per
    core where the rule was measured), at most half the last-level cache; CPU_CACHE_BYTES where sysfs
    gives no cache sizes."""
    from headway.cpu import cache_bytes

    l2, l3 = cache_bytes(2), cache_bytes(3)
    if l2 is None:
        return CPU_CACHE_BYTES
    target = 2 * l2 * (threads or torch.get_num_threads())
    return target if l3 is None else min(target, l3 // 2)


@contextlib.contextmanager
def separate_passes() -> Iterator[None]:
    """Within the block, CPU chunks take the separate max / exp / sum / scale passes (the benchmarks'
    "before" rows), not the one in-place softmax."""
    global FUSED_ON_CPU
    before, FUSED_ON_CPU = FUSED_ON_CPU, False
    try:
        yield
    finally:
        FUSED_ON_CPU = before


@dataclass(frozen=True)
class ChunkOpts:
    label_smoothing: float
    z_loss: float
    softcap: float | None
    chunk_size: int


@dataclass
class Stats:
    """Per-token statistics of one slice of the vocabulary: each (N,)."""

    lse: Tensor
    zy: Tensor
    zsum: Tensor | None


@dataclass
class Grads:
    """What to differentiate and where to write it. `g` (N,) or scalar: the weight of each token's
    loss; `gl` (N,) or None: the weight of each token's lse; dh (N, H), dw (V_r, H), db (V_r,)
    outputs (None: not needed). `lse` (N,): the global lse when already known (vocab-parallel)."""

    g: Tensor
    gl: Tensor | None = None
    dh: Tensor | None = None
    dw: Tensor | None = None
    db: Tensor | None = None
    lse: Tensor | None = None


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation / softmax dtype: float32 for 16-bit and float32 inputs, float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def default_chunk_size(V: int, softcap: bool, budget_bytes: int = DEFAULT_BUDGET_BYTES, hidden: int | None = None,
                       device: torch.device | None = None, dtype: torch.dtype | None = None) -> int:
    """Rows per chunk so the float32 chunk logits (plus the softcap buffer) fit the budget.

    On CPU (with `hidden` and `device` given) chunks are smaller when the hidden size is small:
    then the products are bound by memory, not arithmetic, and a chunk that stays in cache (the size
    `cpu_chunk_cache_bytes` reads from the CPU's caches) makes the elementwise passes over it
    several times cheaper; but never fewer rows than 2·hidden (small products and per-chunk
    overhead dominate below), nor more than the budget. Measured on a 2-core AMD EPYC (fwd+bwd,
    float32): N=4096 H=64 V=8301 127 ms at 126 rows vs 167 ms at 2021; H=256 V=32768 best at 512
    rows; H=512 V=128256 best at the budget's 130.
    16-bit inputs on CPU get twice the budget and twice the cache share: their products run about
    twice as fast, so each chunk's fixed costs (adding its (V, H) dW product into the float32 dW)
    weigh twice as much; at N=4096 H=768 V=50257 in bf16 (AVX512-BF16, 2 cores) 333 rows ran at 90%
    of the three products' speed, 666 rows at 100%; at H=96 V=8301, 128 / 256 / 512 rows took
    141 / 123 / 109 ms."""
    per_row = 4 * max(V, 1) * (2 if softcap else 1)
    on_cpu = device is not None and device.type == "cpu"
    twice = 2 if on_cpu and dtype in (torch.bfloat16, torch.float16) else 1
    rows = max(1, twice * budget_bytes // per_row)
    if hidden is not None and on_cpu:
        rows = min(rows, max(twice * cpu_chunk_cache_bytes() // per_row, 2 * hidden, 1))
    return rows


def token_losses(st: Stats, o: ChunkOpts, V: int) -> Tensor:
    """loss_t (N,) from the (combined) statistics: the one formula both losses use."""
    loss = st.lse - st.zy
    if o.label_smoothing > 0:
        assert st.zsum is not None
        loss = (1 - o.label_smoothing) * loss + o.label_smoothing * (st.lse - st.zsum / V)
    if o.z_loss > 0:
        loss = loss + o.z_loss * st.lse.square()
    return loss


class ChunkBuffers:
    """The chunk's logits buffers, shared by every chunk of a call and kept across calls.

    A fresh 64 MiB tensor costs a page fault per 4 KiB page on CPU (glibc maps blocks this large
    afresh and returns them on free): about 15 ms per chunk here, and on a small model's training
    step tens of thousands of faults per step in the forward and again in the backward. So the
    chunks share one float32 buffer (rows, V), plus one in the input dtype for 16-bit inputs (their
    matmul output and the dlogits cast back for dE and dW), plus one for the softcap derivative
    when used; and the buffers of the last shape seen on each device and thread are kept for the
    next call (the next step's forward and backward), so a training run allocates them once.
    """

    _kept = threading.local()  # per thread: {(tag, device, acc, low dtype, V, softcap): ChunkBuffers}

    def __init__(self, rows: int, h: Tensor, w: Tensor, softcap: bool) -> None:
        acc, V = acc_dtype(h.dtype), w.shape[0]
        self._shape, self._acc, self._device, self._onednn = (rows, V), acc, h.device, use_onednn(h)
        self._z: Tensor | None = None
        self.low = None if h.dtype == acc else _kept_empty((rows, V), h.dtype, h.device)
        self.deriv = _kept_empty((rows, V), acc, h.device) if softcap else None
        self.rows = rows

    @property
    def z(self) -> Tensor | None:
        """The (rows, V) accumulation-dtype logits buffer, made on first use (16-bit inputs on the
        CPU's fused road never use it); None with oneDNN, whose product allocates its own output."""
        if self._z is None and not self._onednn:
            self._z = _kept_empty(self._shape, self._acc, self._device)
        return self._z

    @classmethod
    def get(cls, rows: int, h: Tensor, w: Tensor, softcap: bool, tag: str = "") -> ChunkBuffers:
        """Buffers for `rows` rows: the kept ones when they are large enough (one set per device,
        dtype and V: a step's forward and backward reuse them), else new ones (then kept). `tag`
        names a second set that lives beside the first (a distillation teacher's logits)."""
        kept = cls._kept.__dict__.setdefault("bufs", {})
        key = (tag, h.device, h.dtype, w.shape[0], softcap, use_onednn(h))
        b = kept.get(key)
        if b is None or b.rows < rows:
            kept.pop(key, None)  # free the smaller set first
            b = kept[key] = cls(rows, h, w, softcap)
        return b

    @staticmethod
    def view(buf: Tensor | None, n: int) -> Tensor | None:
        return None if buf is None else buf[:n]

    @classmethod
    def scratch(cls, tag: str, rows: int, V: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A (rows, V) work buffer named `tag`, kept across calls like the logits buffers."""
        kept = cls._kept.__dict__.setdefault("scratch", {})
        key = (tag, device, dtype, V)
        t = kept.get(key)
        if t is None or t.shape[0] < rows:
            kept.pop(key, None)
            t = kept[key] = _kept_empty((rows, V), dtype, device)
        return t[:rows]


def _kept_empty(shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A buffer kept across calls: a normal tensor even when made under `torch.inference_mode()`
    (an inference tensor could not be written by a later call outside it)."""
    with torch.inference_mode(False):
        return torch.empty(shape, dtype=dtype, device=device)


class ChunkTerm(Protocol):
    """A second loss term on the same chunks of student logits (distillation, `loss/distill.py`).

    `run_chunks` calls it once per chunk of rows [s, e), with z (n, V): the chunk's (soft-capped)
    logits, before the cross-entropy pass overwrites them. It records its per-token values itself
    and returns its gradient with respect to z (n, V) (already weighted per token), which is added
    to the cross-entropy's before the softcap derivative and the products; or None (no gradients)."""

    def __call__(self, s: int, e: int, z: Tensor) -> Tensor | None: ...


def chunk_logits(h: Tensor, w: Tensor, b: Tensor | None, softcap: float | None, bufs: ChunkBuffers,
                 want_deriv: bool) -> tuple[Tensor, Tensor | None]:
    """(z, d): the chunk's (n, V) logits softcap(h @ w.T + b) in float32 (float64 for float64
    inputs), in the reused buffer (or oneDNN's own output); d = 1 - tanh^2 when asked (softcap only)."""
    n = h.shape[0]
    low = ChunkBuffers.view(bufs.low, n)
    if bufs.z is None:
        z = mm_nt(h, w)
    elif low is None:
        z = torch.mm(h, w.t(), out=bufs.z[:n])
    else:
        z = bufs.z[:n].copy_(torch.mm(h, w.t(), out=low))
    if b is not None:
        z.add_(b)
    d = None
    if softcap is not None:
        z.div_(softcap).tanh_()
        if want_deriv:
            assert bufs.deriv is not None
            d = torch.square(z, out=bufs.deriv[:n]).neg_().add_(1.0)
        z.mul_(softcap)
    return z, d


def add_rows(dst: Tensor, src: Tensor, block_bytes: int = ADD_BLOCK_BYTES) -> None:
    """dst += src in blocks of rows. Where the dtypes differ (a 16-bit chunk's dW product into the
    float32 dW), one whole-tensor add first casts all of src to a new float32 tensor (V x H x 4 bytes,
    fresh pages each time); a block's cast stays in cache (4.5x faster at V=50257, H=768 on CPU)."""
    if dst.dtype == src.dtype or dst.dim() == 0:
        dst.add_(src)
        return
    rows = max(1, block_bytes // max(1, dst.numel() // max(1, dst.shape[0]) * dst.element_size()))
    for i in range(0, dst.shape[0], rows):
        dst[i:i + rows].add_(src[i:i + rows])


def _accumulate(dz: Tensor, h: Tensor, w: Tensor, dh: Tensor | None, dw: Tensor | None, db: Tensor | None,
                first: bool, low: Tensor | None, dw_low: Tensor | None = None) -> None:
    """Add one chunk's dE (written to dh, its rows), dW and db from its dlogits dz (n, V).

    The first chunk writes dW and db instead of adding to them, so they need no zero-filling
    (at V=128256, H=1024 that saves a 512 MiB write and read). 16-bit inputs with a float32 dW:
    each chunk's product lands in `dw_low` (V_r, H), one buffer for the whole call, before it is
    added (a fresh (V_r, H) output per chunk costs a page fault per 4 KiB on CPU).
    """
    dzc = dz if low is None else low.copy_(dz)  # dlogits in the input dtype for the two products
    if dh is not None:
        if use_onednn(dzc):
            dh.copy_(mm_nt(dzc, w.t()))
        elif dh.dtype == w.dtype:
            torch.mm(dzc, w, out=dh)
        else:
            dh.copy_(torch.mm(dzc, w))
    if dw is not None:
        if dw.dtype == h.dtype:
            if first:
                torch.mm(dzc.t(), h, out=dw)
            else:
                dw.addmm_(dzc.t(), h)
        else:
            part = torch.mm(dzc.t(), h) if dw_low is None else torch.mm(dzc.t(), h, out=dw_low)
            if first:
                dw.copy_(part)
            else:
                add_rows(dw, part)
    if db is not None:
        if first:
            torch.sum(dz, dim=0, out=db)
        else:
            db.add_(dz.sum(dim=0))


def _coef(grads: Grads, g: Tensor, lse_c: Tensor, o: ChunkOpts, s: int, e: int) -> Tensor:
    """c_t: the weight of softmax(z)_t in dz_t (the z-loss and the lse's own gradient included)."""
    coef = g * (1.0 + 2.0 * o.z_loss * lse_c) if o.z_loss > 0 else g
    return coef if grads.gl is None else coef + grads.gl[s:e]


def _fused_chunk(z: Tensor, h: Tensor, w: Tensor, b: Tensor | None, y: Tensor) -> tuple[Tensor, Tensor]:
    """(z_y, lse) (n,) of a chunk's logits z (n, V), which become softmax(z) in place."""
    zy = z.gather(1, y[:, None]).squeeze(1)
    p = torch._softmax(z, 1, False, out=z)  # one pass per row, in cache; same values as torch.softmax
    py = p.gather(1, y[:, None]).squeeze(1)
    return zy, _lse_from_py(zy, py, h, w, b)


def _lse_from_py(zy: Tensor, py: Tensor, h: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """lse = z_y - log p_y (n,), recomputed from the logits for the rows whose p_y is below float range."""
    lse = zy - torch.log(py)
    low = py < torch.finfo(py.dtype).tiny  # p_y lost to underflow (z_y far below the max): recompute
    if bool(low.any()):
        rows = low.nonzero().squeeze(1)
        zr = torch.mm(h[rows], w.t()).to(py.dtype)
        lse[rows] = torch.logsumexp(zr if b is None else zr + b, dim=1)
    return lse


def _fused_low_chunk(z: Tensor, h: Tensor, w: Tensor, y: Tensor, block: Tensor,
                     keep: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(z_y, lse, p_y) (n,) in float32 of a 16-bit chunk's logits z (n, V), which become softmax(z)
    rounded to their dtype in place when `keep`. The float32 softmax runs on `block` (r, V), r rows
    at a time in cache: the chunk's float32 logits are never all in memory."""
    n, r = z.shape[0], block.shape[0]
    zy = z.gather(1, y[:, None]).squeeze(1).to(block.dtype)
    py = torch.empty_like(zy)
    for s in range(0, n, r):
        e = min(s + r, n)
        p = torch._softmax(block[:e - s].copy_(z[s:e]), 1, False, out=block[:e - s])
        py[s:e] = p.gather(1, y[s:e, None]).squeeze(1)
        if keep:
            z[s:e].copy_(p)
    return zy, _lse_from_py(zy, py, h, w, None), py


def _accumulate_fused(p: Tensor, coef: Tensor, side: Tensor, h: Tensor, w: Tensor, y: Tensor,
                      dh: Tensor | None, dw: Tensor | None, db: Tensor | None, first: bool,
                      dw_low: Tensor | None = None, one_hot: bool = True) -> None:
    """dz = c ⊙ p - side ⊙ onehot(y) without forming it: the row weights and the one-hot term act
    on the small (n, H) side of each product (dh = c ⊙ (p @ W) - side ⊙ W[y],
    dW += pᵀ(c ⊙ h) - index_add(y, side ⊙ h)); `one_hot=False`: side is all zero."""
    _accumulate(p, (h * coef[:, None]).to(h.dtype), w, dh, dw, None, first, None, dw_low)
    if dh is not None:
        dh.mul_(coef[:, None])
        if one_hot:
            dh.sub_(side[:, None] * w[y])
    if dw is not None and one_hot:
        dw.index_add_(0, y, (h * side[:, None]).to(dw.dtype), alpha=-1)
    if db is not None:
        pc = torch.mv(p.t(), coef)
        if first:
            db.copy_(pc)
        else:
            db.add_(pc)
        db.index_add_(0, y, side, alpha=-1)


def _accumulate_fused_low(p: Tensor, py: Tensor, coef: Tensor, g: Tensor, h: Tensor, w: Tensor, y: Tensor,
                          dh: Tensor | None, dw: Tensor | None, first: bool, dw_low: Tensor | None) -> None:
    """16-bit inputs: p (n, V) is softmax(z) already rounded to their dtype. The one-hot joins p_y in
    float32 first, dz / c = p - (g / c) onehot(y), rounded once into p, so a confident token's
    p_y - 1 is not lost to rounding p_y; rows where c = 0, or where g / c is beyond the dtype's
    range (fp16, |c| tiny against |g|), keep the one-hot on the small side."""
    ratio = g / coef
    inline = (coef != 0) & (ratio.abs() < torch.finfo(p.dtype).max / 2)  # fp16: g / c may not fit
    rows = torch.arange(p.shape[0], device=p.device)  # index_put_: a 16-bit CPU scatter_ casts all of p twice
    p.index_put_((rows, y), torch.where(inline, py - ratio, py).to(p.dtype))
    side = torch.where(inline, 0.0, g)
    _accumulate_fused(p, coef, side, h, w, y, dh, dw, None, first, dw_low, one_hot=bool(side.any()))


def run_chunks(h: Tensor, w: Tensor, b: Tensor | None, y: Tensor, o: ChunkOpts, V: int,
               on_slice: Tensor | None = None, grads: Grads | None = None, term: ChunkTerm | None = None) -> Stats:
    """The chunk driver: statistics of every token against this weight slice, and (with `grads`)
    the gradients, accumulated into `grads.dh/dw/db`. `term`: a second loss term on the same
    chunk logits (`ChunkTerm`), whose gradient joins the cross-entropy's (the whole vocabulary only).

    h (N, H); w (V_r, H); b (V_r,) or None, in the accumulation dtype; y (N,) target columns in
    this slice; `on_slice` (N,) bool: whether token t's target lies in this slice (None: all do);
    V: the whole vocabulary's size. Without `grads.lse` the slice's own lse is used for the
    softmax, which is right only when the slice is the whole vocabulary.
    """
    N, acc = h.shape[0], acc_dtype(h.dtype)
    lse = torch.empty(N, dtype=acc, device=h.device)
    zy = torch.empty(N, dtype=acc, device=h.device)
    zsum = torch.empty(N, dtype=acc, device=h.device) if o.label_smoothing > 0 else None
    eps = o.label_smoothing
    bufs = ChunkBuffers.get(max(1, min(o.chunk_size, N)), h, w, o.softcap is not None)
    several = N > o.chunk_size and grads is not None and grads.dw is not None and grads.dw.dtype != h.dtype
    dw_low = torch.empty(w.shape, dtype=h.dtype, device=h.device) if several else None
    fused = (FUSED_ON_CPU and h.device.type == "cpu" and o.softcap is None and eps == 0 and on_slice is None
             and (grads is None or grads.lse is None) and term is None and (b is None or bufs.low is None))
    block = None
    if fused and bufs.low is not None:  # 16-bit: the float32 softmax works on a few rows at a time
        rows = max(1, min(bufs.rows, SOFTMAX_BLOCK_BYTES // (4 * max(1, w.shape[0]))))
        block = ChunkBuffers.scratch("softmax-rows", rows, w.shape[0], acc, h.device)
    for s in range(0, N, o.chunk_size):
        e = min(s + o.chunk_size, N)
        z = deriv = extra = None  # drop the last chunk's oneDNN logits before the next product allocates its own
        if block is not None:
            p = torch.mm(h[s:e], w.t(), out=bufs.low[:e - s])  # (n, V_r) in the inputs' dtype
            zy[s:e], lse[s:e], py = _fused_low_chunk(p, h[s:e], w, y[s:e], block, grads is not None)
            if grads is not None:
                g = grads.g.expand(N)[s:e]
                _accumulate_fused_low(p, py, _coef(grads, g, lse[s:e], o, s, e), g, h[s:e], w, y[s:e],
                                      None if grads.dh is None else grads.dh[s:e], grads.dw, s == 0, dw_low)
            continue
        z, deriv = chunk_logits(h[s:e], w, b, o.softcap, bufs, grads is not None)  # (n, V_r)
        extra = None if term is None else term(s, e, z)  # before the passes below overwrite z
        if fused:
            zy[s:e], lse[s:e] = _fused_chunk(z, h[s:e], w, b, y[s:e])
            if grads is not None:
                g = grads.g.expand(N)[s:e]
                _accumulate_fused(z, _coef(grads, g, lse[s:e], o, s, e), g, h[s:e], w, y[s:e],
                                  None if grads.dh is None else grads.dh[s:e], grads.dw, grads.db, s == 0)
            continue
        yc = y[s:e, None]
        zyc = z.gather(1, yc).squeeze(1)
        zy[s:e] = zyc if on_slice is None else torch.where(on_slice[s:e], zyc, 0.0)
        if zsum is not None:
            zsum[s:e] = z.sum(dim=1)
        m = z.amax(dim=1)  # (n,)
        p = z.sub_(m[:, None]).exp_()  # in place: the logits buffer becomes exp(z - m)
        ssum = p.sum(dim=1)
        lse[s:e] = m + torch.log(ssum)
        if grads is None:
            continue
        lse_c = lse[s:e] if grads.lse is None else grads.lse[s:e]
        g = grads.g.expand(N)[s:e]
        # softmax = exp(z - m) * exp(m - lse); exactly 1 / sum when the slice is the vocabulary
        norm = 1.0 / ssum if grads.lse is None else torch.exp(m - lse_c)
        p.mul_((_coef(grads, g, lse_c, o, s, e) * norm)[:, None])
        tgt = -(1.0 - eps) * g
        if on_slice is not None:
            tgt = torch.where(on_slice[s:e], tgt, 0.0)
        p.scatter_add_(1, yc, tgt[:, None].to(p.dtype))
        if eps > 0:
            p.sub_((eps / V) * g[:, None])
        if extra is not None:
            p.add_(extra)
        if deriv is not None:
            p.mul_(deriv)
        _accumulate(p, h[s:e], w, None if grads.dh is None else grads.dh[s:e], grads.dw, grads.db, s == 0,
                    ChunkBuffers.view(bufs.low, e - s), dw_low)
    if N == 0 and grads is not None:  # no chunk ran: nothing wrote the gradients
        for t in (grads.dh, grads.dw, grads.db):
            if t is not None:
                t.zero_()
    return Stats(lse, zy, zsum)


def new_grads(h: Tensor, w: Tensor, b: Tensor | None, need: tuple[bool, bool, bool], g: Tensor,
              gl: Tensor | None = None, lse: Tensor | None = None) -> Grads:
    """Output buffers for the gradients asked for by `need` = (hidden, weight, bias): dE in the
    hidden dtype (float32 for 16-bit hidden when several slices add up), dW and db in float32."""
    acc = acc_dtype(h.dtype)
    return Grads(g=g, gl=gl, lse=lse,
                 dh=torch.empty(h.shape, dtype=h.dtype if lse is None else acc, device=h.device) if need[0] else None,
                 dw=torch.empty(w.shape, dtype=acc, device=w.device) if need[1] else None,
                 db=torch.empty(w.shape[0], dtype=acc, device=w.device) if need[2] and b is not None else None)


def scale_precomputed(grads: Iterable[Tensor | None], g: Tensor) -> None:
    """Multiply, in place (no copy), gradients computed in the forward pass for an incoming gradient
    of 1 by the incoming 0-d gradient `g` that backward receives (None entries skipped); nothing to
    do when `g` is a CPU 1."""
    if g.device.type != "cpu" or float(g) != 1.0:
        for t in grads:
            if t is not None:
                t.mul_(g.to(t.dtype))

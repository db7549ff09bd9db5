"""Validation of a masked-diffusion model: the ELBO's bits per byte — an upper bound on the model's
code length, not its exact likelihood — with its Monte Carlo standard error.

For a text x of L tokens the continuous-time ELBO (MDLM, LLaDA) is

    -log p_θ(x | L) <= B(x) = ∫_0^1 (1/t) E_{x_t}[ Σ_{i masked in x_t} -log p_θ(x^i | x_t) ] dt.

Given that l tokens are masked (l ~ Binomial(L, t), the masked set uniform among the l-subsets),
write G(l) = E[Σ_masked -log p_θ(x^i | x_l)]. Then ∫_0^1 (1/t) C(L,l) t^l (1-t)^(L-l) dt = 1/l, so
B(x) = Σ_{l=1}^{L} G(l) / l, and drawing l uniformly from {1, ..., L} gives the unbiased estimate

    X = (L / l) Σ_{i masked} -log p_θ(x^i | x_l),    E[X] = Σ_l (1/L)(L/l) G(l) = B(x),

LLaDA's lower-variance form of the same bound (its eq. 14): each draw of the masking level is one
draw of t ~ U(0, 1] reduced to what matters, the number of masked tokens, and X <= L·max CE has
bounded variance. Unlike training's t ~ U(ε, 1) it needs no ε, so E[X] is the whole bound, not
the part of it above ε (which would not be an upper bound).

Each validation document is cut into pieces of at most `seq_len` tokens (as training cuts them) and
each piece gets K >= 4 independent draws with a generator seeded by (seed, piece index): the same
masks at every evaluation of a run, on any number of ranks. The reported total is
T = Σ_pieces mean_k X_{p,k} (nats), and its standard error SE = sqrt(Σ_pieces s_p² / K) with s_p²
the sample variance of a piece's K draws; bits per byte = T / (ln 2 · bytes), and the same for SE.
The bound is on each piece given its length in tokens: a full code would also spend a few bits per
piece on the length, which a left-to-right model pays through its EOS.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from headway.constants import IGNORE_INDEX
from headway.models.lm import LanguageModel
from headway.train.metrics import to_bits_per_byte
from headway.types import Batch

ELBO_DRAWS = 4  # draws of the masking level per validation piece (>= 4: each piece's variance is estimated)


@dataclass
class ElboResult:
    """The ELBO bound over a validation split: `nats` (Σ over pieces of the mean over draws), its Monte
    Carlo standard error `se_nats`, the token and byte counts and the draws per piece."""

    nats: float
    se_nats: float
    tokens: int
    bytes: int
    draws: int

    @property
    def bits_per_byte(self) -> float:
        """The upper bound in bits per byte (NaN without tokens or bytes)."""
        return to_bits_per_byte(self.nats, self.tokens, self.bytes)

    @property
    def se_bits_per_byte(self) -> float:
        return to_bits_per_byte(self.se_nats, self.tokens, self.bytes)

    @property
    def nats_per_token(self) -> float:
        return self.nats / self.tokens if self.tokens else float("nan")

    def as_dict(self) -> dict:
        """What the run summary keeps (`Summary.val_elbo`)."""
        return {"bits_per_byte_bound": self.bits_per_byte, "standard_error": self.se_bits_per_byte,
                "nats_per_token_bound": self.nats_per_token, "draws": self.draws, "tokens": self.tokens,
                "bytes": self.bytes, "note": "upper bound (the diffusion ELBO), not the exact likelihood"}


def pieces(docs: list[np.ndarray], seq_len: int) -> list[np.ndarray]:
    """Every document cut into consecutive pieces of at most `seq_len` tokens (empty documents dropped)."""
    out = []
    for d in docs:
        d = np.asarray(d, dtype=np.int64)
        out.extend(d[s : s + seq_len] for s in range(0, len(d), seq_len))
    return out


def draw_masks(length: int, draws: int, rng: np.random.Generator) -> list[tuple[np.ndarray, float]]:
    """`draws` masks of one piece: each (masked (L,) bool, factor L / l) with l ~ U{1..L} masked positions
    chosen uniformly without replacement."""
    out = []
    for _ in range(draws):
        k = int(rng.integers(1, length + 1))
        masked = np.zeros(length, dtype=bool)
        masked[rng.choice(length, size=k, replace=False)] = True
        out.append((masked, length / k))
    return out


def _batch(rows: list[tuple[np.ndarray, np.ndarray]], pad: int, device: torch.device,
           shape: tuple[int, int] | None = None) -> Batch:
    """One bidirectional document per row ((ids, labels) each), right-padded to `shape` (B, S) (None: as
    many rows as given, as long as the longest); a row of padding only (a rank with fewer rows) is one
    document of pad tokens without targets."""
    B, S = shape or (max(1, len(rows)), max([len(x) for x, _ in rows] or [1]))
    ids = np.full((B, S), pad, dtype=np.int64)
    lab = np.full((B, S), IGNORE_INDEX, dtype=np.int64)
    doc = np.full((B, S), -1, dtype=np.int64)
    prefix = np.zeros((B, 1), dtype=np.int64)
    doc[len(rows) :], prefix[len(rows) :] = 0, S
    for b, (x, y) in enumerate(rows):
        ids[b, : len(x)], lab[b, : len(y)], doc[b, : len(x)], prefix[b] = x, y, 0, len(x)
    pos = np.where(doc >= 0, np.arange(S)[None, :], 0)
    t = torch.from_numpy
    return Batch(t(ids), t(lab), t(pos), t(doc), t(prefix)).to(device)


@torch.no_grad()
def evaluate_elbo(model: LanguageModel, docs: list[np.ndarray], num_bytes: int, mask_id: int, pad: int, seq_len: int,
                  batch_size: int, device: torch.device, draws: int = ELBO_DRAWS, seed: int = 0, rank: int = 0,
                  world: int = 1, should_stop: Callable[[], None] | None = None) -> ElboResult:
    """The ELBO bound of `docs` (module docstring) with `draws` draws per piece, in nats, and its
    standard error. Piece p is scored on rank p % world (all its draws there) and the sums are
    all-reduced; every rank runs the same number of forward passes, each of the same shape.
    `should_stop` is called between batches (it raises to abandon the evaluation)."""
    if draws < 2:
        raise ValueError(f"evaluate_elbo: `draws` must be >= 2 to estimate a standard error, got {draws}")
    was_training = model.training
    model.eval()
    ps = pieces(docs, seq_len)
    mine = []  # (piece index, draw, ids, labels, factor): every draw of this rank's pieces, longest first
    for p in range(rank, len(ps), world):
        x = ps[p]
        for k, (masked, factor) in enumerate(draw_masks(len(x), draws, np.random.default_rng([seed, p]))):
            mine.append((p, k, np.where(masked, mask_id, x), np.where(masked, x, IGNORE_INDEX), factor))
    mine.sort(key=lambda r: -len(r[2]))  # similar lengths share a batch: little padding
    # every rank's row lengths in its order: under torch.distributed every rank runs the same number of
    # forward passes of one shape (FSDP and the vocab-parallel head communicate inside them)
    lengths = [sorted((len(ps[p]) for p in range(r, len(ps), world) for _ in range(draws)), reverse=True)
               for r in range(world)]
    n_batches = max(math.ceil(len(x) / batch_size) for x in lengths) if ps else 0
    values: dict[int, list[float]] = {}
    for i in range(n_batches):
        if should_stop is not None:
            should_stop()
        rows = mine[i * batch_size : (i + 1) * batch_size]
        part = slice(i * batch_size, (i + 1) * batch_size)
        shape = (batch_size, max([n for x in lengths for n in x[part]] or [1])) if world > 1 else None
        batch = _batch([(r[2], r[3]) for r in rows], pad, device, shape)
        nll = model(batch, reduction="none").float().sum(1).tolist()  # (B,) Σ_masked -log p per row
        for r, v in zip(rows, nll):
            values.setdefault(r[0], []).append(r[4] * v)
    total = sum(float(np.mean(v)) for v in values.values())
    var = sum(float(np.var(v, ddof=1)) / len(v) for v in values.values())  # Σ_p s_p² / K
    tokens = sum(len(ps[p]) for p in values)
    if was_training:
        model.train()
    if world > 1:
        from headway.train.distributed import all_sum

        total, var, tokens = all_sum(total, device), all_sum(var, device), int(all_sum(tokens, device))
    return ElboResult(total, math.sqrt(max(var, 0.0)), tokens, num_bytes, draws)

"""Training batches streamed from token shards: objective + packing in `torch.utils.data` worker
processes, each rank and each worker generating only its own rows, with exact resume in O(1).

Streams. Rank r's worker w is stream c = r·W + (w + rotation) mod W of C = world·W (W = workers,
at least 1; W=0 runs the one stream in the training process and equals W=1). For each source the
documents are visited in the endless order perm(seed, source, epoch 0) ++ perm(…, epoch 1) ++ …;
stream c takes positions c, c+C, c+2C, … of that order: the streams are disjoint and together cover
every document once per epoch. The next document's source is drawn with probability weight/Σweights
(a mixture by sampling). We shard the document order, not the rows, so no stream builds rows that
another throws away.

Windows. A stream reads documents until it holds `BUFFER_SIZE` examples (a window), or until it
has read as many documents as one pass over its share of the corpus (a small corpus: a window does
not hold the same documents many times over), packs the window into rows, shuffles the rows and
groups them into batches: a batch draws its rows from every document of the window, not from
consecutive pieces of one file (which made each batch one file, and the last steps of a run a few
files). A batch may finish with the next window's rows. A window is fully determined by its start: the
per-source positions and the two RNG states (source draws, objective). Each batch carries the
stream's state after it: (window start, rows of that window already used). Resuming regenerates
one window and skips those rows: the time does not depend on the step, and the batches are exactly
those of the uninterrupted run.

The training process keeps, per stream, the state of the last batch it consumed (batches a worker
prefetched but the loop did not use are not counted), and which stream comes next. This is what
torchdata's `StatefulDataLoader` does with its worker snapshots; a state per batch is small (a few
hundred bytes), so we carry it with the batch and need no extra dependency.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from headway.data.collate import collate
from headway.data.packing import Packer, examples_from_documents
from headway.data.shards import ShardSet
from headway.types import Batch, Objective

BUFFER_SIZE = 8192  # examples per window: the packing buffer, and the rows a batch is drawn from


@dataclass(frozen=True)
class StreamSpec:
    """What every stream of a run shares."""

    seq_len: int
    batch_size: int
    packing: str
    seed: int
    pad: int
    rank: int = 0
    world: int = 1
    workers: int = 0  # DataLoader worker processes per rank (0: in the training process)

    @property
    def per_rank(self) -> int:
        return max(1, self.workers)

    @property
    def streams(self) -> int:
        return self.world * self.per_rank


def initial_state(c: int, C: int, seed: int, n_sources: int, start: list[int] | None = None) -> dict:
    """A stream's state before its first window (`start`: per-source positions, default 0)."""
    salt = [seed, c, C, *(start or [])]
    return {"pos": list(start or [0] * n_sources), "skip": 0,
            "mix": np.random.default_rng([*salt, 1]).bit_generator.state,
            "obj": np.random.default_rng([*salt, 2]).bit_generator.state}


def _rng(state: dict) -> np.random.Generator:
    g = np.random.default_rng()
    g.bit_generator.state = state
    return g


class ShardStream(IterableDataset):
    """Endless (Batch, stream, state-after) items of this rank (and, in a worker, of its stream)."""

    def __init__(self, sets: list[ShardSet], weights: list[float], objective: Objective, spec: StreamSpec,
                 starts_char: np.ndarray | None = None, states: dict[int, dict] | None = None,
                 rotation: int = 0) -> None:
        if len(sets) != len(weights) or not sets:
            raise ValueError(f"ShardStream: {len(sets)} sources and {len(weights)} weights")
        for i, s in enumerate(sets):
            if s.num_tokens == 0:
                raise ValueError(f"source {i} has no training tokens (every training document is empty)")
        self.sets, self.objective, self.spec, self.starts_char = sets, objective, spec, starts_char
        w = np.asarray(weights, dtype=np.float64)
        self.p = w / w.sum()
        self.states = states or {}
        self.rotation = rotation

    def stream_id(self) -> int:
        info = get_worker_info()
        w = info.id if info is not None else 0
        return self.spec.rank * self.spec.per_rank + (w + self.rotation) % self.spec.per_rank

    def __iter__(self) -> Iterator[tuple[Batch, int, dict]]:
        c = self.stream_id()
        state = self.states.get(c) or initial_state(c, self.spec.streams, self.spec.seed, len(self.sets))
        for batch, st in self.batches(c, state):
            yield batch, c, st

    def documents(self, c: int, pos: list[int], mix: np.random.Generator) -> Iterator[tuple[int, int]]:
        """Stream c's (source, document) sequence; advances `pos` (per source) and `mix` in place."""
        C = self.spec.streams
        perms: dict[int, tuple[int, np.ndarray]] = {}  # source -> (epoch, permutation)
        while True:
            s = int(mix.choice(len(self.sets), p=self.p)) if len(self.sets) > 1 else 0
            n = len(self.sets[s])
            epoch, i = divmod(c + pos[s] * C, n)
            pos[s] += 1
            if perms.get(s, (-1,))[0] != epoch:
                perms[s] = (epoch, np.random.default_rng([self.spec.seed, s, epoch]).permutation(n))
            yield s, int(perms[s][1][i])

    def batches(self, c: int, state: dict) -> Iterator[tuple[Batch, dict]]:
        """Stream c's batches from `state`, each with the state that resumes right after it."""
        spec = self.spec
        pos = list(state["pos"])
        mix, obj = _rng(state["mix"]), _rng(state["obj"])
        docs = self.documents(c, pos, mix)
        skip = state["skip"]
        packer = Packer(spec.seq_len, spec.packing, buffer_size=BUFFER_SIZE)
        per_window = max(1, sum(len(x) for x in self.sets) // spec.streams)  # one pass of this stream's share
        rows: list = []
        while True:
            start = {"pos": list(pos), "mix": mix.bit_generator.state, "obj": obj.bit_generator.state}
            examples = []
            for _ in range(per_window):  # a small corpus: one pass, not the same documents over and over
                if len(examples) >= BUFFER_SIZE:
                    break
                s, i = next(docs)
                doc = self.sets[s].doc(i)
                examples.extend(examples_from_documents([doc], self.objective, spec.seq_len, obj, self.starts_char))
            packed = list(packer.pack(examples))
            for r, k in enumerate(obj.permutation(len(packed))):  # drawn after the window: resumes exactly
                if r < skip:
                    continue
                rows.append(packed[k])
                if len(rows) == spec.batch_size:
                    yield collate(rows, spec.seq_len, spec.pad), {**start, "skip": r + 1}
                    rows = []
            skip = 0


def _worker_init(_: int) -> None:
    """A worker dies with the training process (Linux: PR_SET_PDEATHSIG), not seconds later."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the DataLoader's own watchdog stops the worker


def _first(item):  # noqa: ANN001, ANN202 (DataLoader's conversion hook: keep items as they are)
    return item


def convert_states(saved: dict, spec: StreamSpec, n_sources: int) -> tuple[dict[int, dict], bool]:
    """This rank's stream states from a saved data state. Same number of streams: exact. Otherwise
    (a different --loader-workers or world size) each source resumes at the furthest position any
    saved stream reached, with fresh RNGs: no document is seen twice in the epoch, and at most one
    window per saved stream is skipped; the batches are no longer those of the uninterrupted run."""
    states = {int(k): v for k, v in saved["states"].items()}
    if any(len(st["pos"]) != n_sources for st in states.values()):
        raise ValueError(f"the saved data state has {len(next(iter(states.values()))['pos'])} sources, the data now "
                         f"{n_sources}")
    if saved["streams"] == spec.streams:
        return states, True
    C_old = saved["streams"]
    far = [max((c + st["pos"][s] * C_old for c, st in states.items()), default=0) for s in range(n_sources)]
    out = {}
    for k in range(spec.per_rank):
        c = spec.rank * spec.per_rank + k
        start = [max(0, math.ceil((far[s] - c) / spec.streams)) for s in range(n_sources)]
        out[c] = initial_state(c, spec.streams, spec.seed, n_sources, start)
    return out, False


class Loader:
    """This rank's batches (iterate), with `state_dict()` for the checkpoint."""

    def __init__(self, sets: list[ShardSet], weights: list[float], objective: Objective, spec: StreamSpec,
                 starts_char: np.ndarray | None = None, state: dict | None = None) -> None:
        self.spec = spec
        self.exact = True
        states: dict[int, dict] = {}
        rotation = 0
        if state is not None:
            states, self.exact = convert_states(state, spec, len(sets))
            rotation = int(state.get("next_slot", 0)) % spec.per_rank if self.exact else 0
        self.states = dict(states)
        self.next_slot = rotation
        self.dataset = ShardStream(sets, weights, objective, spec, starts_char, states, rotation)
        self._it: Iterator | None = None

    def __iter__(self) -> Loader:
        return self

    def __next__(self) -> Batch:
        if self._it is None:
            if self.spec.workers == 0:
                self._it = iter(self.dataset)
            else:
                self._it = iter(DataLoader(self.dataset, batch_size=None, num_workers=self.spec.workers,
                                           collate_fn=_first, prefetch_factor=4, multiprocessing_context="fork",
                                           worker_init_fn=_worker_init))
        batch, c, st = next(self._it)
        self.states[c] = st
        self.next_slot = (c - self.spec.rank * self.spec.per_rank + 1) % self.spec.per_rank
        return batch

    def state_dict(self) -> dict:
        """This rank's position: per stream the state after its last consumed batch, and the next slot."""
        return {"streams": self.spec.streams, "workers": self.spec.workers, "world": self.spec.world,
                "states": {str(c): s for c, s in self.states.items()}, "next_slot": self.next_slot}

    def close(self) -> None:
        self._it = None  # the DataLoader iterator shuts its workers down when collected


def merge_rank_states(per_rank: list[dict]) -> dict:
    """One data state for the whole run from every rank's `state_dict()`."""
    out = dict(per_rank[0])
    out["states"] = {k: v for r in per_rank for k, v in r["states"].items()}
    out["next_slot"] = per_rank[0]["next_slot"]
    return out


"""A vocabulary in named, ordered splits (e.g. a frozen `base` and a trainable `special`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headway.eager import eager_under_compile
from headway.heads.lm_head import HeadBase
from headway.loss import LossOptions


class _Joined(torch.autograd.Function):
    """The splits as one (V, H) tensor without a copy, when they lie back to back in one storage;
    backward hands each split its rows of the gradient (views, no copy)."""

    @staticmethod
    def forward(ctx, full: Tensor, *splits: Tensor) -> Tensor:  # noqa: ANN001
        ctx.sizes = [w.shape[0] for w in splits]
        return full

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        return (None, *g.split(ctx.sizes, dim=0))


@eager_under_compile  # storage aliasing (Tensor.set_) that torch.compile cannot trace: run as is
def _alias_if_adjacent(ws: list[Tensor]) -> Tensor | None:
    """A (V, H) tensor over the splits' shared storage if they are contiguous and adjacent, else None."""
    first = ws[0]
    ptr = first.untyped_storage().data_ptr()
    off = first.storage_offset()
    for w in ws:
        if not w.is_contiguous() or w.untyped_storage().data_ptr() != ptr or w.storage_offset() != off:
            return None
        off += w.numel()
    V, H = sum(w.shape[0] for w in ws), first.shape[1]
    with torch.no_grad():
        return torch.empty(0, dtype=first.dtype, device=first.device).set_(
            first.untyped_storage(), first.storage_offset(), (V, H), (H, 1))


class SplitEmbedding(nn.Module):
    """Token embedding whose table is one parameter per split; global id = split offset + local id.

    The split parameters are views into one (V, H) buffer, so `full_weight()` (what a tied head
    multiplies by) costs no copy; `pack_()` restores that layout after anything that reallocates
    parameters separately (it runs after `.to()` / `.double()` automatically). An id outside every
    split raises a ValueError (never a silent zero vector).
    """

    def __init__(self, split_sizes: dict[str, int], hidden_size: int, init_std: float = 0.02) -> None:
        super().__init__()
        if not split_sizes or any(n <= 0 for n in split_sizes.values()):
            raise ValueError(f"SplitEmbedding: `split_sizes` must be non-empty with positive sizes, got {split_sizes}")
        self.hidden_size = hidden_size
        self.weights = nn.ParameterDict(
            {k: nn.Parameter(torch.randn(n, hidden_size) * init_std) for k, n in split_sizes.items()})
        self.pack_()

    @torch.no_grad()
    def pack_(self) -> None:
        """Move every split into one contiguous (V, H) buffer, keeping the Parameter objects."""
        ws = list(self.weights.values())
        if _alias_if_adjacent(ws) is not None:
            return
        buf = torch.cat([w.detach() for w in ws], dim=0)
        o = 0
        for w in ws:
            w.data = buf[o : o + w.shape[0]]
            o += w.shape[0]

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202
        out = super()._apply(fn, recurse)
        self.pack_()
        return out

    @property
    def split_sizes(self) -> dict[str, int]:
        return {k: w.shape[0] for k, w in self.weights.items()}

    @property
    def num_embeddings(self) -> int:
        return sum(self.split_sizes.values())

    def offsets(self) -> dict[str, int]:
        out, o = {}, 0
        for k, n in self.split_sizes.items():
            out[k] = o
            o += n
        return out

    def full_weight(self) -> Tensor:
        """(V, H): the splits concatenated in order, differentiable into every split; no copy when
        packed (the usual case), `torch.cat` otherwise."""
        ws = list(self.weights.values())
        full = _alias_if_adjacent(ws)
        if full is None:
            return torch.cat(ws, dim=0)
        return _Joined.apply(full, *ws)

    def forward(self, ids: Tensor) -> Tensor:
        V = self.num_embeddings
        if not torch.compiler.is_compiling() and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= V):
            bad = ids[(ids < 0) | (ids >= V)][0].item()
            raise ValueError(f"SplitEmbedding: token ids must be in [0, {V}) (splits {self.split_sizes}), got {bad}")
        out = torch.empty(*ids.shape, self.hidden_size, dtype=next(iter(self.weights.values())).dtype,
                          device=ids.device)
        for w, off in zip(self.weights.values(), self.offsets().values()):
            sel = (ids >= off) & (ids < off + w.shape[0])
            out[sel] = F.embedding(ids[sel] - off, w)
        return out

    def resize_split(self, name: str, new_size: int) -> None:
        """Grow or shrink one split, keeping its existing rows and every other split unchanged."""
        if name not in self.weights:
            raise ValueError(f"SplitEmbedding: no split {name!r}; have {list(self.weights)}")
        old = self.weights[name]
        keep = min(old.shape[0], new_size)
        new = torch.randn(new_size, self.hidden_size, dtype=old.dtype, device=old.device) * 0.02
        new[:keep] = old.detach()[:keep]
        self.weights[name] = nn.Parameter(new, requires_grad=old.requires_grad)
        self.pack_()


class SplitLMHead(HeadBase):
    """LM head over the concatenated splits; tied split by split to a `SplitEmbedding` or its own.

    The loss equals an `LMHead` whose weight is the concatenation of the splits; a frozen split
    (``requires_grad=False``) gets no gradient. `loss` (or the `softcap`, `z_loss`, `label_smoothing`
    shortcut): the loss options (`HeadBase`).
    """

    def __init__(self, split_sizes: dict[str, int], hidden_size: int, *, tie_to: SplitEmbedding | None = None,
                 loss: LossOptions | None = None, softcap: float | None = None, z_loss: float = 0.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__(loss=loss, softcap=softcap, z_loss=z_loss, label_smoothing=label_smoothing)
        if tie_to is not None and tie_to.split_sizes != dict(split_sizes):
            raise ValueError(f"SplitLMHead: tied embedding has splits {tie_to.split_sizes}, expected {split_sizes}")
        self.table = tie_to if tie_to is not None else SplitEmbedding(split_sizes, hidden_size, hidden_size**-0.5)
        self.tied = tie_to is not None
        self.bias = None

    @property
    def weight(self) -> Tensor:  # type: ignore[override]
        return self.table.full_weight()

"""The contracts every module shares: `Vocab`, `Example`, `Objective`, `Batch`, `Backbone`.

Defined once here and imported by everyone; this module imports nothing of headway but its
constants, so data, objectives, models and heads never import each other for a type.
Conventions (docs/concepts.md): labels are aligned (`labels[t]` is the target of position t),
`IGNORE_INDEX` marks no target, and a batch's mask spec is (`document_ids`, `position_ids`,
`prefix_lengths`): q may attend to k iff same document and (k <= q or k inside the prefix).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from headway.constants import IGNORE_INDEX

DEFAULT_SPECIALS: tuple[str, ...] = (
    "<eos>", "<pad>", "<mask>",
    "<fim_prefix>", "<fim_middle>", "<fim_suffix>",
    "[NLU]", "[NLG]", "[S2S]",
)


def sentinel(i: int) -> str:
    """Name of the i-th T5 sentinel (`<extra_id_i>`)."""
    return f"<extra_id_{i}>"


@dataclass(frozen=True)
class Vocab:
    """Ids of a split vocabulary. `specials` are named in order after the base ids."""

    base_size: int
    specials: tuple[str, ...] = DEFAULT_SPECIALS
    num_sentinels: int = 100
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.base_size < 2:
            raise ValueError(f"Vocab: `base_size` must be >= 2, got {self.base_size}")
        names = list(self.specials) + [sentinel(i) for i in range(self.num_sentinels)]
        if len(set(names)) != len(names):
            raise ValueError("Vocab: special token names must be unique")
        object.__setattr__(self, "_ids", {n: self.base_size + i for i, n in enumerate(names)})

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, specials: tuple[str, ...] = DEFAULT_SPECIALS,
                       num_sentinels: int = 100) -> Vocab:
        """The vocabulary of `tokenizer`: its whole vocabulary is the base split (its own special
        tokens included, as base ids) and headway's specials follow. Takes a headway tokenizer
        (`base_size`), a `tokenizers.Tokenizer` (`get_vocab_size()`) or a transformers tokenizer
        (`len(tokenizer)`, added tokens included). Build every `Vocab` this way: one whose base split
        is smaller than the tokenizer's turns corpus tokens into <eos>, <pad>, sentinels, ..."""
        size = getattr(tokenizer, "base_size", None)
        if size is None and hasattr(tokenizer, "get_vocab_size"):
            size = tokenizer.get_vocab_size(with_added_tokens=True)
        if size is None and hasattr(tokenizer, "__len__"):
            size = len(tokenizer)
        if not isinstance(size, int) or isinstance(size, bool):
            raise ValueError(f"Vocab.from_tokenizer: cannot tell the vocabulary size of {type(tokenizer).__name__} "
                             "(expected `base_size`, `get_vocab_size()` or `len()`)")
        return cls(size, specials, num_sentinels)

    @property
    def special_size(self) -> int:
        return len(self._ids)

    @property
    def size(self) -> int:
        return self.base_size + self.special_size

    @property
    def split_sizes(self) -> dict[str, int]:
        return {"base": self.base_size, "special": self.special_size}

    def id(self, name: str) -> int:
        """Id of a special token; a clear error when the vocabulary lacks it."""
        try:
            return self._ids[name]
        except KeyError:
            raise ValueError(f"Vocab: special token {name!r} is missing; have {sorted(self._ids)[:12]}...") from None

    def sentinel_id(self, i: int) -> int:
        if not 0 <= i < self.num_sentinels:
            raise ValueError(f"Vocab: sentinel index must be in [0, {self.num_sentinels}), got {i}")
        return self._ids[sentinel(i)]

    def is_special(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids) >= self.base_size

    def name(self, i: int) -> str | None:
        """The special token's name for id i, None for a base id."""
        for n, j in self._ids.items():
            if j == i:
                return n
        return None

    @property
    def eos(self) -> int:
        return self.id("<eos>")

    @property
    def pad(self) -> int:
        return self.id("<pad>")


@dataclass
class Example:
    """One training example: `labels[t]` is the target of position t (aligned, never shifted later).

    `prefix_length` leading positions attend bidirectionally (0: causal; len: fully bidirectional).

    `loss_weights` (optional, (L,) float32, 0 where the label is ignored): per-token loss weights.
    A weighted example's loss Σ_t w_t·ℓ_t estimates a loss over *every one* of its positions (masked
    diffusion: the masked tokens weighted by 1/t estimate the ELBO of the whole example), so it counts
    `len(example)` items in the mean's denominator (`num_items`); an unweighted one counts its targets.
    """

    input_ids: np.ndarray  # (L,) int64
    labels: np.ndarray  # (L,) int64, IGNORE_INDEX where no target
    prefix_length: int = 0
    loss_weights: np.ndarray | None = None  # (L,) float32, or None (every target weighs 1)

    def __post_init__(self) -> None:
        self.input_ids = np.asarray(self.input_ids, dtype=np.int64)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.input_ids.shape != self.labels.shape or self.input_ids.ndim != 1:
            raise ValueError(f"Example: input_ids {self.input_ids.shape} and labels {self.labels.shape} "
                             "must be 1-D of equal length")
        if not 0 <= self.prefix_length <= len(self.input_ids):
            raise ValueError(f"Example: prefix_length must be in [0, {len(self.input_ids)}], "
                             f"got {self.prefix_length}")
        if self.loss_weights is not None:
            self.loss_weights = np.asarray(self.loss_weights, dtype=np.float32)
            if self.loss_weights.shape != self.labels.shape:
                raise ValueError(f"Example: loss_weights {self.loss_weights.shape} must have the labels' shape "
                                 f"{self.labels.shape}")
            if not np.isfinite(self.loss_weights).all():
                raise ValueError("Example: loss_weights must be finite")

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_targets(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    @property
    def num_items(self) -> int:
        """What the example adds to the mean's denominator: its length when it carries `loss_weights`
        (its weighted loss estimates a sum over all of its positions), else its number of targets."""
        return len(self) if self.loss_weights is not None else self.num_targets


class Objective(Protocol):
    """`objective(tokens, rng) -> Example` for one document's base token ids (no EOS)."""

    name: str
    # what the objective needs of the model (declared, never inferred from the name):
    needs_bidirectional: bool  # examples predict tokens from both sides without a mask (MLM)
    trains_left_to_right: bool  # some targets must be predicted from the left only (CLM, FIM, ...)
    # optional `text_lead: int | None`: the id before a document's text in its left-to-right rows
    # (EOS for CLM; UL2's [S2S]); validation, sampling and infilling open documents with it

    def __call__(self, tokens: np.ndarray, rng: np.random.Generator) -> Example: ...

    def max_tokens(self, row_length: int) -> int:
        """The longest document chunk whose example still fits in a row of `row_length`."""
        ...



@dataclass
class Batch:
    """B rows of S positions.

    input_ids, labels, position_ids, document_ids: (B, S) int64. `document_ids` numbers the
    segments of each row 0, 1, ... (-1 on padding); `position_ids` restart at 0 in every segment;
    `prefix_lengths` (B, D) holds each segment's bidirectional prefix length.

    `loss_weights` (B, S) float32 and `row_items` (B,) int64: None unless some example of the batch
    carries loss weights; then every target has a weight (1 for an unweighted example's, 0 where
    ignored) and `row_items` counts each row's items (`Example.num_items`), so that the batch's
    mean loss is Σ w·ℓ / `num_items`.
    """

    input_ids: Tensor
    labels: Tensor
    position_ids: Tensor
    document_ids: Tensor
    prefix_lengths: Tensor
    loss_weights: Tensor | None = None
    row_items: Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: None if getattr(self, f.name) is None
                        else getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)})

    @property
    def num_targets(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    @property
    def num_items(self) -> int:
        """The count the batch's mean loss divides by: its number of targets, or, for a weighted batch,
        the sum of its examples' `num_items` (a weighted example counts every position)."""
        if self.loss_weights is None or self.row_items is None:
            return self.num_targets
        return int(self.row_items.sum())

    @property
    def is_causal(self) -> bool:
        """True when no segment has a bidirectional prefix (a plain causal mask per document)."""
        return bool((self.prefix_lengths <= 1).all())

    @property
    def is_single_document(self) -> bool:
        return bool((self.document_ids.amax(dim=1) <= 0).all())

    @property
    def is_one_document_per_row(self) -> bool:
        """Every row is one document without padding: no segment boundary inside a row."""
        return bool((self.document_ids == 0).all())

    @property
    def is_one_document_per_row_then_padding(self) -> bool:
        """Every row is one document from position 0, then only padding (document id -1), if any."""
        d = self.document_ids
        return bool((d.amax(dim=1) <= 0).all() and (d[:, 1:] <= d[:, :-1]).all())

    @property
    def is_one_causal_document_per_row(self) -> bool:
        """One causal document per row, then only padding: a plain causal mask is exact (the fast
        path). Each real position sees exactly its document's earlier positions, since the padding
        comes after them; padded positions carry IGNORE_INDEX labels, so their outputs feed no loss."""
        return self.is_causal and self.is_one_document_per_row_then_padding



@runtime_checkable
class Backbone(Protocol):
    """(B, S, H) hidden states in, (B, S, H) out; what every headway backbone provides.

    forward(x, batch, cache): with a `Batch`, attention/state follows its mask spec; without one,
    a single causal sequence (continuing `cache` when given). `causal`: whether output t may
    depend only on inputs <= t (within its document). `layers`: the blocks, in order (the
    causality check hooks them; FSDP wraps them). Optional `attention_layers`: how many layers
    attend over the whole row (the FLOP count; 0 when absent).
    """

    causal: bool
    layers: nn.ModuleList

    def forward(self, x: Tensor, batch: Batch | None = None, cache: Any = None) -> Tensor: ...

    def new_cache(self, batch_size: int) -> Any: ...

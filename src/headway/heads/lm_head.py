"""LM heads: hidden states -> loss through the fused linear cross-entropy (or -> logits).

`HeadBase` holds what every LM head shares — its loss options (`LossOptions`), autocast handling,
`forward` and `logits` — over a (V, H) weight that each subclass provides: `LMHead` owns a parameter
(or ties an embedding's), `SplitLMHead` concatenates vocabulary splits, `VocabParallelLMHead` shards
the rows over ranks.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from headway.loss import LossOptions, linear_cross_entropy
from headway.loss.options import merge_options


def _option(name: str, doc: str) -> property:
    """A head attribute that reads and replaces one field of its `loss_options`."""

    def get(self: HeadBase) -> object:
        return getattr(self.loss_options, name)

    def set_(self: HeadBase, value: object) -> None:
        self.loss_options = self.loss_options.replace(**{name: value})

    return property(get, set_, doc=doc + f" (`loss_options.{name}`)")


class HeadBase(nn.Module):
    """The shared LM-head logic. Subclasses provide `weight` (V, H) (`loss_weight` / `full_weight`
    when the loss and the logits need different views of it) and may override `_loss`.

    `forward(h, labels)` returns ``linear_cross_entropy(h, W, labels, options=self.loss_options)`` —
    equal to ``F.cross_entropy((h @ W.T + b).float(), labels)`` plus the options' z-loss
    (``z_loss * lse**2`` per token), soft-capping (logits ``softcap * tanh(z / softcap)``) and
    label smoothing (``(1 - ε) * nll + ε * (lse - mean(z))``) — without materializing the (B·S, V)
    logits. `logits(h, keep_last=k)` materializes the (soft-capped) logits for the last k positions
    only (generation).

    `loss`: the head's `LossOptions` (kept as `self.loss_options`). `softcap`, `z_loss` and
    `label_smoothing` are a shortcut that builds them (``LMHead(H, V, z_loss=1e-4)``); given with
    `loss`, a keyword other than its default must equal the option (else ValueError naming both).
    They stay readable (and settable) as attributes of the head.
    """

    weight: Tensor
    bias: nn.Parameter | None
    loss_options: LossOptions
    equal_tokens_on_every_rank: bool = False
    """True when the loss is a collective that needs the same number of tokens on every rank (the
    vocabulary-parallel head): a caller that picks rows by their labels passes them all instead."""

    def __init__(self, *, loss: LossOptions | None = None, softcap: float | None = None, z_loss: float = 0.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        name = type(self).__name__
        given = merge_options(name, loss, softcap=softcap, z_loss=z_loss, label_smoothing=label_smoothing)
        self.loss_options = loss if loss is not None else LossOptions(**given)
        self.tied = False

    softcap = _option("softcap", "The logit soft-cap c (logits ``c * tanh(z / c)``), None for none.")
    z_loss = _option("z_loss", "The z-loss coefficient (``z_loss * lse**2`` per token).")
    label_smoothing = _option("label_smoothing", "The label smoothing ε.")

    def extra_repr(self) -> str:
        return "" if self.loss_options == LossOptions() else f"loss={self.loss_options}"

    def loss_weight(self) -> Tensor:
        """The weight the loss multiplies by (this rank's rows for a sharded head)."""
        return self.weight

    def full_weight(self) -> Tensor:
        """The whole (V, H) weight (logits for generation)."""
        return self.weight

    def _loss(self, hidden: Tensor, weight: Tensor, labels: Tensor, **kw: object) -> Tensor:
        out = linear_cross_entropy(hidden, weight, labels, bias=self.bias, options=self.loss_options,
                                   **kw)  # type: ignore[arg-type]
        assert isinstance(out, Tensor)
        return out

    def forward(self, hidden: Tensor, labels: Tensor, *, num_items_in_batch: Tensor | int | None = None,
                reduction: str = "mean", shift: bool = False, loss_weights: Tensor | None = None) -> Tensor:
        """Loss of aligned `labels` (B, S) (or HF-style with shift=True) from `hidden` (B, S, H);
        `loss_weights` (B, S) float: per-token weights (`linear_cross_entropy`'s, 0 where ignored).

        Under autocast, hidden and weight are cast to the autocast dtype so the three matrix
        products run in it; softmax and dW accumulation stay float32 inside the loss."""
        weight = self.loss_weight()
        dev = hidden.device.type
        if torch.is_autocast_enabled(dev):
            dt = torch.get_autocast_dtype(dev)
            hidden, weight = hidden.to(dt), weight.to(dt)
        kw = {} if loss_weights is None else {"loss_weights": loss_weights}  # an unweighted call is as it was
        return self._loss(hidden, weight, labels, reduction=reduction, shift=shift,
                          num_items_in_batch=num_items_in_batch, **kw)

    def logits(self, hidden: Tensor, keep_last: int = 0, weight: Tensor | None = None) -> Tensor:
        """(B, k, V) float32 logits of the last `keep_last` positions (all when 0). `weight`: the
        (V, H) `full_weight()` when the caller already holds it (a generation loop takes it once)."""
        if keep_last:
            hidden = hidden[..., -keep_last:, :]
        z = (hidden @ (self.full_weight() if weight is None else weight).t()).float()
        if self.bias is not None:
            z = z + self.bias.float()
        c = self.loss_options.softcap
        if c is not None:
            z = c * torch.tanh(z / c)
        return z


class LMHead(HeadBase):
    """Projects (B, S, H) hidden states onto a V-word vocabulary with its own (V, H) weight, or the
    weight of `tie_to` (an `nn.Embedding`), plus an optional bias. `loss` (or the `softcap`, `z_loss`,
    `label_smoothing` shortcut): the loss options (`HeadBase`)."""

    def __init__(self, hidden_size: int, vocab_size: int, *, bias: bool = False, tie_to: nn.Embedding | None = None,
                 loss: LossOptions | None = None, softcap: float | None = None, z_loss: float = 0.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__(loss=loss, softcap=softcap, z_loss=z_loss, label_smoothing=label_smoothing)
        if tie_to is not None:
            if tuple(tie_to.weight.shape) != (vocab_size, hidden_size):
                raise ValueError(f"LMHead: `tie_to` weight must be ({vocab_size}, {hidden_size}), "
                                 f"got {tuple(tie_to.weight.shape)}")
            self.weight = tie_to.weight
        else:
            self.weight = nn.Parameter(torch.randn(vocab_size, hidden_size) * hidden_size**-0.5)
        self.tied = tie_to is not None
        self.bias = nn.Parameter(torch.zeros(vocab_size)) if bias else None

"""`LanguageModel` = embedding + backbone + head, with `generate` and `infill`."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from headway.constants import FIM_LAYOUTS
from headway.heads.lm_head import HeadBase
from headway.models.mtp import MTP
from headway.types import Batch, Vocab


class LanguageModel(nn.Module):
    """`forward(batch)` -> the mean loss over the batch's targets (fused head, no logits);
    `logits(ids)` for generation; `generate` and `infill` sample with the backbone's cache.
    `mtp`: the multi-token prediction modules (`headway.models.mtp.MTP`), None without them."""

    mtp: MTP | None

    def __init__(self, embedding: nn.Module, backbone: nn.Module, head: HeadBase, mtp: MTP | None = None) -> None:
        super().__init__()
        self.embedding, self.backbone, self.head = embedding, backbone, head
        self.mtp = mtp

    @property
    def vocab_size(self) -> int:
        """V: the ids the model takes, [0, V) (the rows of its embedding table, every split counted)."""
        rows = getattr(self.embedding, "num_embeddings", None)
        return int(rows) if rows is not None else sum(p.shape[0] for p in self.embedding.parameters() if p.dim() == 2)

    def hidden(self, input_ids: Tensor, batch: Batch | None = None, cache=None) -> Tensor:  # noqa: ANN001
        """(B, S) ids -> (B, S, H) final hidden states; ids outside [0, V) are refused with a ValueError."""
        check_token_ids(input_ids, self.vocab_size, "LanguageModel")
        return self.backbone(self.embedding(input_ids), batch, cache)

    def check_vocab(self, vocab: Vocab) -> None:
        """Refuse a `vocab` the model was not built for: one whose splits differ from a split embedding's
        (its special ids would name other tokens), or one with more ids than the model takes."""
        splits = getattr(self.embedding, "split_sizes", None)
        if isinstance(splits, dict) and set(splits) == {"base", "special"} and splits != vocab.split_sizes:
            raise ValueError(f"LanguageModel: the Vocab's splits {vocab.split_sizes} are not the model's {splits}; "
                             "use the Vocab the model was built from (vocab_for / Vocab.from_tokenizer)")
        if vocab.size > self.vocab_size:
            raise ValueError(f"LanguageModel: the Vocab has {vocab.size} ids (base {vocab.base_size} + "
                             f"{vocab.special_size} specials) but the model takes {self.vocab_size}; build the model "
                             "from this Vocab (build_model(vocab, ...))")

    def forward(self, batch: Batch, num_items_in_batch: Tensor | int | None = None, reduction: str = "mean",
                mtp: bool | None = None) -> Tensor:
        """The batch's loss through the fused head: "mean" over its targets (or `num_items_in_batch`, the
        global count under gradient accumulation), "sum", or "none" (B, S). A weighted batch
        (`batch.loss_weights`, e.g. masked diffusion) gives Σ w·ℓ, and its mean divides by `batch.num_items`
        unless `num_items_in_batch` is given. With MTP modules and `mtp` (None: when `reduction` is
        "mean", i.e. the training loss; evaluation's "sum" scores the main head alone), the MTP loss
        joins it (`MTP.loss`): main + λ · mean over depths."""
        w = batch.loss_weights
        if self.mtp is not None and (reduction == "mean" if mtp is None else mtp):
            if w is not None:
                raise ValueError("LanguageModel: multi-token prediction trains left-to-right targets; a batch with "
                                 "per-token loss weights (masked diffusion) cannot train its depths")
            check_token_ids(batch.input_ids, self.vocab_size, "LanguageModel")
            x = self.embedding(batch.input_ids)  # (B, S, H)
            return self.mtp.loss(self.head, self.backbone(x, batch), x, batch, num_items_in_batch, reduction)
        if w is None:
            return self.head(self.hidden(batch.input_ids, batch), batch.labels, num_items_in_batch=num_items_in_batch,
                             reduction=reduction)
        if num_items_in_batch is None and reduction == "mean":
            num_items_in_batch = max(batch.num_items, 1)
        return self.head(self.hidden(batch.input_ids, batch), batch.labels, num_items_in_batch=num_items_in_batch,
                         reduction=reduction, loss_weights=w)

    def mtp_hidden(self, x: Tensor, batch: Batch | None = None) -> list[Tensor]:
        """Token embeddings x (B, S, H) -> [depth k's normalized hidden states (B, S, H) for k = 1..K]
        (what the shared head reads; depth k at t sees the inputs up to t + k)."""
        if self.mtp is None:
            raise ValueError("mtp_hidden: this model has no multi-token prediction modules (build_model(..., "
                             "mtp_depth=K))")
        return self.mtp.hidden(self.backbone(x, batch), x, batch)

    def mtp_metrics(self, all_ranks: bool = False) -> dict[str, float | list[float]]:
        """{"main_loss": the main head's mean loss, "mtp_loss": [each depth's mean loss over its
        targets]} (nats) of the last training forward's micro-batch; {} without MTP modules (a run
        without them logs exactly as before). `all_ranks` under torch.distributed: the means over every
        rank's last micro-batch together (each rank's sums and target counts all-reduced; a collective,
        so every rank calls it), as one process fed all of them would log."""
        if self.mtp is None or self.mtp.last_losses is None:
            return {}
        means = self.mtp.last_losses
        if all_ranks and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            assert self.mtp.last_counts is not None
            counts = self.mtp.last_counts.to(torch.float64)
            both = torch.stack([means.to(torch.float64) * counts, counts])  # (2, K+1)
            dist.all_reduce(both)
            means = both[0] / both[1].clamp(min=1)
        main, *depths = (float(v) for v in means)
        return {"main_loss": main, "mtp_loss": depths}

    def logits(self, input_ids: Tensor, keep_last: int = 0) -> Tensor:
        return self.head.logits(self.hidden(input_ids), keep_last)

    @torch.no_grad()
    def generate(self, prompt: Tensor, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, eos_id: int | None = None,
                 generator: torch.Generator | None = None, first_allowed: Tensor | None = None,
                 stop_when: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Continue `prompt` (S,) or (B, S); temperature 0 is greedy. Returns only the new tokens.
        `first_allowed` (V,) bool: the ids the first new token may take (e.g. those that open a line).
        Generation ends when every row is done: it emitted `eos_id`, or `stop_when(new)` ((B, t) new
        ids so far -> (B,) bool) said so; a done row's later tokens are `eos_id` (when given)."""
        if max_new_tokens < 0:
            raise ValueError(f"generate: `max_new_tokens` must be >= 0, got {max_new_tokens}")
        if first_allowed is not None and (first_allowed.dtype != torch.bool or first_allowed.dim() != 1
                                          or not bool(first_allowed.any())):
            raise ValueError(f"generate: `first_allowed` must be a (V,) bool tensor with a True entry, got "
                             f"{first_allowed.dtype} {tuple(first_allowed.shape)}")
        if temperature < 0 or (top_p is not None and not 0 < top_p <= 1) or (top_k is not None and top_k < 1):
            raise ValueError(f"generate: need temperature >= 0, top_p in (0, 1], top_k >= 1; got "
                             f"{temperature}, {top_p}, {top_k}")
        if not getattr(self.backbone, "causal", True):
            raise ValueError("generate: this backbone is bidirectional and cannot generate left to right")
        single = prompt.dim() == 1
        ids = prompt[None] if single else prompt
        check_token_ids(ids, self.vocab_size, "generate", "prompt")
        cache = self.backbone.new_cache(ids.shape[0])
        out: list[Tensor] = []
        step_in = ids
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        for t in range(max_new_tokens):
            h = self.backbone(self.embedding(step_in), None, cache)
            z = self.head.logits(h, keep_last=1)[:, -1]  # (B, V)
            if t == 0 and first_allowed is not None:
                if first_allowed.shape[0] != z.shape[-1]:
                    raise ValueError(f"generate: `first_allowed` has {first_allowed.shape[0]} entries for a "
                                     f"vocabulary of {z.shape[-1]}")
                z = z.masked_fill(~first_allowed.to(z.device), float("-inf"))
            nxt = sample(z, temperature, top_k, top_p, generator)
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done |= nxt == eos_id
            out.append(nxt)
            step_in = nxt[:, None]
            if stop_when is not None:
                done |= stop_when(torch.stack(out, 1))
            if bool(done.all()):
                break
        new = torch.stack(out, 1) if out else ids[:, :0]
        return new[0] if single else new

    @staticmethod
    def fim_prompt(prefix: Tensor, suffix: Tensor, vocab: Vocab, layout: str = "spm") -> Tensor:
        """The infilling prompt (1-D ids) whose continuation is the middle, as `fim` trains it:
        "spm": `<fim_prefix> <fim_suffix> suf <fim_middle> pre` (the middle continues the prefix
        right where it ends); "psm": `<fim_prefix> pre <fim_suffix> suf <fim_middle>` (the model
        must find where the prefix ended)."""
        if layout not in FIM_LAYOUTS:
            raise ValueError(f"infill: `layout` must be one of {' | '.join(FIM_LAYOUTS)}, got {layout!r}")
        t = lambda name: torch.tensor([vocab.id(name)], device=prefix.device)  # noqa: E731
        if layout == "spm":
            return torch.cat([t("<fim_prefix>"), t("<fim_suffix>"), suffix, t("<fim_middle>"), prefix])
        return torch.cat([t("<fim_prefix>"), prefix, t("<fim_suffix>"), suffix, t("<fim_middle>")])

    @torch.no_grad()
    def infill(self, prefix: Tensor, suffix: Tensor, vocab: Vocab, max_new_tokens: int = 64, layout: str = "spm",
               *, temperature: float = 0.0, **kw) -> Tensor:
        """Generate the middle between `prefix` and `suffix` (1-D ids) after `fim_prompt` in `layout`;
        stops at EOS (not returned). Greedy by default (`temperature` 0, as the infill evaluation and
        the end-of-run demo); other `generate` arguments (temperature, top_k, top_p, generator, ...)
        pass through."""
        self.check_vocab(vocab)
        prompt = self.fim_prompt(prefix, suffix, vocab, layout)
        mid = self.generate(prompt, max_new_tokens, eos_id=vocab.eos, temperature=temperature, **kw)
        stop = (mid == vocab.eos).nonzero()
        return mid[: int(stop[0])] if len(stop) else mid


def check_token_ids(ids: Tensor, size: int, who: str, name: str = "input_ids") -> None:
    """A ValueError naming `name` unless every id is in [0, size) (an out-of-range id would otherwise
    fail deep inside an embedding lookup, or read another token's row). Skipped while compiling (a graph
    keeps no data-dependent checks; the trainer's ids come from objectives, which check them)."""
    if torch.compiler.is_compiling() or not ids.numel():
        return
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"{who}: `{name}` must be integer token ids, got dtype {ids.dtype}")
    lo, hi = torch.stack(list(torch.aminmax(ids))).tolist()  # one device-to-host copy
    if lo < 0 or hi >= size:
        raise ValueError(f"{who}: `{name}` must be in [0, {size}) (the model's vocabulary), got ids in "
                         f"[{lo}, {hi}]; the tokenizer, the Vocab and the model must agree "
                         "(Vocab.from_tokenizer, then build the model from that Vocab)")


def sample(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None,
           generator: torch.Generator | None = None) -> Tensor:
    """Draw one id per row of logits (B, V) with temperature, top-k and nucleus (top-p) filtering."""
    if temperature == 0:
        return logits.argmax(-1)
    z = logits / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sz, si = torch.sort(z, dim=-1, descending=True)
        cum = torch.softmax(sz, -1).cumsum(-1)
        drop = cum - torch.softmax(sz, -1) > top_p  # keep the smallest set whose mass reaches top_p
        z = z.scatter(-1, si, sz.masked_fill(drop, float("-inf")))
    return torch.multinomial(torch.softmax(z, -1), 1, generator=generator).squeeze(-1)

"""The reverse process of masked diffusion: sampling and infilling by unmasking (LLaDA, Nie et al. 2025).

A canvas holds the given tokens and `<mask>` at every position to fill. Each of `steps` steps runs
the model once over the whole canvas, bidirectionally (one document whose prefix is all of it, the
mask spec the objective trains), predicts a token x̂ᵢ at every masked position i (greedy, or sampled
with temperature / top-k / top-p) with its confidence cᵢ = p_θ(x̂ᵢ | canvas), keeps the nᵢ most
confident predictions and masks the rest again: *low-confidence remasking*. The counts follow
LLaDA: m masked positions over s steps unmask ⌊m/s⌋ per step, one more in the first m mod s steps,
so every position is filled after the last step (s = m: one token per step, the default).

With `block_length` the positions to fill are taken in blocks of that many, left to right, each
block unmasked completely in its share of the steps before the next block starts (LLaDA's
semi-autoregressive remasking); without it, one block holds them all.

Only the masked positions' logits are built, (M, V) per step; predictions are restricted to the
base vocabulary (the tokens a document holds: never `<mask>`, `<eos>` or another special token).
"""

from __future__ import annotations

import torch
from torch import Tensor

from headway.constants import IGNORE_INDEX
from headway.models.lm import LanguageModel, check_token_ids, sample
from headway.types import Batch, Vocab


def bidirectional_row(ids: Tensor) -> Batch:
    """A `Batch` of one row (S,) holding one document that attends both ways (prefix = S)."""
    S = ids.shape[0]
    z = torch.zeros(1, S, dtype=torch.long, device=ids.device)
    return Batch(ids[None], torch.full_like(z, IGNORE_INDEX), torch.arange(S, device=ids.device)[None], z,
                 torch.tensor([[S]], device=ids.device))


def transfer_counts(masked: int, steps: int) -> list[int]:
    """How many positions each step unmasks: `masked` spread over `steps` (at most `masked`) steps,
    ⌊masked/steps⌋ each and one more in the first masked mod steps."""
    steps = max(1, min(steps, masked)) if masked else 0
    return [masked // steps + (1 if j < masked % steps else 0) for j in range(steps)]


@torch.no_grad()
def unmask(model: LanguageModel, canvas: Tensor, vocab: Vocab, steps: int | None = None, *, temperature: float = 0.0,
           top_k: int | None = None, top_p: float | None = None, block_length: int | None = None,
           generator: torch.Generator | None = None, first_allowed: Tensor | None = None) -> Tensor:
    """Fill every `<mask>` of `canvas` (S,) by the reverse process (module docstring) in `steps` steps
    (default: one per masked position); returns the filled (S,) ids. `first_allowed` (V,) bool: the
    ids the first masked position may take (e.g. those that open a line)."""
    if canvas.dim() != 1:
        raise ValueError(f"unmask: `canvas` must be 1-D (S,), got shape {tuple(canvas.shape)}")
    if steps is not None and steps < 1:
        raise ValueError(f"unmask: `steps` must be >= 1, got {steps}")
    if block_length is not None and block_length < 1:
        raise ValueError(f"unmask: `block_length` must be >= 1, got {block_length}")
    model.check_vocab(vocab)
    check_token_ids(canvas, model.vocab_size, "unmask", "canvas")
    mask_id = vocab.id("<mask>")
    x = canvas.clone()
    todo = (x == mask_id).nonzero().squeeze(1)  # (M,) the positions to fill, left to right
    M = todo.numel()
    if M == 0:
        return x
    steps = M if steps is None else steps
    block = M if block_length is None else block_length
    blocks = [todo[s : s + block] for s in range(0, M, block)]
    per_block = [steps // len(blocks) + (1 if j < steps % len(blocks) else 0) for j in range(len(blocks))]
    allowed = torch.arange(model.vocab_size, device=x.device) < vocab.base_size  # (V,) text tokens only
    first = int(todo[0])
    batch = bidirectional_row(x)
    for positions, n_steps in zip(blocks, per_block):
        for n in transfer_counts(len(positions), max(1, n_steps)):
            still = positions[x[positions] == mask_id]  # (m,) this block's masked positions
            h = model.hidden(x[None], batch)[0, still]  # (m, H)
            z = model.head.logits(h).float()  # (m, V)
            keep = allowed[None, :].expand_as(z).clone()
            if first_allowed is not None and bool((still == first).any()):
                keep[still == first] &= first_allowed.to(z.device)
            z = z.masked_fill(~keep, float("-inf"))
            guess = sample(z, temperature, top_k, top_p, generator)  # (m,)
            conf = torch.softmax(z, -1).gather(1, guess[:, None]).squeeze(1)  # (m,) p(x̂_i | canvas)
            pick = torch.topk(conf, n).indices  # the n most confident; the others stay masked
            x[still[pick]] = guess[pick]
    return x


@torch.no_grad()
def diffusion_generate(model: LanguageModel, prompt: Tensor, new_tokens: int, vocab: Vocab, steps: int | None = None,
                       **kw: object) -> Tensor:
    """`new_tokens` tokens after `prompt` (P,) by unmasking a canvas `prompt ++ <mask> * new_tokens`;
    returns the (new_tokens,) new ids. Other keywords: `unmask`'s."""
    if new_tokens < 0:
        raise ValueError(f"diffusion_generate: `new_tokens` must be >= 0, got {new_tokens}")
    masks = torch.full((new_tokens,), vocab.id("<mask>"), dtype=torch.long, device=prompt.device)
    out = unmask(model, torch.cat([prompt.long(), masks]), vocab, steps, **kw)  # type: ignore[arg-type]
    return out[len(prompt):]


@torch.no_grad()
def diffusion_infill(model: LanguageModel, prefix: Tensor, suffix: Tensor, vocab: Vocab, length: int,
                     steps: int | None = None, **kw: object) -> Tensor:
    """The middle of exactly `length` tokens between `prefix` and `suffix` (1-D ids), by unmasking
    `prefix ++ <mask> * length ++ suffix`: the sampler is given the middle's length (a left-to-right
    FIM model finds it by emitting EOS). Returns the (length,) middle. Other keywords: `unmask`'s."""
    if length < 1:
        raise ValueError(f"diffusion_infill: `length` must be >= 1, got {length}")
    masks = torch.full((length,), vocab.id("<mask>"), dtype=torch.long, device=prefix.device)
    out = unmask(model, torch.cat([prefix.long(), masks, suffix.long()]), vocab, steps, **kw)  # type: ignore[arg-type]
    return out[len(prefix) : len(prefix) + length]

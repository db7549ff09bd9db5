"""Self-speculative greedy decoding with the multi-token prediction depths (DeepSeek-V3, section
5.4.3): the depths draft the next tokens, the main head verifies them all in one forward pass.

Known tokens x_0 .. x_{L-1}: the last one, x_{L-1}, is the main head's greedy choice after x_{L-2}
(emitted, not yet fed); the backbone's cache holds x_0 .. x_{L-2} and h^0 their hidden states.
One step:

1. Draft. Depth j = 1..D (D <= K) at the last position p = L-2 reads h^{j-1}_p and e(x_{p+j})
   (x_{p+j} a draft for j >= 2) and its greedy token is the draft d_j for x_{L-1+j}. Each depth
   keeps a KV cache of its positions whose input tokens are all known ("final"); the positions
   that read a draft are recomputed at every step.
2. Verify. Feed [x_{L-1}, d_1, .., d_D] through the backbone with its cache: the main head's greedy
   tokens g_0 .. g_D, g_i the greedy choice after d_i (after x_{L-1} for i = 0).
3. Accept the longest run d_1 = g_0, .., d_n = g_{n-1}; emit d_1 .. d_n and g_n (n + 1 tokens), and
   cut the backbone's cache back to x_0 .. x_{L-1+n} (`truncate` where the cache has one, else a
   copy taken before step 2 is restored and the n + 1 accepted inputs fed again).

Every emitted token is the main head's greedy choice after the tokens before it, so the output is
plain greedy's (up to floating-point round-off of a several-token forward against one-token steps:
a near-tie can flip; in float32 on the tests' models it never did). Batch size 1.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor

from headway.models.lm import LanguageModel, check_token_ids
from headway.models.transformer import KVCache, attention_layout

__all__ = ["SpeculativeStats", "SpeculativeComparison", "speculative_generate", "compare_with_greedy"]


@dataclass
class SpeculativeStats:
    """What a speculative decode did: `steps` verification passes, `tokens` emitted (the first
    token, from the prompt's forward pass, included), `drafted` and `accepted` drafts, and per step
    the drafts proposed (`drafts`) and the tokens emitted (`emitted`)."""

    steps: int = 0
    tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    drafts: list[list[int]] = field(default_factory=list)
    emitted: list[list[int]] = field(default_factory=list)

    @property
    def tokens_per_step(self) -> float:
        """Mean tokens emitted per verification pass (1 + accepted drafts); plain greedy: 1."""
        return sum(len(e) for e in self.emitted) / max(1, self.steps)

    @property
    def acceptance(self) -> float:
        """Accepted drafts / drafted."""
        return self.accepted / max(1, self.drafted)


class _Depths:
    """The depths' incremental state: per depth j a KV cache of its `final` positions and their
    outputs h^j (1, final, H), the input of depth j+1."""

    def __init__(self, model: LanguageModel, h0: Tensor, weight: Tensor) -> None:
        assert model.mtp is not None
        self.model, self.mtp, self.weight = model, model.mtp, weight
        K = self.mtp.num_depths
        self.caches = [KVCache(1) for _ in range(K)]
        self.final = [0] * K
        self.hist: list[Tensor] = [h0] + [h0[:, :0] for _ in range(K)]  # h^0 (1, L-1, H), h^j (1, final_j, H)

    def draft(self, seq: list[int], n: int) -> list[int]:
        """`n` drafts for x_L, x_{L+1}, .. given the known tokens `seq` (length L)."""
        L, drafts, spec = len(seq), [], None  # spec: depth j-1's outputs at the positions that read a draft
        dev = self.hist[0].device
        for j in range(1, n + 1):
            depth, cache = self.mtp.depths[j - 1], self.caches[j - 1]
            start = self.final[j - 1]
            cache.truncate(start)
            prev = self.hist[j - 1][:, start:]  # h^{j-1} at start .. (final of depth j-1) - 1
            if spec is not None:
                prev = torch.cat([prev, spec], 1)
            tokens = [seq[t + j] if t + j < L else drafts[t + j - L] for t in range(start, L - 1)]
            e = self.model.embedding(torch.tensor([tokens], device=dev))  # (1, n_new, H)
            pos, mask, causal = attention_layout(1, len(tokens), dev, None, start)
            y = depth(prev, e, self.mtp.rope(pos), mask, causal, cache)  # (1, n_new, H)
            cache.length = L - 1
            n_final = (L - j) - start  # positions start .. L-1-j read known tokens only
            self.hist[j] = torch.cat([self.hist[j], y[:, :n_final]], 1)
            self.final[j - 1] = L - j
            spec = y[:, n_final:]
            z = self.model.head.logits(depth.norm(y[:, -1:]), weight=self.weight)[:, -1]  # (1, V)
            drafts.append(int(z.argmax(-1)))
        return drafts


@torch.no_grad()
def speculative_generate(model: LanguageModel, prompt: Tensor, max_new_tokens: int, *, eos_id: int | None = None,
                         num_drafts: int | None = None) -> tuple[Tensor, SpeculativeStats]:
    """Greedy continuation of `prompt` (S,) drafted by the model's MTP depths and verified by its main
    head (module docstring): the same tokens as ``model.generate(prompt, n, temperature=0, eos_id=...)``
    (cut after the first `eos_id`), and the `SpeculativeStats`. `num_drafts`: drafts per step (default K,
    at most K)."""
    if model.mtp is None:
        raise ValueError("speculative decoding drafts with the multi-token prediction depths; this model has none "
                         "(train with --mtp-depth K)")
    if prompt.dim() != 1 or prompt.numel() == 0:
        raise ValueError(f"speculative_generate: `prompt` must be a non-empty 1-D tensor of ids, got shape "
                         f"{tuple(prompt.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"speculative_generate: `max_new_tokens` must be >= 0, got {max_new_tokens}")
    if not getattr(model.backbone, "causal", True):
        raise ValueError("speculative_generate: this backbone is bidirectional and cannot generate left to right")
    K = model.mtp.num_depths if num_drafts is None else num_drafts
    if not 1 <= K <= model.mtp.num_depths:
        raise ValueError(f"speculative_generate: `num_drafts` must be in [1, {model.mtp.num_depths}], got {num_drafts}")
    check_token_ids(prompt[None], model.vocab_size, "speculative_generate", "prompt")
    stats = SpeculativeStats()
    if max_new_tokens == 0:
        return prompt[:0], stats
    body, head = model.backbone, model.head
    W = head.full_weight()  # (V, H), once
    cache = body.new_cache(1)
    h0 = body(model.embedding(prompt[None]), None, cache)  # (1, S, H)
    seq = prompt.tolist() + [int(head.logits(h0, keep_last=1, weight=W)[0, -1].argmax())]
    new = [seq[-1]]
    depths = _Depths(model, h0, W)
    while len(new) < max_new_tokens and (eos_id is None or new[-1] != eos_id):
        D = min(K, max_new_tokens - len(new))
        drafts = depths.draft(seq, D)
        saved = None if hasattr(cache, "truncate") else copy.deepcopy(cache)
        inp = torch.tensor([[seq[-1], *drafts]], device=prompt.device)  # (1, D+1)
        hv = body(model.embedding(inp), None, cache)  # (1, D+1, H)
        greedy = head.logits(hv, weight=W)[0].argmax(-1).tolist()  # D+1 ids: g_i follows d_i
        n = 0
        while n < D and drafts[n] == greedy[n]:
            n += 1
        if n < D:  # rejected drafts leave the backbone's cache
            if saved is None:
                cache.truncate(len(seq) + n)
            else:
                cache = saved
                body(model.embedding(inp[:, : n + 1]), None, cache)
        depths.hist[0] = torch.cat([depths.hist[0], hv[:, : n + 1]], 1)
        step = drafts[:n] + [greedy[n]]
        seq += step
        new += step
        stats.steps += 1
        stats.drafted += D
        stats.accepted += n
        stats.drafts.append(drafts)
        stats.emitted.append(step)
    if eos_id is not None and eos_id in new:
        new = new[: new.index(eos_id) + 1]
    new = new[:max_new_tokens]
    stats.tokens = len(new)
    return torch.tensor(new, dtype=prompt.dtype, device=prompt.device), stats


@dataclass
class SpeculativeComparison:
    """`compare_with_greedy`'s result: both outputs, their wall-clock seconds, and the stats."""

    greedy: Tensor
    speculative: Tensor
    greedy_seconds: float
    speculative_seconds: float
    stats: SpeculativeStats

    @property
    def identical(self) -> bool:
        return torch.equal(self.greedy, self.speculative)

    @property
    def speedup(self) -> float:
        """Plain greedy's seconds per token over speculative decoding's."""
        g = self.greedy_seconds / max(1, self.greedy.numel())
        s = self.speculative_seconds / max(1, self.speculative.numel())
        return g / s if s > 0 else float("inf")

    def tokens_per_second(self) -> tuple[float, float]:
        """(plain greedy, speculative) tokens per second."""
        return (self.greedy.numel() / max(self.greedy_seconds, 1e-9),
                self.speculative.numel() / max(self.speculative_seconds, 1e-9))

    def describe(self) -> str:
        """One line: drafts per step, tokens per step, acceptance, both speeds, whether the outputs agree."""
        g, s = self.tokens_per_second()
        st = self.stats
        return (f"speculative: {st.tokens_per_step:.2f} tokens per step ({st.accepted}/{st.drafted} drafts "
                f"accepted, {st.steps} steps), {s:.1f} tokens/s; plain greedy {g:.1f} tokens/s "
                f"({self.speedup:.2f}x); identical to plain greedy: {'yes' if self.identical else 'NO'}")


@torch.no_grad()
def compare_with_greedy(model: LanguageModel, prompt: Tensor, max_new_tokens: int, *, eos_id: int | None = None,
                        num_drafts: int | None = None) -> SpeculativeComparison:
    """Plain greedy (`LanguageModel.generate`, temperature 0) and `speculative_generate` on the same
    prompt (S,), each timed once after a short warm-up of both."""
    import time

    speculative_generate(model, prompt, min(4, max_new_tokens), eos_id=eos_id, num_drafts=num_drafts)
    model.generate(prompt, min(4, max_new_tokens), temperature=0.0, eos_id=eos_id)
    t = time.perf_counter()
    greedy = model.generate(prompt, max_new_tokens, temperature=0.0, eos_id=eos_id)
    t_greedy = time.perf_counter() - t
    t = time.perf_counter()
    spec, stats = speculative_generate(model, prompt, max_new_tokens, eos_id=eos_id, num_drafts=num_drafts)
    t_spec = time.perf_counter() - t
    return SpeculativeComparison(greedy, spec, t_greedy, t_spec, stats)

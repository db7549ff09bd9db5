"""Single-line infilling on validation files, as in single-line FIM benchmarks.

Lines are drawn by seed from the validation documents (non-blank, 4 to 80 characters, not a
document's first line). The prefix ends *before* the line break that opens the line, so the
model writes "\n" + line: a byte-level BPE merges a line break with the next line's indentation
("\n        "), and a prompt cut after the bare "\n" would end on a token boundary training never
shows. With FIM the model sees the text before and after and generates greedily; by default in
the SPM layout `<fim_prefix> <fim_suffix> suf <fim_middle> pre`, where the middle continues the
prefix where it ends (PSM, `<fim_prefix> pre <fim_suffix> suf <fim_middle>`, asks the model to
find the prefix's end across the suffix, which a small model learns last). From the prefix alone
it continues left to right. Both are told that the middle opens a line: their first token is one
whose text starts with "\n" (`line_breaks`), as an editor inserting a line would ask, and each
stops at the next line break (what follows is never scored). Score: exact match of the generated
line with the line (trailing whitespace ignored). Both get the same prefix tokens; FIM gets the
suffix too — the difference is what the objective buys. Exact match is a hard, coarse score for a
small model, so each line ("\n" + line) is also scored teacher-forced, in bits per byte after
either prompt: the suffix helps exactly when the FIM figure is the lower.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from headway.data.tokenizer import Tokenizer, encode_edge
from headway.models.lm import LanguageModel
from headway.types import Vocab

MIN_CHARS, MAX_CHARS = 4, 80


@dataclass
class InfillResult:
    lines: int
    fim_exact: float  # fraction of lines the FIM prompt reproduces exactly
    prefix_exact: float  # the same, completing from the prefix alone
    fim_chars: float = 0.0  # mean fraction of each line's characters right before the first mistake (FIM)
    prefix_chars: float = 0.0  # the same from the prefix alone
    layout: str = "spm"  # the FIM prompt's layout (LanguageModel.infill); "diffusion": `diffusion_infill_lines`
    fim_bits: float = 0.0  # bits per byte of the lines ("\n" + line), teacher-forced after the FIM prompt
    prefix_bits: float = 0.0  # the same after the prefix alone
    examples: list[dict] = field(default_factory=list)

    def __str__(self) -> str:
        how = ("masked diffusion, given the middle's length" if self.layout == "diffusion"
               else f"FIM, {self.layout.upper()}")
        return (f"single-line infilling on {self.lines} validation lines: exact match {self.fim_exact:.1%} with "
                f"prefix + suffix ({how}), {self.prefix_exact:.1%} from the prefix alone; "
                f"characters right before the first mistake {self.fim_chars:.1%} vs {self.prefix_chars:.1%}; bits per "
                f"byte of the lines {self.fim_bits:.3f} vs {self.prefix_bits:.3f}")


def right_before_mistake(got: str | None, line: str) -> float:
    """Fraction of `line`'s characters (trailing whitespace ignored) that `got` reproduces before
    its first mistake."""
    want = line.rstrip()
    if got is None or not want:
        return 0.0
    n = 0
    for a, b in zip(got, want):
        if a != b:
            break
        n += 1
    return n / len(want)


def nll(model: LanguageModel, prompt: torch.Tensor, target: torch.Tensor) -> float:
    """Summed negative log-likelihood (nats) of `target` (T,) right after `prompt` (P,), teacher-forced:
    -sum_t log p(target_t | prompt, target_<t)."""
    ids = torch.cat([prompt, target])[None, :-1]  # (1, P + T - 1): position P - 1 + t predicts target_t
    z = model.logits(ids, keep_last=len(target))[0].float()  # (T, V)
    return float(torch.nn.functional.cross_entropy(z, target, reduction="sum"))


def pick_lines(texts: list[str], n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """`n` lines (prefix, line, suffix) drawn by `seed` from the texts' non-blank lines of
    MIN_CHARS..MAX_CHARS characters after the first: text = prefix + "\n" + line + suffix, and
    suffix starts with the line break after the line."""
    cands = []
    for d, t in enumerate(texts):
        start = 0
        for line in t.split("\n"):
            end = start + len(line)
            if start > 0 and MIN_CHARS <= len(line.strip()) and len(line) <= MAX_CHARS and end < len(t):
                cands.append((d, start, end))
            start = end + 1
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(cands), size=min(n, len(cands)), replace=False) if cands else []
    return [(texts[d][: s - 1], texts[d][s:e], texts[d][e:]) for d, s, e in (cands[i] for i in sorted(picked))]


def first_line(generated: str) -> str | None:
    """The line a generation wrote: the text after its leading line break up to the next one
    (None when it does not start a new line)."""
    return generated[1:].split("\n")[0] if generated.startswith("\n") else None


def line_breaks(tok: Tokenizer, vocab: Vocab) -> tuple[torch.Tensor, torch.Tensor]:
    """(V,) bool masks: the ids whose text starts with a line break ("\n", "\n    ", ...), and those
    whose text holds one anywhere ("):\n"); special ids are in neither."""
    texts = [tok.decode([i]) if i < vocab.base_size else "" for i in range(vocab.size)]
    return torch.tensor([t.startswith("\n") for t in texts]), torch.tensor(["\n" in t for t in texts])


@dataclass
class LineScore:
    """One line scored under both prompts: the line each generation wrote (`first_line`; None when it
    did not open a line) and the negative log-likelihood of "\n" + line in nats (or an upper bound on
    it) after the prefix and suffix (`fim_nll`) and after the prefix alone (`prefix_nll`)."""

    fim: str | None
    prefix_only: str | None
    fim_nll: float
    prefix_nll: float


def _score_lines(model: LanguageModel, tok: Tokenizer, lines: list[tuple[str, str, str]], context: int,
                 max_new_tokens: int, layout: str, score_line: Callable[[torch.Tensor, torch.Tensor, torch.Tensor],
                                                                        LineScore],
                 progress: Callable[[int], None] | None) -> InfillResult:
    """The scoring loop of every infilling evaluation, with the model in eval mode: for each (prefix,
    middle, suffix) of `lines`, `score_line(pre, suf, want)` gets the prefix's last and the suffix's
    first (context - max_new_tokens - 3) // 2 tokens and the tokens of "\n" + middle, and says what
    each prompt generated and the line's NLL after each. The result: the fraction of lines each prompt
    reproduces exactly (trailing whitespace ignored), the mean fraction of characters right before the
    first mistake, the summed NLLs in bits per byte of the lines' text ("\n" + line) and the first six
    lines as examples. `progress` is called with the number of lines done after each."""
    dev = next(model.parameters()).device
    keep = (context - max_new_tokens - 3) // 2
    was = model.training
    model.eval()
    fim_ok = pre_ok = 0
    fim_c = pre_c = fim_nll = pre_nll = 0.0
    n_bytes = 0
    examples = []
    for k, (prefix, middle, suffix) in enumerate(lines):
        pre = torch.tensor(encode_edge(tok, prefix, keep, last=True), dtype=torch.long, device=dev)
        suf = torch.tensor(encode_edge(tok, suffix, keep, last=False), dtype=torch.long, device=dev)
        want = torch.tensor(tok.encode("\n" + middle), dtype=torch.long, device=dev)
        s = score_line(pre, suf, want)
        got_fim, got_pre = s.fim, s.prefix_only
        fim_nll += s.fim_nll
        pre_nll += s.prefix_nll
        n_bytes += len(("\n" + middle).encode("utf-8"))
        f = got_fim is not None and got_fim.rstrip() == middle.rstrip()
        p = got_pre is not None and got_pre.rstrip() == middle.rstrip()
        fim_ok += f
        pre_ok += p
        fim_c += right_before_mistake(got_fim, middle)
        pre_c += right_before_mistake(got_pre, middle)
        if len(examples) < 6:
            examples.append({"before": prefix.split("\n")[-1], "line": middle,
                             "after": suffix.split("\n")[1] if suffix.count("\n") > 1 else "",
                             "fim": got_fim or "", "prefix_only": got_pre or ""})
        if progress is not None:
            progress(k + 1)
    model.train(was)
    n = max(1, len(lines))
    bits = math.log(2) * max(1, n_bytes)
    return InfillResult(len(lines), fim_ok / n, pre_ok / n, fim_c / n, pre_c / n, layout, fim_nll / bits,
                        pre_nll / bits, examples)


@torch.no_grad()
def infill_lines(model: LanguageModel, tok: Tokenizer, vocab: Vocab, lines: list[tuple[str, str, str]],
                 context: int, max_new_tokens: int = 32, layout: str = "spm",
                 progress: Callable[[int], None] | None = None, lead: int | None = None) -> InfillResult:
    """Exact match of greedy single-line infilling (FIM in `layout`) and left-to-right completion on `lines`,
    each prompt within `context` tokens (prefix and suffix cut to (context - max_new - 3) / 2). The
    left-to-right prompt is `lead` + prefix (the objective's `text_lead`, default EOS), as documents
    start in training."""
    if context < max_new_tokens + 8:
        raise ValueError(f"infill_lines: context {context} leaves no room beside {max_new_tokens} new tokens")
    dev = next(model.parameters()).device
    bos = torch.tensor([vocab.eos if lead is None else lead], device=dev)  # as training opens documents
    opens, breaks = (m.to(dev) for m in line_breaks(tok, vocab))
    line_done = lambda new: breaks[new[:, 1:]].any(1)  # noqa: E731  (a break after the opening one ends the line)

    def score_line(pre: torch.Tensor, suf: torch.Tensor, want: torch.Tensor) -> LineScore:
        mid = model.infill(pre, suf, vocab, max_new_tokens, layout, temperature=0.0, first_allowed=opens,
                           stop_when=line_done)
        new = model.generate(torch.cat([bos, pre]), max_new_tokens, temperature=0.0, first_allowed=opens,
                             stop_when=line_done)
        return LineScore(first_line(tok.decode(mid.tolist())),
                         first_line(tok.decode([int(i) for i in new if int(i) < vocab.base_size])),
                         nll(model, model.fim_prompt(pre, suf, vocab, layout), want),
                         nll(model, torch.cat([bos, pre]), want))

    return _score_lines(model, tok, lines, context, max_new_tokens, layout, score_line, progress)


@torch.no_grad()
def _middle_bound(model: LanguageModel, left: torch.Tensor, mid: torch.Tensor, right: torch.Tensor, vocab: Vocab,
                  draws: int, rng: np.random.Generator) -> float:
    """The masked-diffusion ELBO of `mid` (n,) between `left` and `right`, in nats: the mean over `draws`
    of (n / l) Σ -log p(mid_i | canvas) over l ~ U{1..n} middle positions masked at random
    (`headway.train.diffusion_eval`; an upper bound on -log p(mid | left, right, n))."""
    from headway.models.diffusion_sampling import bidirectional_row
    from headway.train.diffusion_eval import draw_masks

    n, total = len(mid), 0.0
    for masked, factor in draw_masks(n, draws, rng):
        m = torch.from_numpy(masked).to(mid.device)
        canvas = torch.cat([left, torch.where(m, vocab.id("<mask>"), mid), right])
        z = model.head.logits(model.hidden(canvas[None], bidirectional_row(canvas))[0, len(left) : len(left) + n][m])
        total += factor * float(torch.nn.functional.cross_entropy(z.float(), mid[m], reduction="sum"))
    return total / draws


@torch.no_grad()
def diffusion_infill_lines(model: LanguageModel, tok: Tokenizer, vocab: Vocab, lines: list[tuple[str, str, str]],
                           context: int, steps: int | None = None, max_new_tokens: int = 32, draws: int = 4,
                           progress: Callable[[int], None] | None = None) -> InfillResult:
    """`infill_lines` for a masked-diffusion model, scored exactly as FIM's (the same lines, prompts cut
    to the same `context`, the first token one that opens a line, the generated line cut at its next
    line break, exact match and characters before the first mistake), with one difference: the sampler
    is **given the middle's length** — it unmasks exactly as many positions as "\\n" + line has tokens
    (`diffusion_infill`), where a FIM model must end the middle itself. "prefix alone" unmasks the same
    number of positions after the prefix. The bits per byte are the masked-diffusion ELBO of the line
    given each context (an upper bound, `draws` draws), not a teacher-forced likelihood. `steps`:
    unmasking steps per line (default: one per token). Layout: "diffusion"."""
    from headway.models.diffusion_sampling import diffusion_generate, diffusion_infill

    if context < max_new_tokens + 8:
        raise ValueError(f"diffusion_infill_lines: context {context} leaves no room beside {max_new_tokens} tokens")
    opens, _ = (m.to(next(model.parameters()).device) for m in line_breaks(tok, vocab))
    rng = np.random.default_rng(0)

    def score_line(pre: torch.Tensor, suf: torch.Tensor, want: torch.Tensor) -> LineScore:
        n_new = min(len(want), max_new_tokens)  # as FIM, at most `max_new_tokens` new tokens
        mid = diffusion_infill(model, pre, suf, vocab, n_new, steps, first_allowed=opens)
        new = diffusion_generate(model, pre, n_new, vocab, steps, first_allowed=opens)
        return LineScore(first_line(tok.decode(mid.tolist())), first_line(tok.decode(new.tolist())),
                         _middle_bound(model, pre, want, suf, vocab, draws, rng),
                         _middle_bound(model, pre, want, want[:0], vocab, draws, rng))

    return _score_lines(model, tok, lines, context, max_new_tokens, "diffusion", score_line, progress)

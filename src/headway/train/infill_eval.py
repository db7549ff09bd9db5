"""Single-line infilling on validation files, as in single-line FIM benchmarks.

Lines are drawn by seed from the validation documents (non-blank, 4 to 80 characters). For each,
the model sees the text before the line and after it (the PSM prompt
`<fim_prefix> pre <fim_suffix> suf <fim_middle>`) and generates greedily until EOS or a line break;
the same model, given the prefix alone, completes the line left to right. Score: exact match of
the generated line with the real one (trailing whitespace ignored). Both get the same prefix
tokens; FIM gets the suffix too — the difference is what the objective buys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from headway.data.tokenizer import Tokenizer
from headway.models.lm import LanguageModel
from headway.types import Vocab

MIN_CHARS, MAX_CHARS = 4, 80


@dataclass
class InfillResult:
    lines: int
    fim_exact: float  # fraction of lines the FIM prompt reproduces exactly
    prefix_exact: float  # the same, completing from the prefix alone
    examples: list[dict] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"single-line infilling on {self.lines} validation lines: exact match {self.fim_exact:.1%} with "
                f"prefix + suffix (FIM), {self.prefix_exact:.1%} from the prefix alone")


def pick_lines(texts: list[str], n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """`n` lines (prefix, line, suffix) drawn by `seed` from the texts' non-blank lines of
    MIN_CHARS..MAX_CHARS characters: prefix ends with the line break before the line, suffix
    starts with the one after it."""
    cands = []
    for d, t in enumerate(texts):
        start = 0
        for line in t.split("\n"):
            end = start + len(line)
            if MIN_CHARS <= len(line.strip()) and len(line) <= MAX_CHARS and end < len(t):
                cands.append((d, start, end))
            start = end + 1
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(cands), size=min(n, len(cands)), replace=False) if cands else []
    return [(texts[d][:s], texts[d][s:e], texts[d][e:]) for d, s, e in (cands[i] for i in sorted(picked))]


def line_break_ids(tok: Tokenizer) -> torch.Tensor:
    """The base ids whose text holds a line break (generation stops after one)."""
    return torch.tensor([i for i in range(tok.base_size) if "\n" in tok.decode([i])], dtype=torch.long)


@torch.no_grad()
def infill_lines(model: LanguageModel, tok: Tokenizer, vocab: Vocab, lines: list[tuple[str, str, str]],
                 context: int, max_new_tokens: int = 32,
                 progress: Callable[[int], None] | None = None) -> InfillResult:
    """Exact match of greedy single-line infilling (FIM) and left-to-right completion on `lines`,
    each prompt within `context` tokens (prefix and suffix cut to (context - max_new - 3) / 2). The
    left-to-right prompt is EOS + prefix, as documents start in training."""
    if context < max_new_tokens + 8:
        raise ValueError(f"infill_lines: context {context} leaves no room beside {max_new_tokens} new tokens")
    dev = next(model.parameters()).device
    stops = line_break_ids(tok).to(dev)
    keep = (context - max_new_tokens - 3) // 2
    was = model.training
    model.eval()
    fim_ok = pre_ok = 0
    examples = []
    for k, (prefix, middle, suffix) in enumerate(lines):
        pre = torch.tensor(tok.encode(prefix)[-keep:], dtype=torch.long, device=dev)
        suf = torch.tensor(tok.encode(suffix)[:keep], dtype=torch.long, device=dev)
        got_fim = tok.decode(model.infill(pre, suf, vocab, max_new_tokens, temperature=0.0,
                                          stop_ids=stops).tolist()).split("\n")[0]
        bos = torch.tensor([vocab.eos], device=dev)  # training documents start after an EOS, as here
        new = model.generate(torch.cat([bos, pre]), max_new_tokens, temperature=0.0, eos_id=vocab.eos, stop_ids=stops)
        got_pre = tok.decode([int(i) for i in new if int(i) != vocab.eos]).split("\n")[0]
        f, p = got_fim.rstrip() == middle.rstrip(), got_pre.rstrip() == middle.rstrip()
        fim_ok += f
        pre_ok += p
        if len(examples) < 6:
            examples.append({"before": prefix.split("\n")[-2] if "\n" in prefix else "", "line": middle,
                             "after": suffix.split("\n")[1] if suffix.count("\n") > 1 else "", "fim": got_fim,
                             "prefix_only": got_pre})
        if progress is not None:
            progress(k + 1)
    model.train(was)
    n = max(1, len(lines))
    return InfillResult(len(lines), fim_ok / n, pre_ok / n, examples)

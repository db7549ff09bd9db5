"""A run's evaluations: validation bits per byte (during training and at the end), the end-of-run
comparison with general-purpose compressors, single-line infilling scores, and the infill demo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from headway.models.lm import LanguageModel
from headway.objectives import is_masked_diffusion, text_lead
from headway.train.data import RunData
from headway.train.device import autocast_for
from headway.train.diffusion_eval import ElboResult, evaluate_elbo
from headway.train.metrics import EvalResult, compressor_bits_per_byte, evaluate

if TYPE_CHECKING:
    from headway.train.loop import Run

# the prefix ends on a token boundary: a byte-level BPE attaches a word's leading space to the word
# (" sys"), so a prefix ending in "import " would end on a token training never shows there
DEMO = ("import os\nimport", "\n\n\ndef main():\n    print(sys.argv[1:], os.getcwd())\n")
DEMO_MIDDLE = " sys"  # what the demo's gap held: a masked-diffusion sampler is given its length in tokens


def validate(run: Run, max_tokens: int | None) -> tuple[EvalResult, list[np.ndarray]]:
    """Bits per byte on the validation documents within `max_tokens` (None: all); also returns them."""
    cfg = run.cfg
    docs, nbytes = run.data.val_docs(max_tokens)
    with autocast_for(run.precision, run.device):
        r = evaluate(run.model, docs, nbytes, run.data.vocab.eos, run.data.vocab.pad, cfg.seq_len, cfg.batch_size,
                     run.device, cfg.eval_stride or cfg.seq_len // 2, run.rank, run.world,
                     should_stop=run.stopper.raise_if_requested, lead=text_lead(run.objective, run.data.vocab.eos))
    return r, docs


def validate_elbo(run: Run, max_tokens: int | None) -> tuple[ElboResult, list[np.ndarray]]:
    """The masked-diffusion ELBO's bits per byte (an upper bound, with its standard error) on the
    validation documents within `max_tokens` (None: all); also returns them."""
    cfg = run.cfg
    docs, nbytes = run.data.val_docs(max_tokens)
    with autocast_for(run.precision, run.device):
        r = evaluate_elbo(run.model, docs, nbytes, run.data.vocab.id("<mask>"), run.data.vocab.pad, cfg.seq_len,
                          cfg.batch_size, run.device, rank=run.rank, world=run.world,
                          should_stop=run.stopper.raise_if_requested)
    return r, docs


def _log_elbo(run: Run, r: ElboResult, subset: bool) -> None:
    if run.rank == 0:
        run.metrics.write({"step": run.step, "val_elbo_bpb": r.bits_per_byte, "val_elbo_bpb_se": r.se_bits_per_byte,
                           "val_elbo_tokens": r.tokens, "subset": subset})
    run.log(f"step {run.step}: val ELBO <= {r.bits_per_byte:.4f} ± {r.se_bits_per_byte:.4f} bits/byte (upper bound, "
            f"{r.draws} draws per piece)")


def periodic_validation(run: Run) -> None:
    """Every `--eval-every` steps (not at the last step: the final evaluation covers it): bits per
    byte on `--eval-tokens` validation tokens, written to the metrics and logged; for a masked-diffusion
    objective the ELBO's bound (and, mixed with a left-to-right objective, the left-to-right figure too)."""
    cfg = run.cfg
    if not (cfg.eval_every and run.step % cfg.eval_every == 0 and run.step != run.total):
        return
    if is_masked_diffusion(run.objective):
        _log_elbo(run, validate_elbo(run, cfg.eval_tokens)[0], cfg.eval_tokens is not None)
        if not run.objective.trains_left_to_right:
            return
    r, _ = validate(run, cfg.eval_tokens)
    if run.rank == 0:
        run.metrics.write({"step": run.step, "val_loss": r.loss, "val_bpb": r.bits_per_byte, "val_tokens": r.tokens,
                           "subset": cfg.eval_tokens is not None})
    run.log(f"step {run.step}: val loss {r.loss:.4f}, {r.bits_per_byte:.4f} bits/byte")


def final_evaluation(run: Run) -> None:
    """Validation bits per byte (within --final-eval-tokens), the compressors on the same documents,
    the infill demo."""
    s = run.summary
    if is_masked_diffusion(run.objective):
        final_elbo(run)
    if not run.objective.trains_left_to_right:
        return  # left-to-right bits per byte mean nothing for a bidirectional (MLM, diffusion) model
    r, docs = validate(run, run.cfg.final_eval_tokens or None)
    if r.tokens == 0:
        s.val = {"tokens": 0, "note": "no validation tokens (every validation document is empty)"}
        run.log("validation: no tokens (every validation document is empty)")
        return
    s.val = {"loss": r.loss, "perplexity": r.perplexity, "bits_per_byte": r.bits_per_byte, "tokens": r.tokens,
             "bytes": r.bytes, "whole_split": r.tokens >= run.data.prepared.totals("val")["tokens"]}
    texts = [run.data.tokenizer.decode(d.tolist()) for d in docs]
    if run.rank == 0:
        run.metrics.write({"step": run.step, "val_loss": r.loss, "val_bpb": r.bits_per_byte, "val_tokens": r.tokens,
                           "subset": False})
        s.compressors = compressor_bits_per_byte(texts)
    if (run.rank == 0 or run.sharded) and run.model.backbone.causal:  # sharded: generating is a collective
        s.infill = demo_infill(run.model, run.data)
        if run.cfg.infill_lines:
            from headway.train.infill_eval import infill_lines, pick_lines

            lines = pick_lines(texts, run.cfg.infill_lines, run.cfg.seed)
            run.log(f"scoring single-line infilling on {len(lines)} validation lines")
            with autocast_for(run.precision, run.device):
                res = infill_lines(run.model, run.data.tokenizer, run.data.vocab, lines, run.cfg.seq_len,
                                   lead=text_lead(run.objective, run.data.vocab.eos))
            s.infill_eval = {"lines": res.lines, "fim_exact": res.fim_exact, "prefix_exact": res.prefix_exact,
                             "fim_chars": res.fim_chars, "prefix_chars": res.prefix_chars, "layout": res.layout,
                             "fim_bits": res.fim_bits, "prefix_bits": res.prefix_bits, "examples": res.examples}


def demo_infill(model: LanguageModel, data: RunData, prefix: str = DEMO[0], suffix: str = DEMO[1]) -> dict:
    """Single-line infilling (greedy, cut at the first line break), as in single-line FIM evals; the
    middle is not empty (its first token is not a special one)."""
    tok, vocab = data.tokenizer, data.vocab
    dev = next(model.parameters()).device
    text_ids = torch.arange(vocab.size, device=dev) < vocab.base_size
    mid = model.infill(torch.tensor(tok.encode(prefix), device=dev), torch.tensor(tok.encode(suffix), device=dev),
                       vocab, max_new_tokens=16, temperature=0.0, first_allowed=text_ids)
    return {"prefix": prefix, "suffix": suffix, "middle": tok.decode(mid.tolist()).split("\n")[0]}


def final_elbo(run: Run) -> None:
    """A masked-diffusion run's final evaluation: the ELBO's bits per byte on the validation split (an
    upper bound with its Monte Carlo standard error, `Summary.val_elbo`); for a run that trains nothing
    left to right also the compressors on the same documents, the infill demo and the single-line
    infilling scores by unmasking (`diffusion_infill_lines`, given the middle's length)."""
    s, cfg = run.summary, run.cfg
    r, docs = validate_elbo(run, cfg.final_eval_tokens or None)
    if r.tokens == 0:
        s.val_elbo = {"tokens": 0, "note": "no validation tokens (every validation document is empty)"}
        return
    s.val_elbo = {**r.as_dict(), "whole_split": r.tokens >= run.data.prepared.totals("val")["tokens"]}
    _log_elbo(run, r, False)
    if run.objective.trains_left_to_right:
        return  # the left-to-right evaluation that follows has the compressors, the demo and the infill scores
    texts = [run.data.tokenizer.decode(d.tolist()) for d in docs]
    if run.rank == 0:
        s.compressors = compressor_bits_per_byte(texts)
    if not (run.rank == 0 or run.sharded):  # sharded: every forward pass is a collective
        return
    s.infill = demo_diffusion_infill(run.model, run.data)
    if cfg.infill_lines:
        from headway.train.infill_eval import diffusion_infill_lines, pick_lines

        lines = pick_lines(texts, cfg.infill_lines, cfg.seed)
        run.log(f"scoring single-line infilling by unmasking on {len(lines)} validation lines")
        with autocast_for(run.precision, run.device):
            res = diffusion_infill_lines(run.model, run.data.tokenizer, run.data.vocab, lines, cfg.seq_len)
        s.infill_eval = {"lines": res.lines, "fim_exact": res.fim_exact, "prefix_exact": res.prefix_exact,
                         "fim_chars": res.fim_chars, "prefix_chars": res.prefix_chars, "layout": res.layout,
                         "fim_bits": res.fim_bits, "prefix_bits": res.prefix_bits, "examples": res.examples}


def demo_diffusion_infill(model: LanguageModel, data: RunData, prefix: str = DEMO[0], suffix: str = DEMO[1],
                          middle: str = DEMO_MIDDLE) -> dict:
    """The infill demo by unmasking (greedy, one token per step), given the length in tokens of the
    demo's own middle (`DEMO_MIDDLE`), cut at the first line break as `demo_infill`."""
    from headway.models.diffusion_sampling import diffusion_infill

    tok, vocab = data.tokenizer, data.vocab
    dev = next(model.parameters()).device
    mid = diffusion_infill(model, torch.tensor(tok.encode(prefix), device=dev),
                           torch.tensor(tok.encode(suffix), device=dev), vocab, len(tok.encode(middle)))
    return {"prefix": prefix, "suffix": suffix, "middle": tok.decode(mid.tolist()).split("\n")[0],
            "given_length": len(tok.encode(middle))}

"""`headway train | sample | infill | show | eval | bench` — run `headway CMD --help` for each."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from headway.constants import FIM_LAYOUTS
from headway.train.runs import load_run, run_lead

if TYPE_CHECKING:
    from headway.train.infill_eval import InfillResult


def _escape(text: str) -> str:
    """`text` as an argparse help string (which %-formats it)."""
    return text.replace("%", "%%")


def _field_type(hint: object) -> tuple[type, bool]:
    """(the argparse value type, whether None is allowed) of a `TrainConfig` field's type hint,
    from `typing.get_type_hints`: `int`, `float`, `str`, `bool`, `list[str]` and their `| None`."""
    import types
    import typing

    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    optional = type(None) in args
    rest = [a for a in args if a is not type(None)]
    if len(rest) != 1:
        raise TypeError(f"a TrainConfig field must have one type (or it | None), got {hint!r}")
    t = rest[0]
    origin = typing.get_origin(t) or t
    if origin is list:
        return list, optional
    if origin not in (int, float, str, bool):
        raise TypeError(f"a TrainConfig field must be int, float, str, bool or list[str], got {hint!r}")
    return origin, optional  # type: ignore[return-value]


def _or_none(typ: type) -> object:
    """An argparse type that also reads "none" as None (an optional field, as in config files)."""

    def convert(text: str) -> object:
        return None if text.lower() == "none" else typ(text)

    convert.__name__ = typ.__name__  # argparse names it in "invalid int value"
    return convert


def train_field_argument(p: argparse.ArgumentParser | argparse._ArgumentGroup, f: dataclasses.Field, hint: object,
                         default: object = argparse.SUPPRESS, fixed_note: bool = True) -> None:
    """Add the flag of `TrainConfig` field `f` (type `hint`) to `p`, everything from its metadata:
    help, metavar (the choices, where fixed), the default in the help text, and whether --resume
    refuses a new value. Values are checked by `TrainConfig.check()`, as those of config files and
    library calls are: the same message, naming the flag, whichever way a value came."""
    from headway.train.config import RESUMABLE

    flag = "--" + f.name.replace("_", "-")
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    h = f.metadata["help"] + (f" (default: {value})" if value not in (None, [], False) else "")
    if fixed_note and f.name not in RESUMABLE:
        h += " [fixed for the run: --resume refuses a new value]"
    typ, optional = _field_type(hint)
    kw: dict = {"default": default, "help": _escape(h)}
    choices = f.metadata["choices"]
    if f.metadata["metavar"] or choices:  # the choices are checked by TrainConfig.check(), one message everywhere
        kw["metavar"] = f.metadata["metavar"] or "{" + ",".join(choices) + "}"
    if typ is bool:
        p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
    elif typ is list:
        p.add_argument(flag, nargs="+", **kw)
    else:
        p.add_argument(flag, type=_or_none(typ) if optional else typ, **kw)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, in one argument group per section, all from the fields'
    metadata and type hints. Defaults are not filled in by argparse (SUPPRESS), so a resumed run
    can tell the flags the user gave from the ones it should take from the run."""
    import typing

    from headway.train.config import SECTION_HELP, SECTIONS, TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    groups = {s: p.add_argument_group(f"{s} ([{s}] in a --config file)", SECTION_HELP[s]) for s in SECTIONS}
    for f in dataclasses.fields(TrainConfig):
        train_field_argument(groups[f.metadata["section"]], f, hints[f.name])
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue the run in --out from its latest checkpoint, or from CHECKPOINT (a step-* folder): "
                   "same data order, optimizer state and step. Flags left out keep the run's values; the schedule "
                   "length (--steps/--tokens/--time-budget), logging, evaluation, checkpointing and hardware flags "
                   "may change, the others are refused when they differ")
    p.add_argument("--config", default=None, metavar="FILE", help="read settings from a TOML / YAML / JSON file "
                   "(keys are these flags' names, in their section's table such as [optim] or flat; see configs/); "
                   "flags given on the command line win")
    p.add_argument("--print-config", action="store_true", help="print the complete resolved config as TOML, one "
                   "table per section (a file --config reads back), and exit without training")
    p.add_argument("--overwrite", action="store_true", help="start a new run in an --out that holds an earlier run, "
                   "replacing its checkpoints and metrics (without it such a folder is refused)")


def _print_summary(s, cfg) -> None:  # noqa: ANN001
    rows = [("wall time", f"{s.wall_seconds:.0f} s (training {s.train_seconds:.0f} s)"),
            ("steps / tokens", f"{s.steps} / {s.tokens / 1e6:.2f}M"),
            ("throughput", f"{s.tokens_per_second:,.0f} tokens/s"),
            ("model FLOPs utilization", f"{s.mfu:.1%} of the measured {s.matmul_peak / 1e9:,.0f} GFLOP/s matmul peak "
                                        f"({s.flops_per_token / 1e6:.2f} MFLOP/token)"),
            ("parameters", f"{s.params / 1e6:.2f}M"),
            *[(f"--{k}", v) for k, v in getattr(s, "chosen", {}).items()],
            ("peak memory (RSS)", f"{s.peak_rss_mib:.0f} MiB"),
            ("final train loss", f"{s.final_loss:.4f}")]
    if s.val and not s.val.get("tokens"):
        rows += [("validation", s.val.get("note", "no validation tokens"))]
    elif s.val:
        rows += [("validation loss", f"{s.val['loss']:.4f} nats/token (ppl {s.val['perplexity']:.2f})"),
                 ("validation bits/byte", f"{s.val['bits_per_byte']:.4f}")]
        rows += [(k, f"{v:.4f} bits/byte") for k, v in s.compressors.items()]
    elbo = getattr(s, "val_elbo", {})
    if elbo.get("tokens"):
        rows += [("validation bits/byte (ELBO)", f"<= {elbo['bits_per_byte_bound']:.4f} ± {elbo['standard_error']:.4f}"
                  f" (an upper bound: the masked-diffusion ELBO, {elbo['draws']} draws per piece, ± one Monte Carlo "
                  "standard error)")]
        if not s.val:
            rows += [(k, f"{v:.4f} bits/byte") for k, v in s.compressors.items()]
    w = max(len(k) for k, _ in rows)
    print("\n" + "=" * 60)
    print(f"headway train: {cfg.backbone}/{cfg.size}, objective {cfg.objective}")
    print("-" * 60)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    if s.val.get("tokens") and s.compressors:
        xz = s.compressors["xz -9e (per file)"]
        verdict = "beats" if s.val["bits_per_byte"] < xz else "does not beat"
        print(f"-> the model {verdict} xz -9e per file ({s.val['bits_per_byte']:.3f} vs {xz:.3f} bits/byte)")
    elif elbo.get("tokens") and s.compressors:
        xz = s.compressors["xz -9e (per file)"]
        verdict = "beats" if elbo["bits_per_byte_bound"] < xz else "does not beat"
        print(f"-> the model's bound {verdict} xz -9e per file ({elbo['bits_per_byte_bound']:.3f} vs {xz:.3f} "
              "bits/byte)")
    if s.infill:
        n = s.infill.get("given_length")
        given = "" if n is None else f"; given the middle's length, {n} token{'' if n == 1 else 's'}"
        print("-" * 60 + f"\nsingle-line infill demo (greedy{given}; the model wrote the green part):")
        print(s.infill["prefix"] + "\033[32m" + s.infill["middle"] + "\033[0m" + s.infill["suffix"])
    if s.infill_eval:
        e = s.infill_eval
        print("-" * 60 + f"\nsingle-line infilling, {e['lines']} validation lines (greedy, exact match):")
        diffusion = e.get("layout") == "diffusion"
        fim = ("prefix + suffix (diffusion, given the length)" if diffusion
               else f"prefix + suffix (FIM, {e.get('layout', 'psm').upper()})")
        bits = "line bits/byte (ELBO bound)" if diffusion else "line bits/byte (teacher-forced)"
        print(f"  {'':<{len(fim)}}  exact  chars before 1st mistake  {bits}")
        for name, k in ((fim, "fim"), ("prefix alone", "prefix")):
            print(f"  {name:<{len(fim)}}  {e[k + '_exact']:5.1%}  {e[k + '_chars']:24.1%}  {e.get(k + '_bits', 0):.3f}")
    print("=" * 60)
    print(f"outputs in {cfg.out}: metrics.jsonl, loss.png, summary.json, checkpoints (step-*/)")


def cmd_train(a: argparse.Namespace) -> int:
    from headway.train.config import TrainConfig
    from headway.train.loop import run
    from headway.train.signals import Interrupted

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    from_file: dict = {}
    if a.config:
        from headway.train.config_file import load_config_file

        from_file = load_config_file(a.config)
    from_flags = {k: v for k, v in vars(a).items() if k in fields}
    given = set(from_file) | set(from_flags)
    cfg = TrainConfig(**{**from_file, **from_flags})
    if a.print_config:
        from headway.train.config_file import to_toml

        cfg.check()
        print(to_toml(cfg), end="")
        return 0
    try:
        s = run(cfg, resume=a.resume, given=given, overwrite=a.overwrite)
    except Interrupted as e:
        print(f"headway train: stopped by {e} before training started; nothing to save", file=sys.stderr)
        return e.exit_code
    if s.exit_code == 0 and int(os.environ.get("RANK", "0")) == 0:  # under torchrun one process reports
        _print_summary(s, TrainConfig.load(Path(cfg.out) / "config.json"))
    elif s.ended not in ("done", "SIGINT", "SIGTERM"):
        print(f"headway train: {s.ended}: {s.message}", file=sys.stderr)
    return s.exit_code


def _encode_arg(tok, text: str, flag: str) -> list[int]:  # noqa: ANN001
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{flag} is not valid UTF-8 text") from None
    return tok.encode(text)


def _sampling(p: argparse.ArgumentParser, temperature: float = 0.8, infill: bool = False) -> None:
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate (default: 128)" + (
        "; a masked-diffusion run fills exactly this many: the middle's length" if infill else
        "; a masked-diffusion run unmasks exactly this many"))
    p.add_argument("--temperature", type=float, default=temperature,
                   help=f"0 = greedy (default: {temperature:g}{', greedy' if temperature == 0 else ''})")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default: 0.95)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--steps", type=int, default=None, help="masked diffusion: unmasking steps of the reverse process "
                   "(low-confidence remasking, LLaDA; default: one per new token). A run trained only with "
                   "--objective diffusion always samples this way; a mix that trains it does with --steps")
    p.add_argument("--block-length", type=int, default=None, help="masked diffusion: unmask the new tokens in "
                   "blocks of this many, left to right (semi-autoregressive; default: one block)")


def _diffusion_sampler(a: argparse.Namespace, cfg, vocab) -> bool:  # noqa: ANN001
    """Whether `headway sample/infill` runs the masked-diffusion reverse process: for a run trained only with
    masked diffusion, or with `--steps` for a mix that trains it; `--steps` on any other run is refused."""
    from headway.objectives import build_objective, is_masked_diffusion

    objective = build_objective(cfg.objective, vocab)
    if not is_masked_diffusion(objective):
        if a.steps is not None or a.block_length is not None:
            raise ValueError(f"--steps / --block-length: the reverse process of masked diffusion; --objective "
                             f"{cfg.objective} trains no masked diffusion")
        return False
    if a.steps is not None and a.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {a.steps}")
    return not objective.trains_left_to_right or a.steps is not None


def cmd_sample(a: argparse.Namespace) -> int:
    import torch

    if a.speculative and a.temperature not in (None, 0):
        raise ValueError(f"--speculative decodes greedily (its output is plain greedy's); leave --temperature out or "
                         f"pass 0, got {a.temperature}")
    model, tok, vocab, cfg = load_run(a.checkpoint, generating=True)
    g = torch.Generator().manual_seed(a.seed)
    temperature = 0.8 if a.temperature is None else a.temperature
    if _diffusion_sampler(a, cfg, vocab):
        if a.speculative:
            raise ValueError("--speculative drafts with multi-token prediction depths; this run samples by unmasking")
        from headway.models.diffusion_sampling import diffusion_generate

        new = diffusion_generate(model, torch.tensor(_encode_arg(tok, a.prompt, "--prompt"), dtype=torch.long),
                                 a.max_new_tokens, vocab, a.steps, temperature=temperature, top_k=a.top_k,
                                 top_p=a.top_p, block_length=a.block_length, generator=g)
        print(a.prompt + tok.decode(new.tolist()))
        return 0
    ids = [run_lead(cfg, vocab)] + _encode_arg(tok, a.prompt, "--prompt")  # a document opens as in training
    if a.speculative:
        from headway.models.speculative import compare_with_greedy

        r = compare_with_greedy(model, torch.tensor(ids), a.max_new_tokens, eos_id=vocab.eos)
        print(a.prompt + tok.decode(r.speculative.tolist()))
        print(r.describe(), file=sys.stderr)
        return 0 if r.identical else 1
    new = model.generate(torch.tensor(ids), a.max_new_tokens, temperature=temperature, top_k=a.top_k,
                         top_p=a.top_p, eos_id=vocab.eos, generator=g)
    print(a.prompt + tok.decode(new.tolist()))
    return 0


def cmd_infill(a: argparse.Namespace) -> int:
    import torch

    model, tok, vocab, cfg = load_run(a.checkpoint, generating=True)
    g = torch.Generator().manual_seed(a.seed)
    if _diffusion_sampler(a, cfg, vocab):
        from headway.models.diffusion_sampling import diffusion_infill

        mid = diffusion_infill(model, torch.tensor(_encode_arg(tok, a.prefix, "--prefix"), dtype=torch.long),
                               torch.tensor(_encode_arg(tok, a.suffix, "--suffix"), dtype=torch.long), vocab,
                               a.max_new_tokens, a.steps, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                               block_length=a.block_length, generator=g)
    else:
        mid = model.infill(torch.tensor(_encode_arg(tok, a.prefix, "--prefix"), dtype=torch.long),
                           torch.tensor(_encode_arg(tok, a.suffix, "--suffix"), dtype=torch.long), vocab,
                           a.max_new_tokens, a.layout, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                           generator=g)
    color = sys.stdout.isatty()
    print(a.prefix + ("\033[32m" if color else "") + tok.decode(mid.tolist()) + ("\033[0m" if color else "")
          + a.suffix)
    return 0


SHOW_TEXT = "def add(a, b):\n    return a + b\n"


def cmd_show(a: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from headway.data.tokenizer import ByteTokenizer
    from headway.masks import dense_mask
    from headway.models.mtp import example_depth_targets
    from headway.objectives import build_objective
    from headway.show import loss_mask_image, render_example
    from headway.train.plots import plot_example_masks
    from headway.types import Vocab

    if a.checkpoint:
        _, tok, vocab, _ = load_run(a.checkpoint)
    else:
        tok, vocab = ByteTokenizer(), Vocab(256, num_sentinels=32)
    obj = build_objective(a.objective, vocab, (tok.encode, tok.decode))
    ex = obj(np.asarray(tok.encode(a.text), dtype=np.int64), np.random.default_rng(a.seed))
    depths = example_depth_targets(ex, obj, a.mtp_depth)
    print(f"objective {a.objective!r}: green = target, grey = no target, cyan = bidirectional prefix"
          + ("; t+k+1: multi-token prediction depth k's target" if depths else "") + "\n")
    print(render_example(ex, vocab, tok.decode, color=sys.stdout.isatty(), depth_targets=depths))
    if getattr(obj, "targets_note", None):  # what the targets do not show (e.g. distillation's teacher)
        print(f"\n{obj.targets_note}")
    S = len(ex)
    attn = dense_mask(torch.zeros(1, S, dtype=torch.long), torch.arange(S)[None],
                      torch.tensor([[ex.prefix_length]]))[0].numpy()
    png = Path(a.png or f"show-{a.objective.replace(':', '_').replace(',', '+')}.png")
    weights = "" if ex.loss_weights is None else f", weight {float(ex.loss_weights.max()):.3g}"
    plot_example_masks(attn, loss_mask_image(ex, depths), f"{a.objective}: prefix {ex.prefix_length}, "
                       f"{ex.num_targets} targets of {S}{weights}" + (f", MTP depths 1..{a.mtp_depth}" if depths
                                                                      else ""), png)
    print(f"\nattention and loss masks: {png}")
    return 0


def _eval_docs(a: argparse.Namespace, tok, cfg) -> tuple[list, int, list[str], str]:  # noqa: ANN001
    """(token ids per document, bytes, texts, what) for `headway eval`: the run's own validation
    split (no --data, or a folder made by `headway prepare`), else the files given."""
    import hashlib

    from headway.data.prepare import is_prepared, open_prepared
    from headway.data.sources import load_documents
    from headway.train.checkpoint import resolve
    from headway.train.data import RunData, data_folder

    ck = resolve(Path(a.checkpoint))
    folder = Path(a.data[0]) if a.data and len(a.data) == 1 and is_prepared(Path(a.data[0])) else None
    if not a.data:
        folder = data_folder(cfg, ck.parent)[0]
        if not is_prepared(folder):
            raise ValueError(f"the run's prepared data ({folder}) is gone; give --data")
    if folder is not None:
        p = open_prepared(folder)
        if hashlib.sha256((ck / "tokenizer.json").read_bytes()).hexdigest() != p.manifest["tokenizer"]["sha256"]:
            raise ValueError(f"{folder} was prepared with another tokenizer than {ck}'s")
        ids, n_bytes = RunData(p, tok, None).val_docs(a.max_tokens)  # type: ignore[arg-type]
        return ids, n_bytes, [tok.decode(x.tolist()) for x in ids], f"validation split of {folder}"
    docs = load_documents(a.data, a.text_field)
    ids = [x for x in tok.encode_batch([d.text for d in docs]) if len(x)]
    if not ids:
        raise ValueError(f"--data: the {len(docs)} documents hold no text; nothing to evaluate")
    return ids, sum(d.num_bytes for d in docs), [d.text for d in docs if d.text], ", ".join(a.data)


def _print_infill(res: InfillResult, label: str) -> None:
    """An infilling score, then each example: the line, and what the prompt with the suffix (named
    `label`) and the prefix alone wrote, marked "ok" where it is the line (trailing whitespace ignored)."""
    print(res)
    for e in res.examples:
        ok = ["ok " if got.rstrip() == e["line"].rstrip() else "   " for got in (e["fim"], e["prefix_only"])]
        print(f"  line:        {e['line']!r}\n  {ok[0]}{label + ':':9} {e['fim']!r}\n"
              f"  {ok[1]}prefix:   {e['prefix_only']!r}")


def cmd_eval(a: argparse.Namespace) -> int:
    from headway.train.metrics import compressor_bits_per_byte, evaluate

    if a.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {a.batch_size}")
    if a.seq_len is not None and a.seq_len < 2:
        raise ValueError(f"--seq-len must be >= 2, got {a.seq_len}")
    if a.stride is not None and not 1 <= a.stride <= (a.seq_len or 10**9):
        raise ValueError(f"--stride must be in [1, --seq-len], got {a.stride}")
    if a.infill < 0:
        raise ValueError(f"--infill must be >= 0, got {a.infill}")
    if a.max_tokens is not None and a.max_tokens < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {a.max_tokens}")
    model, tok, vocab, cfg = load_run(a.checkpoint)
    ids, n_bytes, texts, what = _eval_docs(a, tok, cfg)
    S = a.seq_len or cfg.seq_len
    from headway.objectives import build_objective, is_masked_diffusion

    objective = build_objective(cfg.objective, vocab)
    dev = next(model.parameters()).device
    if is_masked_diffusion(objective):
        from headway.train.diffusion_eval import evaluate_elbo

        e = evaluate_elbo(model, ids, n_bytes, vocab.id("<mask>"), vocab.pad, S, a.batch_size, dev)
        print(f"{what}: {len(ids)} documents, {n_bytes:,} bytes, {e.tokens:,} tokens")
        print(f"masked-diffusion ELBO: <= {e.nats_per_token:.4f} nats/token, <= {e.bits_per_byte:.4f} ± "
              f"{e.se_bits_per_byte:.4f} bits/byte (an upper bound, {e.draws} draws per piece, ± one Monte Carlo "
              "standard error)")
    lead = run_lead(cfg, vocab)
    if objective.trains_left_to_right or not is_masked_diffusion(objective):
        r = evaluate(model, ids, n_bytes, vocab.eos, vocab.pad, S, a.batch_size, dev, stride=a.stride or S // 2,
                     lead=lead)
        print(f"{what}: {len(ids)} documents, {n_bytes:,} bytes, {r.tokens:,} tokens")
        print(f"loss {r.loss:.4f} nats/token, perplexity {r.perplexity:.2f}, {r.bits_per_byte:.4f} bits/byte")
    for k, v in compressor_bits_per_byte(texts).items():
        print(f"{k}: {v:.4f} bits/byte")
    if a.infill and is_masked_diffusion(objective) and not objective.trains_left_to_right:
        from headway.train.infill_eval import diffusion_infill_lines, pick_lines

        _print_infill(diffusion_infill_lines(model, tok, vocab, pick_lines(texts, a.infill, a.seed), S), "unmasked")
    elif a.infill:
        from headway.train.infill_eval import infill_lines, pick_lines

        if not model.backbone.causal:
            raise ValueError("--infill: this model is bidirectional (MLM) and cannot generate")
        res = infill_lines(model, tok, vocab, pick_lines(texts, a.infill, a.seed), S, layout=a.infill_layout,
                           lead=lead)
        _print_infill(res, "FIM")
    return 0


def cmd_prepare(a: argparse.Namespace) -> int:
    from headway.data.prepare import Settings, prepare
    from headway.train.config import TrainConfig

    cfg = TrainConfig(data=a.data, glob=a.glob, text_field=a.text_field, tokenizer=a.tokenizer,
                      vocab_size=a.vocab_size, val_fraction=a.val_fraction,
                      tokenizer_sample_bytes=a.tokenizer_sample_bytes, prepare_workers=a.prepare_workers)
    cfg.check()  # the same checks and messages as `headway train`
    s = Settings(cfg.tokenizer, cfg.vocab_size, cfg.val_fraction, cfg.text_field, cfg.glob, cfg.tokenizer_sample_bytes)
    p = prepare(cfg.data, Path(a.out), s, cfg.prepare_workers, progress=not a.quiet)
    print(f"{'source':<40} {'weight':>6} {'train docs':>11} {'train tokens':>13} {'val docs':>9} {'val tokens':>11}")
    for src in p.manifest["sources"]:
        t, v = src["totals"]["train"], src["totals"]["val"]
        print(f"{src['spec'][-40:]:<40} {src['weight']:>6g} {t['docs']:>11,} {t['tokens']:>13,} {v['docs']:>9,} "
              f"{v['tokens']:>11,}")
    print(f"tokenizer: {p.tokenizer.kind}, {p.tokenizer.base_size} base tokens; shards ({p.manifest['dtype']}) in "
          f"{a.out}; train with: headway train --data {a.out}")
    return 0


def cmd_check(a: argparse.Namespace) -> int:
    """Exit 0: causal; 1: a leak was found (or, with --all-hf, in some class); 2: bad input."""
    from headway.check import check_causal

    lengths = tuple(int(x) for x in a.lengths.split(",")) if a.lengths else None
    if a.all_hf:
        from headway.check.hf_table import causal_lm_classes, check_class_isolated, table

        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = lambda x, **k: x  # noqa: E731
        import transformers

        names = causal_lm_classes()
        if a.only:
            names = [n for n in names if any(o.lower() in n.lower() for o in a.only.split(","))]
        rows = [check_class_isolated(n, lengths or (16, 17)) for n in tqdm(names, desc="checking", unit="class")]
        print(f"transformers {transformers.__version__}: {len(rows)} *ForCausalLM classes")
        print(table(rows))
        counts = {v: sum(r.verdict == v for r in rows) for v in sorted({r.verdict for r in rows})}
        print("; ".join(f"{v}: {n}" for v, n in counts.items()))
        return 1 if any(r.verdict == "NOT causal" for r in rows) else 0
    if not a.target:
        raise ValueError("give a headway run folder, a HF checkpoint folder or a transformers class name, or --all-hf")
    model = _load_for_check(a.target)
    rep = check_causal(model, lengths=lengths, packed=not a.no_packed, rows=a.rows)
    print(rep)
    mtp = getattr(model, "mtp", None)
    for k in range(1, (mtp.num_depths if mtp is not None else 0) + 1):  # depth k may see inputs up to t + k
        if rep.ok:
            rep = check_causal(model, lengths=lengths, packed=not a.no_packed, rows=a.rows, mtp_depth=k)
            print(f"multi-token prediction depth {k}: {rep}")
    if not rep.ok and a.png:
        try:
            print(f"heat map: {rep.save_heatmap(a.png)}")
        except ValueError as e:
            print(f"(no heat map: {e})")
    return 0 if rep.ok else 1


def _load_for_check(target: str):  # noqa: ANN202
    p = Path(target)
    if p.is_dir() and ((p / "latest").exists() or (p / "state.json").exists()):
        return load_run(target)[0]
    if p.is_dir() and (p / "config.json").exists():
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True)
    import transformers

    cls = getattr(transformers, target, None)
    if cls is None or not hasattr(cls, "config_class"):
        raise ValueError(f"{target!r} is not a run folder, a HF checkpoint folder or a transformers model class")
    import torch

    from headway.check.hf_table import tiny_config

    torch.manual_seed(0)
    return cls(tiny_config(cls))


def cmd_export(a: argparse.Namespace) -> int:
    import json

    from headway.integrations.export import export

    out = export(a.run, a.out_dir)
    auto = "AutoModelForMaskedLM" if "AutoModelForMaskedLM" in json.loads((out / "config.json").read_text()).get(
        "auto_map", {}) else "AutoModelForCausalLM"
    print(f"exported {a.run} to {out}: {auto}.from_pretrained({str(out)!r}, trust_remote_code=True) "
          f"and AutoTokenizer.from_pretrained({str(out)!r}) load it without headway")
    return 0


def cmd_bench(rest: list[str]) -> int:
    from headway.benchmarks.linear_ce import main as bench_main

    bench_main(rest)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="headway", description="Train language models with any objective on any "
                                "backbone, without materializing the logits.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a model (no arguments: the default run on the standard library)",
                       description="Train a language model. With no arguments: a small transformer with a CLM+FIM "
                       "mixture on the Python standard library's sources, about 9 minutes on a 2-core AMD EPYC.")
    _add_train_args(t)
    s = sub.add_parser("sample", help="continue a prompt with a trained model")
    s.add_argument("checkpoint", help="checkpoint folder or run folder (uses its latest checkpoint)")
    s.add_argument("--prompt", default="import ", help="text to continue")
    _sampling(s)
    s.set_defaults(temperature=None)  # 0.8, or greedy with --speculative
    s.add_argument("--speculative", action="store_true", help="greedy decoding drafted by the multi-token "
                   "prediction depths (a run trained with --mtp-depth K) and verified by the main head: plain "
                   "greedy's output; prints the tokens per step and tokens/s of both to stderr")
    i = sub.add_parser("infill", help="fill in the middle between a prefix and a suffix (FIM-trained models)")
    i.add_argument("checkpoint", help="checkpoint folder or run folder")
    i.add_argument("--prefix", required=True, help="text before the gap")
    i.add_argument("--suffix", required=True, help="text after the gap")
    i.add_argument("--layout", choices=FIM_LAYOUTS, default="spm", help="prompt layout: spm (<fim_prefix><fim_suffix> "
                   "suffix <fim_middle> prefix, the default) or psm (<fim_prefix> prefix <fim_suffix> suffix "
                   "<fim_middle>)")
    _sampling(i, temperature=0.0, infill=True)  # greedy, as the end-of-run demo and the infill score
    sh = sub.add_parser("show", help="print one example of an objective and save a PNG of its masks")
    sh.add_argument("--objective", default="fim", help="objective spec, as for train (default: fim)")
    sh.add_argument("--text", default=SHOW_TEXT, help="document to transform")
    sh.add_argument("--checkpoint", default=None, help="use this run's tokenizer (default: bytes)")
    sh.add_argument("--png", default=None, help="where to write the mask picture (default: show-OBJECTIVE.png)")
    sh.add_argument("--seed", type=int, default=0, help="seed of the objective's randomness")
    sh.add_argument("--mtp-depth", type=int, default=0, metavar="K", help="also show the targets of multi-token "
                    "prediction depths 1..K (the token k+1 ahead, within the document; default: 0)")
    e = sub.add_parser("eval", help="loss, perplexity and bits per byte of a checkpoint on held-out text")
    e.add_argument("checkpoint", help="checkpoint folder or run folder")
    e.add_argument("--data", nargs="+", default=None, metavar="PATH", help="files, folders, .jsonl[.gz|.zst], "
                   ".parquet, or a folder made by `headway prepare` (its validation split); default: the run's own "
                   "validation split, whole")
    e.add_argument("--max-tokens", type=int, default=None, help="with a prepared split: only the first documents "
                   "up to this many tokens (exact bytes; default: the whole split)")
    e.add_argument("--text-field", default="text", help="field holding the text in .jsonl / parquet / datasets")
    e.add_argument("--infill", type=int, default=0, metavar="N", help="also score single-line infilling on N lines "
                   "of the texts drawn by --seed: exact match of greedy FIM (prefix + suffix) next to completing the "
                   "line from the prefix alone")
    e.add_argument("--seed", type=int, default=0, help="which lines --infill draws")
    e.add_argument("--infill-layout", choices=FIM_LAYOUTS, default="spm", help="FIM prompt for --infill: spm "
                   "(<fim_prefix><fim_suffix> suffix <fim_middle> prefix, the default) or psm (<fim_prefix> prefix "
                   "<fim_suffix> suffix <fim_middle>)")
    e.add_argument("--seq-len", type=int, default=None, help="evaluation window (default: the training seq_len)")
    e.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    e.add_argument("--stride", type=int, default=None, help="sliding-window stride (default: seq_len // 2)")
    pr = sub.add_parser("prepare", help="tokenize a corpus into memory-mapped shards (`headway train --data FOLDER` "
                        "then reads them; train also prepares by itself when given raw files)",
                        description="Stream the inputs, train the BPE on a bounded sample, tokenize on every core "
                        "into flat uint16/uint32 shards with a document index and a manifest. Unchanged inputs are "
                        "never redone; an edited file redoes only its own piece.")
    import typing

    from headway.train.config import TrainConfig

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    pr.add_argument("--data", nargs="*", default=[], metavar="PATH[:WEIGHT]", help=_escape(
                    fields["data"].metadata["help"] + " (default: the standard library's .py files)"))
    pr.add_argument("--out", required=True, help="the folder to write (manifest.json, tokenizer.json, pieces/)")
    for name in ("glob", "text_field", "tokenizer", "vocab_size", "val_fraction", "tokenizer_sample_bytes",
                 "prepare_workers"):
        train_field_argument(pr, fields[name], hints[name], default=getattr(TrainConfig(), name), fixed_note=False)
    pr.add_argument("--quiet", action="store_true", help="no progress bars")
    c = sub.add_parser("check", help="does a model's output depend on later inputs, other rows or other packed "
                       "documents? (gradient and black-box detectors, train and eval mode)")
    c.add_argument("target", nargs="?", help="a headway run folder, a local HF checkpoint folder, or a transformers "
                   "class name (built from a tiny random config, offline: a causal-LM class as a decoder, any other "
                   "class as it ships)")
    c.add_argument("--all-hf", action="store_true", help="check every *ForCausalLM class of the installed "
                   "transformers and print a table (architecture, verdict, first leak, seconds)")
    c.add_argument("--only", default=None, help="with --all-hf: only classes whose name contains one of these "
                   "comma-separated strings")
    c.add_argument("--lengths", default=None, help="comma-separated sequence lengths (default 15,16,17,33; "
                   "16,17 for --all-hf)")
    c.add_argument("--rows", type=int, default=2, help="rows per batch; >= 2 also checks that rows stay apart")
    c.add_argument("--no-packed", action="store_true", help="skip the check across documents packed in one row")
    c.add_argument("--png", default=None, help="write a heat map of the first leak here")
    x = sub.add_parser("export", help="write a HuggingFace folder (config, model.safetensors, tokenizer, remote "
                       "code) that transformers loads without headway installed")
    x.add_argument("run", help="a headway run folder or checkpoint folder")
    x.add_argument("out_dir", help="the folder to write (must be empty or new)")
    sub.add_parser("bench", help="the fused loss benchmark against its peers (see `headway bench --help`)",
                   add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return cmd_bench(argv[1:])
    a = parser().parse_args(argv)
    # bf16 autocast feeds RMSNorm bf16 inputs with its float32 weight; torch then warns that it takes its
    # unfused kernel, which is exact and expected here: not a message for the user of a CPU run
    warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight", category=UserWarning)
    cmds = {"train": cmd_train, "sample": cmd_sample, "infill": cmd_infill, "show": cmd_show, "eval": cmd_eval,
            "check": cmd_check, "prepare": cmd_prepare, "export": cmd_export}
    try:
        return cmds[a.cmd](a)
    except (ValueError, FileNotFoundError) as e:
        print(f"headway {a.cmd}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from headway.train.checkpoint import CheckpointError

        if isinstance(e, CheckpointError):
            print(f"headway {a.cmd}: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())

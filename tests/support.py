"""Shared by the tests: a small real corpus of Python files, the flags of a tiny training run and the
losses it logs, a tiny HuggingFace Llama checkpoint, a Python process that cannot import headway
(for exported folders), and random inputs of the linear cross-entropy."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from headway.constants import IGNORE_INDEX

CODE = '''def area(width, height):
    """Area of a rectangle."""
    return width * height


class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)
'''


def write_corpus(d: Path) -> Path:
    for i in range(40):
        (d / f"mod_{i:02d}.py").write_text(CODE.replace("area", f"area{i}").replace("Stack", f"Stack{i}") * (1 + i % 3))
    return d


def train_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(corpus), "--out", str(out), "--tokenizer", "bytes", "--size", "tiny",
            "--seq-len", "64", "--batch-size", "2", "--steps", "3", "--warmup", "2", "--log-every", "1",
            "--val-fraction", "0.1", "--threads", "1", "--infill-lines", "0", *extra]


_args = train_args


def run_losses(out: Path) -> list[float]:
    """The training losses a run logged in `out`/metrics.jsonl, in the order they were logged."""
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def tiny_llama_checkpoint(folder: Path) -> Any:
    """Save to `folder` a HuggingFace checkpoint: a random two-layer Llama (hidden 32, tied embedding,
    initialized after seeding 0) and `byte_level_with_specials` as its fast tokenizer; returns that
    `tokenizers.Tokenizer`. Needs transformers."""
    import transformers

    from tests.data.test_external_tokenizer import byte_level_with_specials

    tok = byte_level_with_specials()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(folder)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                   tie_word_embeddings=True)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    return tok


WITHOUT_HEADWAY = '''
import json, sys
sys.modules["headway"] = None  # this process cannot import headway
import torch
'''


def run_without_headway(script: str, *args: str) -> Any:
    """Run `script` in a fresh Python process that cannot import headway, after `WITHOUT_HEADWAY`
    (json, sys and torch imported), with `args` as sys.argv[1:]; it must succeed and print, and
    the last line it prints is returned, parsed as JSON."""
    r = subprocess.run([sys.executable, "-c", WITHOUT_HEADWAY + script, *args], capture_output=True, text=True,
                       timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip(), (r.stdout, r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def exported_model_script(auto_class: str, body: str) -> str:
    """A script for `run_without_headway`: it loads the folder sys.argv[1] with transformers'
    `auto_class` (remote code trusted) as `model`, in eval mode, and its tokenizer as `tok`, encodes
    the text sys.argv[2] as `ids` (1, S), then runs `body`."""
    return f'''
from transformers import {auto_class}, AutoTokenizer
out = sys.argv[1]
model = {auto_class}.from_pretrained(out, trust_remote_code=True).eval()
tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
ids = tok(sys.argv[2], return_tensors="pt").input_ids
''' + body


def random_loss_inputs(g: torch.Generator, lead: tuple[int, ...], hidden: int, vocab: int, dtype: torch.dtype,
                       bias: bool, ignore_every: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                                                torch.Tensor]:
    """(h, w, b, y) drawn from `g` in this order: hidden states h (*lead, hidden) ~ N(0, 1), a weight
    w (vocab, hidden) and, when `bias`, a bias b (vocab,) ~ N(0, 0.5²), all of `dtype` and requiring
    grad, and labels y (*lead) uniform in [0, vocab) with every `ignore_every`-th (flat) position
    IGNORE_INDEX (none when 0)."""
    h = torch.randn(*lead, hidden, dtype=dtype, generator=g).requires_grad_()
    w = (torch.randn(vocab, hidden, dtype=dtype, generator=g) * 0.5).requires_grad_()
    b = (torch.randn(vocab, dtype=dtype, generator=g) * 0.5).requires_grad_() if bias else None
    y = torch.randint(0, vocab, lead, generator=g)
    if ignore_every:
        y.view(-1)[::ignore_every] = IGNORE_INDEX
    return h, w, b, y


# the objectives that change the model or the loss beyond a spec name, as `headway train` flags
OBJECTIVE_FLAGS = {
    "mtp": ["--objective", "clm", "--mtp-depth", "2", "--mtp-weight", "0.3"],
    "diffusion": ["--objective", "diffusion"],
    "distill": ["--objective", "distill"],  # and --teacher: a `teacher_run`
}


def teacher_run(corpus: Path, out: Path) -> Path:
    """A small headway run (byte tokenizer, CLM) that the tiny students of `train_args` can distill from."""
    from headway.cli import main

    assert main(train_args(corpus, out, "--size", "32x2", "--steps", "2", "--objective", "clm")) == 0
    return out


def float32_rel_tolerance(terms: int, steps: int) -> float:
    """How far two float32 runs that sum the same `terms` nonnegative per-token terms per step in another
    order may drift apart, relative: reordering a float32 sum of n terms moves it by at most about n·ε of
    the sum of their magnitudes (ε = 2^-23), and every step inherits the earlier steps' differences."""
    return steps * terms * 2.0**-23

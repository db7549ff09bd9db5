"""Shared by the tests: a small real corpus of Python files and the flags of a tiny training run."""

from pathlib import Path

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

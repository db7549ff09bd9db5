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

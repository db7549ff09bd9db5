"""UL2's packing efficiency (real tokens / row positions) at long rows: T5's 100 sentinels against
sentinels sized to the row (`sentinels_for`), on the standard library's own `.py` files, byte
tokenizer, best-fit-decreasing packing. Also each span denoiser's worst free positions per row.

    python bench/ul2_packing.py [--files 300] [--seq-lens 512,1024,2048]
"""

import argparse
import sysconfig
from pathlib import Path

import numpy as np

from headway.data.packing import Packer, examples_from_documents
from headway.data.tokenizer import ByteTokenizer
from headway.objectives import _span_members, build_objective, sentinels_for
from headway.types import Vocab


def documents(n: int) -> list[np.ndarray]:
    tok = ByteTokenizer()
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))[:n]
    return [np.asarray(tok.encode(p.read_text(encoding="utf-8", errors="replace")), dtype=np.int64) for p in files]


def efficiency(docs: list[np.ndarray], spec: str, S: int, sentinels: int) -> tuple[float, int]:
    vocab = Vocab(256, num_sentinels=sentinels)
    objective = build_objective(spec, vocab)
    packer = Packer(S, "bfd")
    for _ in packer.pack(examples_from_documents(docs, objective, S, np.random.default_rng(0))):
        pass
    worst = max(S - m.example_length(m.max_tokens(S)) for m in _span_members(objective))
    return packer.stats.efficiency, worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=300, help="how many standard-library files to pack")
    ap.add_argument("--seq-lens", default="512,1024,2048", help="row lengths, comma-separated")
    ap.add_argument("--spec", default="ul2", help="objective spec")
    a = ap.parse_args()
    docs = documents(a.files)
    print(f"{a.spec}: {len(docs)} files, {sum(map(len, docs)):,} tokens (bytes), best-fit-decreasing")
    print("| seq len | sentinels | packing efficiency | worst denoiser's free positions per full row |")
    print("|---:|---:|---:|---:|")
    for S in (int(x) for x in a.seq_lens.split(",")):
        for n in sorted({100, sentinels_for(a.spec, S)}):
            eff, worst = efficiency(docs, a.spec, S, n)
            print(f"| {S} | {n} | {eff:.2%} | {worst} |")


if __name__ == "__main__":
    main()

"""Multi-token prediction: the loss memory of K depths against the single head, and speculative
decoding against plain greedy on a trained run.

    python bench/mtp.py memory                       # N=4096, H=768, V=50257, K=2 (about 1-2 min on 2 cores)
    python bench/mtp.py memory --shape 1024,256,8192 --depth 3
    python bench/mtp.py speculative RUN [--tokens 128 --prompts 8]

memory: each method runs in a fresh subprocess, float32 on CPU, one forward + backward on random
inputs (never zeros). The single head: `LMHead(H, V)` on h (N, H) against N labels. MTP with K
depths: `headway.models.mtp.depth_loss` — the loss `model(batch)` computes — on h^0 .. h^K (each
(N, H)) against the labels and each depth's labels derived from them (one document of N tokens: the
last k positions of depth k have none), through the same head. Loss memory = peak RSS during the
forward + backward minus the RSS once the inputs (hidden states, W, labels) exist: gradients, the
rows side by side, the chunk buffers. It counts the loss only; the depths' own blocks are the
model's, as a backbone layer's activations are.

speculative: greedy continuations of the first line of `--prompts` validation documents of RUN
(a run trained with --mtp-depth K), plain greedy and speculative on each, tokens per verification
step, drafts accepted, tokens/s of both (torch threads: --threads), whether the outputs are identical.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from headway.benchmarks.linear_ce import rss_now, rss_peak


def memory_child(method: str, N: int, H: int, V: int, K: int) -> dict:
    """Peak loss memory (MiB) and seconds of one forward + backward of `method` ("single" | "mtp")."""
    import torch

    from headway.heads.lm_head import LMHead
    from headway.models.mtp import depth_labels, depth_loss

    g = torch.Generator().manual_seed(0)
    head = LMHead(H, V)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, H, generator=g) / H**0.25)
    y = torch.randint(0, V, (1, N), generator=g)
    n_h = 1 if method == "single" else K + 1
    hs = [(torch.randn(1, N, H, generator=g) / H**0.25).requires_grad_() for _ in range(n_h)]
    zeros, pos = torch.zeros(1, N, dtype=torch.long), torch.arange(N)[None]
    ys = [depth_labels(y, zeros, pos, torch.zeros(1, 1, dtype=torch.long), k) for k in range(n_h)]
    small = [h[:, :64].detach().requires_grad_() for h in hs]  # warm the thread pools on a small shape
    depth_loss(head, small, [t[:, :64] for t in ys], 0.3)[0].backward()
    head.weight.grad = None
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    base = rss_now()
    t = time.perf_counter()
    if method == "single":
        loss = head(hs[0], ys[0])
    else:
        loss, _ = depth_loss(head, hs, ys, 0.3)
    loss.backward()
    seconds = time.perf_counter() - t
    return {"peak_mib": (rss_peak() - base) / 2**20, "seconds": seconds, "loss": float(loss)}


def run_memory(a: argparse.Namespace) -> None:
    import torch

    N, H, V = (int(x) for x in a.shape.split(","))
    res = {}
    for method in ("single", "mtp"):
        cmd = [sys.executable, __file__, "memory", "--_child", method, "--shape", a.shape, "--depth", str(a.depth)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise SystemExit(out.stderr[-3000:])
        res[method] = json.loads(out.stdout.strip().splitlines()[-1])
    s, m = res["single"], res["mtp"]
    floor = (V * H + N * H) * 4 / 2**20  # dW + dE of the single head, float32
    print(f"# loss memory, float32 CPU, N={N} H={H} V={V}, K={a.depth} depths, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; dW + dE of one head = {floor:.0f} MiB")
    print("| loss | peak MiB above the inputs | vs the single head | seconds (fwd+bwd) | loss value |")
    print("|---|---:|---:|---:|---:|")
    print(f"| single head | {s['peak_mib']:.0f} | 1.00 | {s['seconds']:.1f} | {s['loss']:.4f} |")
    print(f"| MTP, main + {a.depth} depths, one fused call | {m['peak_mib']:.0f} | {m['peak_mib'] / s['peak_mib']:.2f} "
          f"| {m['seconds']:.1f} | {m['loss']:.4f} |")
    extra = m["peak_mib"] / s["peak_mib"] - 1
    print(f"K={a.depth} adds {100 * extra:.1f}% to the single head's loss memory "
          f"({'within' if extra <= 0.25 else 'ABOVE'} the 25% target)")


def run_speculative(a: argparse.Namespace) -> None:
    import torch

    from headway.models.speculative import compare_with_greedy
    from headway.train.runs import load_run, run_lead

    torch.set_num_threads(a.threads)
    model, tok, vocab, cfg = load_run(a.run, generating=True)
    prompts = _prompts(a.run, cfg, tok, a.prompts)
    lead = run_lead(cfg, vocab)
    rows, g_tok, g_s, s_tok, s_s, acc, drafted, steps, same = [], 0, 0.0, 0, 0.0, 0, 0, 0, True
    for text in prompts:
        ids = torch.tensor([lead] + tok.encode(text))
        r = compare_with_greedy(model, ids, a.tokens, eos_id=vocab.eos)
        g_tok += r.greedy.numel()
        g_s += r.greedy_seconds
        s_tok += r.speculative.numel()
        s_s += r.speculative_seconds
        acc += r.stats.accepted
        drafted += r.stats.drafted
        steps += r.stats.steps
        same &= r.identical
        rows.append(f"| {text[:40]!r} | {r.stats.tokens_per_step:.2f} | {r.stats.accepted}/{r.stats.drafted} | "
                    f"{r.tokens_per_second()[0]:.0f} | {r.tokens_per_second()[1]:.0f} | "
                    f"{'yes' if r.identical else 'NO'} |")
    print(f"# speculative decoding, {a.run}: backbone {cfg.backbone}/{cfg.size}, K={cfg.mtp_depth}, "
          f"{a.tokens} new tokens per prompt, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| prompt | tokens per step | drafts accepted | greedy tokens/s | speculative tokens/s | identical |")
    print("|---|---:|---:|---:|---:|---|")
    print("\n".join(rows))
    print(f"| all {len(prompts)} | {(s_tok - len(prompts)) / max(steps, 1):.2f} | {acc}/{drafted} "
          f"({100 * acc / max(drafted, 1):.0f}%) | {g_tok / g_s:.0f} | {s_tok / s_s:.0f} | {'yes' if same else 'NO'} |")
    print(f"speculative / plain greedy speed: {(s_tok / s_s) / (g_tok / g_s):.2f}x")


def _prompts(run: str, cfg, tok, n: int) -> list[str]:  # noqa: ANN001
    """The opening lines (up to about 120 characters, cut after a line break) of `n` validation
    documents of the run, every k-th of the split so that they come from different files."""
    from pathlib import Path

    from headway.data.prepare import open_prepared
    from headway.train.checkpoint import resolve
    from headway.train.data import RunData, data_folder

    folder = data_folder(cfg, resolve(Path(run)).parent)[0]
    docs, _ = RunData(open_prepared(folder), tok, None).val_docs(None)  # type: ignore[arg-type]
    step = max(1, len(docs) // n)
    out = []
    for d in docs[::step][:n]:
        text = tok.decode(d.tolist())
        cut = text.rfind("\n", 0, 120)
        out.append(text[: cut + 1] if cut > 0 else text[:120])
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--shape", default="4096,768,50257", help="N,H,V")
    m.add_argument("--depth", type=int, default=2, help="K")
    m.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    s = sub.add_parser("speculative")
    s.add_argument("run", help="a run trained with --mtp-depth K")
    s.add_argument("--tokens", type=int, default=128)
    s.add_argument("--prompts", type=int, default=8)
    s.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if a.what == "memory" and a._child:
        N, H, V = (int(x) for x in a.shape.split(","))
        print(json.dumps(memory_child(a._child, N, H, V, a.depth)))
    elif a.what == "memory":
        run_memory(a)
    else:
        run_speculative(a)


if __name__ == "__main__":
    main()

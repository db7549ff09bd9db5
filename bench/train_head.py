"""Fused vs materializing LM head in a training step; see `headway.benchmarks.train_head`."""

from headway.benchmarks.train_head import main

if __name__ == "__main__":
    main()

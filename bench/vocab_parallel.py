"""Per-rank memory of a replicated vs a vocabulary-parallel LM head (see headway/benchmarks/vocab_parallel.py)."""

from headway.benchmarks.vocab_parallel import main

if __name__ == "__main__":
    main()

"""Fused linear cross-entropy benchmark; see `headway.benchmarks.linear_ce` (also `headway bench`)."""

from headway.benchmarks.linear_ce import main

if __name__ == "__main__":
    main()

"""Every *ForCausalLM class of the installed transformers through headway's causality check.

    python bench/check_hf.py            # docs/benchmarks/2026-11-24-causality-check.md (= `headway check --all-hf`)
"""

import sys

from headway.cli import main

if __name__ == "__main__":
    sys.exit(main(["check", "--all-hf", *sys.argv[1:]]))

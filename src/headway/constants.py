"""Constants every module shares. Defined once, imported everywhere."""

IGNORE_INDEX: int = -100
"""Label value that contributes nothing to the loss (same as PyTorch's and HuggingFace's)."""

FIM_LAYOUTS: tuple[str, ...] = ("spm", "psm")
"""Where the prefix goes in an infilling prompt: SPM `<fim_prefix> <fim_suffix> suf <fim_middle> pre`
(the middle continues the prefix; the default) or PSM `<fim_prefix> pre <fim_suffix> suf <fim_middle>`."""

LOSS_IMPLS: tuple[str, ...] = ("auto", "chunked", "reference", "cce", "liger")
"""`linear_cross_entropy(impl=...)`'s backends (and `headway train --loss-impl`'s choices): auto (chunked; on
CUDA Cut-Cross-Entropy or Liger when installed and the options allow), chunked, reference (the materializing
oracle), cce, liger."""

DISTILL_KINDS: tuple[str, ...] = ("kl", "reverse_kl", "jsd")
"""`distillation_loss(kind=...)`'s divergences (and `headway train --distill-loss`'s choices): KL(teacher ‖
student), KL(student ‖ teacher), the generalized Jensen-Shannon divergence."""

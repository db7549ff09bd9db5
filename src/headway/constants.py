"""Constants every module shares. Defined once, imported everywhere."""

IGNORE_INDEX: int = -100
"""Label value that contributes nothing to the loss (same as PyTorch's and HuggingFace's)."""

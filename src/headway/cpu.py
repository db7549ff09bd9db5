"""What this CPU has, read once from Linux's /proc and /sys: its instruction-set flags and its cache
sizes. The loss takes its product backend from the flags (`headway.loss.matmul`: oneDNN where the
CPU has AVX-512) and its chunk size from the caches (`headway.loss.core.default_chunk_size`);
`--precision auto` takes bf16 where the flags show native bf16 products. Elsewhere (macOS, Windows)
nothing is read and every answer is the conservative one (no flags, no cache sizes)."""

from __future__ import annotations

import functools
import os
from pathlib import Path


@functools.cache
def flags() -> frozenset[str]:
    """The instruction-set flags of /proc/cpuinfo's first processor (empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def has_avx512() -> bool:
    """Whether the CPU has AVX-512 (foundation)."""
    return "avx512f" in flags()


def has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix products several times faster than float32 on this CPU.
    The environment variable HEADWAY_FAST_BF16=1/0 overrides the reading, so `--precision auto`
    (and a whole test run) can take either CPU kind's path on any machine."""
    forced = os.environ.get("HEADWAY_FAST_BF16")
    if forced is not None:
        return forced != "0"
    return bool({"avx512_bf16", "amx_bf16"} & flags())


def _size(text: str) -> int:
    """A sysfs cache size ("1024K", "32M", "49152") in bytes."""
    text = text.strip().upper()
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


@functools.cache
def cache_bytes(level: int, root: str = "/sys/devices/system/cpu/cpu0/cache") -> int | None:
    """The size in bytes of the data (or unified) cache of `level` that CPU 0 uses, or None where
    sysfs does not say."""
    try:
        for index in sorted(Path(root).glob("index*")):
            kind = (index / "type").read_text().strip()
            if int((index / "level").read_text()) == level and kind in ("Data", "Unified"):
                return _size((index / "size").read_text())
    except (OSError, ValueError):
        return None
    return None


__all__ = ["flags", "has_avx512", "has_fast_bf16", "cache_bytes"]

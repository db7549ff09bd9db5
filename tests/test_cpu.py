"""The CPU facts the loss and `--precision auto` read: flags from /proc/cpuinfo, cache sizes from
sysfs (here a sysfs-shaped folder of real files, and this machine's own), and the chunk size they give."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from headway import cpu
from headway.loss import core


def _index(root: Path, name: str, level: int, kind: str, size: str) -> None:
    d = root / name
    d.mkdir(parents=True)
    (d / "level").write_text(f"{level}\n")
    (d / "type").write_text(f"{kind}\n")
    (d / "size").write_text(f"{size}\n")


def test_cache_sizes_are_read_per_level_skipping_instruction_caches(tmp_path):
    _index(tmp_path, "index0", 1, "Data", "48K")
    _index(tmp_path, "index1", 1, "Instruction", "32K")
    _index(tmp_path, "index2", 2, "Unified", "2048K")
    _index(tmp_path, "index3", 3, "Unified", "105M")
    root = str(tmp_path)
    assert cpu.cache_bytes(1, root) == 48 * 2**10
    assert cpu.cache_bytes(2, root) == 2 * 2**20
    assert cpu.cache_bytes(3, root) == 105 * 2**20
    assert cpu.cache_bytes(4, root) is None
    assert cpu.cache_bytes(2, str(tmp_path / "absent")) is None


def test_the_chunk_cache_follows_the_l2_and_the_threads_within_half_the_last_level(monkeypatch):
    sizes = {2: 2 * 2**20, 3: 32 * 2**20}
    monkeypatch.setattr(cpu, "cache_bytes", lambda level, *a: sizes.get(level))
    assert core.cpu_chunk_cache_bytes(threads=2) == 8 * 2**20
    assert core.cpu_chunk_cache_bytes(threads=16) == 16 * 2**20  # half the last level at most
    sizes.clear()
    assert core.cpu_chunk_cache_bytes(threads=2) == core.CPU_CACHE_BYTES  # nothing readable: the fallback


@pytest.mark.parametrize("hidden", [16, 64, 96, 768])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_chunks_on_this_machine_stay_within_the_budget_and_above_twice_the_hidden_size(hidden, dtype):
    V = 50257
    rows = core.default_chunk_size(V, False, hidden=hidden, device=torch.device("cpu"), dtype=dtype)
    budget = core.DEFAULT_BUDGET_BYTES * (2 if dtype == torch.bfloat16 else 1) // (4 * V)
    assert 1 <= rows <= budget
    assert rows >= min(budget, 2 * hidden)
    share = core.cpu_chunk_cache_bytes() * (2 if dtype == torch.bfloat16 else 1)
    assert rows >= min(budget, share // (4 * V))


def test_flags_are_read_on_linux():
    if not Path("/proc/cpuinfo").exists():
        assert cpu.flags() == frozenset()
    else:
        assert cpu.flags()  # every Linux CPU lists some
    assert cpu.has_avx512() == ("avx512f" in cpu.flags())


def test_fast_bf16_follows_the_flags_unless_forced(monkeypatch):
    monkeypatch.delenv("HEADWAY_FAST_BF16", raising=False)
    assert cpu.has_fast_bf16() == bool({"avx512_bf16", "amx_bf16"} & cpu.flags())
    monkeypatch.setenv("HEADWAY_FAST_BF16", "0")
    assert not cpu.has_fast_bf16()
    monkeypatch.setenv("HEADWAY_FAST_BF16", "1")
    assert cpu.has_fast_bf16()

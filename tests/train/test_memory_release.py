"""The run gives freed heap pages back to the system at most every few seconds (glibc)."""

from __future__ import annotations

import pytest

from headway.train import memory


@pytest.mark.skipif(memory._trim() is None, reason="the C library has no malloc_trim (glibc's)")
def test_release_runs_at_most_once_per_period():
    assert memory.release_free_memory(every=0.0)  # now
    assert not memory.release_free_memory(every=3600.0)  # again within the hour: skipped
    assert memory.release_free_memory(every=0.0)

import numpy as np
import pytest
import torch
from hypothesis import settings

from headway.types import Vocab

# property tests assert results, not speed: a loaded 2-core machine must not fail them on time
settings.register_profile("headway", deadline=None)
settings.load_profile("headway")


@pytest.fixture
def vocab() -> Vocab:
    return Vocab(base_size=97, num_sentinels=40)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """40 small real Python files (a module-scoped folder)."""
    from tests.support import write_corpus

    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def one_rank_group():
    """A real one-process gloo group (torch.distributed initialized) for the test's duration."""
    import os
    import tempfile

    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    with tempfile.TemporaryDirectory() as d:
        dist.init_process_group("gloo", init_method=f"file://{os.path.join(d, 'rdv')}", rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()

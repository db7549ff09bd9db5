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

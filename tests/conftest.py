import numpy as np
import pytest
import torch

from headway.types import Vocab


@pytest.fixture
def vocab() -> Vocab:
    return Vocab(base_size=97, num_sentinels=40)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)

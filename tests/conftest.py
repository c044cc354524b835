"""Fixtures shared by the test modules."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """In-process runs use one intra-op thread, as the launched ones do (OMP_NUM_THREADS=1): on a shared CPU,
    two spinning threads per process slow every step several times."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

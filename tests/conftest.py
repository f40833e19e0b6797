"""Shared pytest fixtures: where the genuine data lives, and a skip when it is absent."""
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data (genuine AFLW2000-3D / 300W-LP / BFM-derived files); skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"genuine data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module: on shared 2-core machines OpenMP spinning makes 2 threads slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

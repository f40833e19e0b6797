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


@pytest.fixture(scope="session")
def trained_e2tkface(tmp_path_factory):
    """A small E2TKFace trained in seconds on synthetic crops, with held-out crops and its fp32 outputs on them
    (tests.helpers.train_small_e2tkface, on one torch thread, restored afterwards): tests.helpers.TrainedNetwork.
    Fails (does not skip) when the training left the network on the mean face."""
    import torch

    from tests.helpers import train_small_e2tkface

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_small_e2tkface(tmp_path_factory.mktemp("trained"))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def trained_onnx(trained_e2tkface, tmp_path_factory):
    """The session's trained network exported through the command line from its checkpoint: {"fp32": path,
    "int8": path} (int8 calibrated on its 16 training crops, -td)."""
    import torchrun

    root = tmp_path_factory.mktemp("trained_onnx")
    paths = {"fp32": root / "trained.onnx", "int8": root / "trained-int8.onnx"}
    ck = trained_e2tkface.checkpoint
    assert torchrun.main(["-export=onnx", f"--loadModelPath={ck}", f"-o={paths['fp32']}"]) == 0
    assert torchrun.main(["-export=onnx-int8", f"--loadModelPath={ck}", f"-o={paths['int8']}",
                          f"-td={trained_e2tkface.train_dir}"]) == 0
    return paths

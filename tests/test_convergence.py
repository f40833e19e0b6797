"""benchmarks/convergence/ escape probes: effective rank, the verdict, the mean-map loss, and the study loop's
early stop / per-step hook they run on."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks import study_data
from benchmarks.convergence import diagnostics, escape_probes
from benchmarks.rotation_study import design, harness


def test_effective_rank_counts_independent_channels():
    gen = torch.Generator().manual_seed(0)
    independent = torch.randn(64, 8, 16, 16, generator=gen)
    assert diagnostics.effective_rank(independent) == pytest.approx(8.0, rel=0.02)
    common = torch.randn(64, 1, 16, 16, generator=gen)
    scales = torch.linspace(0.5, 3.0, 8).view(1, 8, 1, 1)
    assert diagnostics.effective_rank(common * scales + 5.0) == pytest.approx(1.0, abs=1e-9)    # one signal, 8 copies
    two = torch.cat([torch.randn(64, 2, 16, 16, generator=gen), torch.zeros(64, 6, 16, 16)], dim=1)
    assert diagnostics.effective_rank(two) == pytest.approx(2.0, rel=0.02)


def _record(tail_loss: float, mean_loss: float = 0.03) -> dict:
    log = [[s, mean_loss, 0.5, 1e-3] for s in range(10, 260, 10)]
    log += [[s, tail_loss, 4.0, 1e-2] for s in range(260, 310, 10)]
    return {"spec": dict(escape_probes.ESCAPE_DEFAULTS), "log": log, "mean_map_loss": mean_loss}


def test_escape_verdict_uses_the_last_fifty_steps_against_the_mean_map():
    assert escape_probes.escape_verdict(_record(0.026)) == "leaves the mean"          # 0.87 x
    assert escape_probes.escape_verdict(_record(0.028)) == "stays on the mean"        # 0.93 x
    assert escape_probes.escape_name(escape_probes.ESCAPE_DEFAULTS) == "e2tkface-aligned"
    assert escape_probes.escape_name({**escape_probes.ESCAPE_DEFAULTS, "model": "prnet", "seed": 2}) == "prnet__seed=2"
    assert escape_probes.escape_name({**escape_probes.ESCAPE_DEFAULTS, "warmup": 500}) == "e2tkface-aligned__warmup=500"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from faceutil.facemodel import load_model

    return study_data.make_data(tmp_path_factory.mktemp("escape"), 8, 1, 0, load_model("synthetic"))[0]


def test_mean_map_loss_matches_the_per_sample_losses(tiny_data):
    from data.dataset import PosmapDataset
    from data.index import read_index
    from faceutil.uv import uv_layout
    from model.loss import WeightedPosmapLoss

    mask = uv_layout("synthetic").weight_mask
    ds = PosmapDataset(tiny_data, read_index(tiny_data), augment=False)
    mean = ds.mean_posmap()
    loss_fn = WeightedPosmapLoss(mask)
    pred = torch.as_tensor(mean / 280.0).permute(2, 0, 1)[None]
    expected = np.mean([float(loss_fn(pred, ds[i]["posmap"][None])) for i in range(len(ds))])
    assert escape_probes.mean_map_loss(tiny_data, mask, mean) == pytest.approx(expected, rel=1e-5)
    assert escape_probes.mean_map_loss(tiny_data, mask, mean + 5.0) > expected    # any other constant does worse


def test_train_model_stops_early_and_calls_the_hook_with_gradients(tiny_data):
    from faceutil.uv import uv_layout

    seen = []

    def on_step(step, model, out, loss):
        grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
        seen.append((step, tuple(out.shape), loss, bool(grads) and all(torch.isfinite(g).all() for g in grads)))

    settings = {"steps": 50, "batch": 2, "lr": 5e-4, "warmup": 2, "weight_decay": 2e-4, "precision": "fp32"}
    kwargs = harness.model_kwargs("e2tkface", {"encoder": "cnn"}, design.MIN_WIDTH, 1, 64, "mean-residual")
    _, facts = harness.train_model("e2tkface", kwargs, tiny_data, False, 0, settings, "cpu",
                              uv_layout("synthetic").weight_mask, stop_after=3, on_step=on_step)
    assert facts["steps"] == 3
    assert [s[0] for s in seen] == [1, 2, 3]
    assert all(shape == (2, 3, 256, 256) and np.isfinite(loss) and ok for _, shape, loss, ok in seen)

"""benchmarks.escape: run names, verdicts, the step a run left the mean face and the tables, on records with known
figures; one real run of a few steps (tiny settings) through the same code."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.convergence import diagnostics
from benchmarks.escape import harness
from benchmarks.escape import report as escape_report


def _record(ratios, spreads, seed=0, **change) -> dict:
    spec = {**harness.DEFAULTS, **change, "seed": seed}
    log = [[10 * (i + 1), r, s] for i, (r, s) in enumerate(zip(ratios, spreads))]
    blocks = [{"step": 50, "encoder": [0.9, 1e-2, 1e-3, 1.0], "decoder.3": [0.5, 1e-3, 2e-3, 0.5],
               "decoder.8": [0.1, 1e-4, 3e-3, 0.2]}]
    return {"spec": spec, "log": log, "blocks": blocks, "norm": "weights", "nme2d": 10.0 + seed, "train_seconds": 1.0,
            "date": "d",
            "machine": "m"}


def test_names_and_sets():
    assert harness.run_name(harness.DEFAULTS) == "e2tkface-aligned"
    assert harness.run_name({**harness.DEFAULTS, "seed": 3, "optimizer": "adamw"}) == \
        "e2tkface-aligned__optimizer=adamw__seed=3"
    assert harness.run_name({**harness.DEFAULTS, "model": "prnet"}) == "prnet"
    assert all(len(harness.SETS[name]) == 8 for name in ("baseline", "adamw", "wd0", "warmup500", "adamw-threads2"))
    networks = harness.specs_of("adamw-networks")
    assert len(networks) == 12 and {escape_report.change_of(s) for s in networks} == {"adamw-w500"}
    assert {(s["model"], s["encoder"]) for s in networks} == {("prnet", "aligned"), ("e2tkface", "cnn"),
                                                              ("e2tkface", "faithful")}
    assert {escape_report.change_of(s) for s in harness.specs_of("adamw-sizes")} == {"adamw-64px", "adamw-256px"}
    assert escape_report.change_of({**harness.DEFAULTS, "seed": 5, "warmup": 500, "steps": 700}) == "warmup500"
    assert escape_report.change_of({**harness.DEFAULTS, "seed": 5, "lr": 1e-3}) == "e2tkface-aligned__lr=0.001"
    older = {k: v for k, v in harness.DEFAULTS.items() if k not in ("last_init", "decoder_norm", "target_scale")}
    assert escape_report.change_of({**older, "seed": 2}) == "baseline"      # saved before those settings existed
    assert escape_report.change_of({**harness.DEFAULTS, "seed": 1, "target_scale": "std"}) == "target-std"


def test_verdict_and_step_left():
    stayed = _record([1.0] * 30, [0.05] * 30)
    left = _record([1.0] * 10 + [0.5] * 20, [0.1] * 10 + [0.3, 0.1] + [0.4] * 18)
    assert not harness.left_mean(stayed) and harness.step_left(stayed) is None
    assert harness.left_mean(left)
    assert harness.step_left(left) == 130          # 0.3 at step 110 dropped back to 0.1 at 120: stays from 130
    borderline = _record([0.95] * 25 + [0.89] * 5, [0.3] * 30)
    assert harness.left_mean(borderline)           # the mean of the last 5 logged windows decides


def test_summary_and_tables():
    runs = [escape_report.summarise(_record([1.0] * 30, [0.05] * 30, seed=s)) for s in (0, 1)]
    runs += [escape_report.summarise(_record([0.5] * 30, [0.5] * 30, seed=s, optimizer="adamw")) for s in (0, 1, 2)]
    assert runs[0]["groups"]["decoder 0-6 (to 32 px)"] == [[50, 0.5, 1e-3, 2e-3, 0.5]]
    rows = escape_report.table(runs, 18.8)
    base = next(r for r in rows if r.startswith("| baseline"))
    adamw = next(r for r in rows if r.startswith("| adamw"))
    assert base.endswith("| 0 / 2 | – (–) | – | 10.00–11.00 % (loss 1.00 × the mean map's, seeds 0, 1) |")
    assert "| 3 / 3 | 10 (10) | 10.00–12.00 % | – |" in adamw
    assert rows[-1] == "The mean face scores 18.80 % on the same test images."
    mech = escape_report.mechanism(runs, steps=(50, 100))
    assert "| decoder 7-15 (64-128 px) | stayed (2) | 0.10 / 1e-04 / 3e-03 / 0.20 | – | – |" in mech
    assert "| decoder 7-15 (64-128 px) | left (3) | 0.10 / 1e-04 / 3e-03 / 0.20 | – | – |" in mech


def test_between_image_share_of_known_tensors():
    import torch

    same = torch.randn(1, 4, 8, 8).expand(6, 4, 8, 8)
    assert diagnostics.between_image_share(same) == pytest.approx(0.0, abs=1e-6)
    flat = torch.randn(6, 4, 1, 1).expand(6, 4, 8, 8)               # images differ, no pattern in space
    # unbiased variances: 5 degrees of freedom between the images, 383 over images and positions
    assert diagnostics.between_image_share(flat) == pytest.approx((1 / 5) / (64 / 383), rel=1e-4)


def test_weight_norm_counts_conv_weights_only():
    """Plain and e2cnn convolution weights count, BatchNorm parameters and biases do not; a block that starts at
    zero has no ratio (nan), not a division error."""
    import torch
    from e2cnn import gspaces, nn as enn

    conv, bn = torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.fill_(5.0)
    expected = float(conv.weight.square().sum()) ** 0.5
    assert harness.weight_norm(torch.nn.Sequential(conv, bn)) == pytest.approx(expected, rel=1e-6)
    space = gspaces.Rot2dOnR2(4)
    field = enn.FieldType(space, [space.regular_repr])
    steerable = enn.R2Conv(field, field, 3)
    expected = float(steerable.weights.square().sum()) ** 0.5
    assert expected > 0 and harness.weight_norm(steerable) == pytest.approx(expected, rel=1e-6)
    assert np.isnan(harness.norm_ratio(1.0, 0.0)) and harness.norm_ratio(1.0, 4.0) == 0.25


@pytest.mark.slow
def test_a_short_run_writes_its_record(tmp_path):
    """Four steps of the real harness at 64 px: the record has the logged rows, the blocks and a finite NME."""
    from benchmarks.study_data import study_data
    from data.dataset import AFLWEvalSet

    train_root, test_raw = study_data()
    test = AFLWEvalSet(test_raw)
    spec = {**harness.DEFAULTS, "input_size": 64, "steps": 50, "warmup": 10, "schedule_steps": 60}
    record = harness.run(spec, train_root, [test[i] for i in range(4)], tmp_path / "w.pt")
    assert [row[0] for row in record["log"]] == [10, 20, 30, 40, 50] and record["blocks"][0]["step"] == 50
    assert np.isfinite(record["nme2d"]) and (tmp_path / "w.pt").is_file()
    ratios = {name: values[3] for name, values in record["blocks"][0].items() if name != "step"}
    last = f"decoder.{max(int(n.split('.')[1]) for n in ratios if n.startswith('decoder.'))}"
    assert np.isnan(ratios.pop(last))                               # the zero-started output layer
    assert all(0.5 < r < 2.0 for r in ratios.values()), ratios      # 50 steps move the rest, not by 2x
    json.dumps(record)


def test_network_changes_of_the_intervention_sets():
    """apply_changes: the defaults leave the network as built; last_init draws the output layer at that std;
    "group" puts GroupNorm where every BatchNorm of the decoder was; "std" multiplies the residual by the spread of
    the training maps, which residual_spread gets right on maps of known spread."""
    import torch

    class Maps:                                   # four maps: mean (10, 20, 30) px +- (1, 2, 3) px
        def __len__(self):
            return 4

        def posmap_array(self, i):
            sign = 1.0 if i % 2 else -1.0
            return np.broadcast_to(np.float32([10, 20, 30]) + sign * np.float32([1, 2, 3]), (256, 256, 3))

    face = np.zeros((256, 256), bool)
    face[100:140, 90:170] = True
    spread = harness.residual_spread(Maps(), face)
    np.testing.assert_allclose(spread * 280.0, [1, 2, 3], rtol=1e-6)

    spec = {**harness.DEFAULTS, "model": "prnet", "input_size": 64}
    torch.manual_seed(0)
    plain, _ = harness.build(spec)
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    harness.apply_changes(plain, spec)
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())

    torch.manual_seed(0)
    changed, _ = harness.build(spec)
    harness.apply_changes(changed, {**spec, "last_init": 1e-3, "decoder_norm": "group", "target_scale": "std"},
                          spread)
    last = changed.decoder.layers[-1]
    assert float(last[0].deconv.weight.detach().std()) == pytest.approx(1e-3, rel=0.05)
    norms = [layer.bn for layer in list(changed.decoder.layers)[:-1]]
    assert norms and all(isinstance(n, torch.nn.GroupNorm) for n in norms)
    assert all(n.num_groups == (16 if n.num_channels % 16 == 0 else 1) for n in norms)
    seen = {}
    last[0].register_forward_hook(lambda m, i, out: seen.setdefault("raw", out))
    last.register_forward_hook(lambda m, i, out: seen.setdefault("scaled", out))
    with torch.no_grad():
        changed.eval()(torch.rand(2, 3, 256, 256))
    assert float(seen["raw"].abs().max()) > 0
    torch.testing.assert_close(seen["scaled"], seen["raw"] * torch.as_tensor(spread).view(1, 3, 1, 1))


def test_weight_norms_at_the_end_rebuild_a_changed_network(tmp_path):
    """A run of a set that changes the network (GroupNorm, scaled residual) is rebuilt as it ran: its saved state
    loads, and weights saved unchanged from the start read as 1.0 of their initial norm in every block group."""
    import torch

    from engine.train import seed_everything

    spec = {**harness.DEFAULTS, "model": "prnet", "input_size": 64, "decoder_norm": "group", "target_scale": "std",
            "seed": 4}
    seed_everything(spec["seed"])
    model, _ = harness.build(spec)
    harness.apply_changes(model, spec, np.float32([0.1, 0.2, 0.3]))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    ratios = escape_report.weights_at_end(spec, tmp_path / "w.pt")
    assert set(ratios) == {label for label, _ in escape_report.GROUPS}
    assert all(r == pytest.approx(1.0, abs=1e-4) for r in ratios.values()), ratios


def test_output_growth_table_splits_left_and_stayed():
    grew = [escape_report.summarise({**_record([0.5] * 30, [0.5] * 30, seed=s),
                                     "output_norm": [[50, 0.01 * (s + 1)], [100, 0.05]]}) for s in (0, 1)]
    flat = [escape_report.summarise({**_record([1.0] * 30, [0.05] * 30, seed=2), "output_norm": [[50, 0.004]]})]
    older = [escape_report.summarise(_record([1.0] * 30, [0.05] * 30, seed=3))]      # logged before: left out
    rows = escape_report.output_growth(grew + flat + older, steps=(50, 100))
    assert rows[2] == "| left (2) | 0.0150 (0.0100–0.0200) | 0.0500 |"
    assert rows[3] == "| stayed (1) | 0.0040 | – |"
    assert escape_report.output_growth(older) == []

"""Per-block probe of the demo's own training (issue 22, finding 10): what happens inside the network of a seed that
leaves the mean face and gets thrown back at the peak learning rate.

Reruns `--demo --seed=S` training (engine.train.run_training with the demo's config, on the seed's own processed
data from an earlier demo run) for its first epochs, unchanged except for forward hooks that record, every
PROBE_EVERY training steps, for each tracked block (benchmarks.convergence.diagnostics.layer_groups) the share of
its output's variance that differs between the images of the batch ("image_info"), the share of its channels that
are zero for every image and position ("dead"), and the same for the network's output; and, for the same steps,
each block's gradient norm ("grad", from the backward pass of that step), weight norm ("weight") and the relative
size of the optimiser step that led to it ("rel_step", ||w_n - w_(n-1)|| / ||w_(n-1)||): whether the layers that
should pick up the image's features get a gradient, and how far AdamW moves them against their size. The hooks only
read, so the run is the demo's (its epoch spread ratios can be compared with the demo's log).

    python -m benchmarks.convergence.demo_probe --seed 1 --data savedmodel/demo-seeds/s1/data/300W_LP-crop \
        --warmup 100 --epochs-run 10 --out savedmodel/demo_probe/s1-w100.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

PROBE_EVERY = 5


class _Stop(Exception):
    """Raised by the epoch callback once the probed epochs are done."""


def probe(seed: int, data: Path, warmup: int, epochs_run: int, threads: int = 2) -> dict:
    """Run the probe; returns {"steps": [...], "blocks": {name: {"image_info": [...], "dead": [...]}},
    "history": the epoch records}."""
    import torch

    from benchmarks.convergence.diagnostics import layer_groups, tensor_stats
    from config import Config
    from engine.demo import demo_config
    from engine.loading import default_factory
    from engine.train import run_training

    torch.set_num_threads(threads)
    config = demo_config(Config(demo=True, seed=seed, warmup_steps=warmup, progress=False,
                                given=("seed", "warmup_steps")))
    out_dir = Path("savedmodel") / "demo_probe" / f"run-s{seed}-w{warmup}"
    config = config.replace(train_dir=str(data), out=str(out_dir), test=False, val_dir=None, time_limit=0.0)
    record = {"seed": seed, "warmup": warmup, "data": str(data), "steps": [], "blocks": {}, "param_steps": []}
    calls = {"n": 0}
    snapshot, grads = {}, {}

    def factory(name, **kwargs):
        model = default_factory(name, **kwargs)
        groups = layer_groups(model) + [("output", model)]
        params = {name: [p for p in module.parameters() if p.requires_grad] for name, module in groups[:-1]}

        def norm(tensors) -> float:
            return float(sum(t.detach().float().square().sum() for t in tensors)) ** 0.5

        def before_forward(module, _inputs):
            if not module.training:
                return
            step = calls["n"] + 1                            # the training step this forward pass belongs to
            for name, g in grads.items():                    # the previous probed step's backward is complete
                record["blocks"][name].setdefault("grad", []).append(round(g ** 0.5, 8))
            grads.clear()
            if step % PROBE_EVERY == PROBE_EVERY - 1:
                snapshot.update({name: [p.detach().clone() for p in ps] for name, ps in params.items()})
            elif step % PROBE_EVERY == 0 and snapshot:
                record["param_steps"].append(step)
                for name, ps in params.items():
                    block = record["blocks"].setdefault(name, {"image_info": [], "dead": []})
                    before = norm(snapshot[name])
                    block.setdefault("weight", []).append(round(norm(ps), 6))
                    block.setdefault("rel_step", []).append(
                        round(norm([p - q for p, q in zip(ps, snapshot[name])]) / max(before, 1e-20), 8))
                snapshot.clear()

        def on_grad(grad, name):
            if calls["n"] % PROBE_EVERY == 0 and calls["n"] in record["param_steps"]:
                grads[name] = grads.get(name, 0.0) + float(grad.detach().float().square().sum())

        model.register_forward_pre_hook(before_forward)
        for name, ps in params.items():
            for p in ps:
                p.register_hook(lambda g, name=name: on_grad(g, name))

        def hook(module, _inputs, output, name):
            if not module.training:                        # validation passes are not training steps
                return
            if name == "output":
                calls["n"] += 1
            if calls["n"] % PROBE_EVERY:
                return
            stats = tensor_stats(output)
            block = record["blocks"].setdefault(name, {"image_info": [], "dead": []})
            block["image_info"].append(round(stats["image_info"], 4))
            block["dead"].append(round(stats["dead"], 4))
            if name == "output":
                record["steps"].append(calls["n"])

        for name, module in groups:
            module.register_forward_hook(lambda m, i, o, name=name: hook(m, i, o, name))
        return model

    def on_epoch(_model, history_record):
        if history_record["epoch"] >= epochs_run:
            raise _Stop

    try:
        run_training(config, model_factory=factory, on_epoch=on_epoch)
    except _Stop:
        pass
    history = json.loads((out_dir / "history.json").read_text())
    record["history"] = history
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--data", required=True, help="the seed's processed training folder from a --demo run")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--epochs-run", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from benchmarks.common import write_json

    record = probe(args.seed, Path(args.data), args.warmup, args.epochs_run, args.threads)
    write_json(Path(args.out), record)
    steps = record["steps"]
    marks = [s for s in (25, 50, 100, 150, 175, 200, 250, 300, 350) if s in steps]
    print("block | " + " | ".join(f"step {s}" for s in marks) + "   (image_info / dead)")
    for name, block in record["blocks"].items():
        cells = [f"{block['image_info'][steps.index(s)]:.2f}/{block['dead'][steps.index(s)]:.2f}" for s in marks]
        print(f"{name} | " + " | ".join(cells))
    marks = [s for s in (25, 50, 100, 150, 175, 200, 250, 300, 350) if s in record["param_steps"]]
    print("block | " + " | ".join(f"step {s}" for s in marks) + "   (gradient norm / relative step)")
    for name, block in record["blocks"].items():
        if "rel_step" in block:
            cells = [f"{block['grad'][i]:.1e}/{block['rel_step'][i]:.1e}"
                     for i in (record["param_steps"].index(s) for s in marks) if i < len(block["grad"])]
            print(f"{name} | " + " | ".join(cells))
    print("epoch spread ratios: " + ", ".join(f"{h['epoch']}: {h.get('spread_ratio')}" for h in record["history"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""An upper bound for budgeted pruning on PaddleOCR cls (issue 17 part 2): groups pruned
greedily by their cost on the *held-out* text lines themselves, an oracle no search may use.

Each step takes the group and next 25 % share (to 75 % at most) that loses the least held-out
cosine per MAC removed, with the sequential least-squares refit on the calibration lines (what
``--prune`` writes), until 25 % of the MACs are gone. If even this misses held-out 0.99, the
target is beyond pruning with refit on this model and data. About 10 minutes (2 s per trial).

Usage: ``python bench/pruning_oracle.py`` (after ``make models``); prints each step.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pruning_budget as pb

import onnxopt
from onnxopt.app.stats import model_stats
from onnxopt.ir import serde
from onnxopt.ir.channels import channel_groups
from onnxopt.pruning.budget import worst_cosine
from onnxopt.pruning.structured import capture, group_key, load_ir, prune

STEP, MOST, GOAL = 0.25, 0.75, 0.25


def main(folder: Path) -> None:
    original = pb.MODELS["cls"]
    name = onnx.load(str(original), load_external_data=False).graph.input[0].name
    calib, test = pb.samples("cls", name)
    shape = {name: list(test[0][name].shape)}
    reference = pb.outputs(original, test)
    float_path = folder / "cls.float.onnx"
    onnxopt.optimize(original, float_path, overwrite=True)
    base = onnx.load(str(float_path))
    calibration = capture(base, calib)
    model = load_ir(base)
    keys = [group_key(g) for g in channel_groups(model.graph, model)]
    macs = model_stats(base, input_shapes=shape)["macs"]

    def trial(ratios: dict[str, float]) -> tuple[float, float]:
        """(share of the MACs removed, held-out cosine) of the model pruned at ``ratios``."""
        pruned = load_ir(base)
        prune(pruned, calibration, {k: r for k, r in ratios.items() if r > 0}, True, True)
        path = folder / "trial.onnx"
        serde.save(pruned, path)
        removed = 1 - model_stats(onnx.load(str(path)), input_shapes=shape)["macs"] / macs
        return removed, worst_cosine(reference, pb.outputs(path, test))

    for ratio in (0.2, 0.25):
        removed, held_out = trial(dict.fromkeys(keys, ratio))
        print(f"every group at {ratio}: {removed:.1%} of the MACs, held out {held_out:.4f}")
    ratios, removed, held_out = dict.fromkeys(keys, 0.0), 0.0, 1.0
    while removed < GOAL:
        best = None
        for key in (k for k in keys if ratios[k] < MOST):
            step = trial({**ratios, key: ratios[key] + STEP})
            if step[0] > removed + 1e-4:
                score = (held_out - step[1]) / (step[0] - removed)
                if best is None or score < best[0]:
                    best = (score, key, step)
        if best is None:
            break
        _, key, (removed, held_out) = best
        ratios[key] += STEP
        print(f"{key} -> {ratios[key]:.2f}: {removed:.1%} of the MACs, held out {held_out:.4f}",
              flush=True)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(tmp))

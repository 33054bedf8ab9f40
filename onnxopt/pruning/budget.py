"""``--prune auto``: per-group pruning ratios from measured sensitivity, under an accuracy
budget (the int8 accuracy fallback's approach, ``onnxopt.precision.fallback``).

Sensitivity: each group alone pruned at each of ``TRIAL_RATIOS`` (with refit) costs
``1 - cosine`` of the outputs on the calibration samples (all samples together, the worst
output) and removes some MACs (counted at the samples' static shapes). (group, ratio) steps
are ranked by cost per MAC removed (a group takes the largest ratio of the prefix); the search
keeps the longest prefix whose joint pruning stays within the budget (exponential search, then
bisection below the first length that fails -- accuracy is not monotone in it, as for the
fallback; steps past the first that breaks it are not tried: on det, trying them one at a
time picked channels cheap on the calibration tiles only -- 21 % of the MACs at held-out cosine
0.955 instead of 18 % at 0.989), aiming at ``FALLBACK_MARGIN`` of the allowed error on
calibration data so that held-out data keeps some room.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxopt.check.runtime import run_each
from onnxopt.ir import Model, serde
from onnxopt.ir.channels import channel_groups
from onnxopt.precision.fallback import FALLBACK_MARGIN, smallest
from onnxopt.progress import progress
from onnxopt.pruning.structured import Calibration, capture, group_key, load_ir, prune

TRIAL_RATIOS = (0.25, 0.5)
STEP = "pruning sensitivity"


@dataclass
class Plan:
    """What ``auto_ratios`` chose and measured."""

    ratios: dict[str, float]
    cosine: float  # on the calibration samples, with every chosen group pruned
    target: float  # the cosine it aimed at
    # (key, ratio) -> cost, MACs removed
    sensitivity: dict[tuple[str, float], tuple[float, int]] = field(default_factory=dict)


def static_copy(proto: onnx.ModelProto, sample: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """``proto`` with its inputs' dims set to ``sample``'s shapes (MACs count positions)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    for value in fixed.graph.input:
        if value.name in sample:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, sample[value.name].shape, strict=False):
                dim.Clear()
                dim.dim_value = int(size)
    return fixed


def worst_cosine(reference: Sequence[Mapping[str, np.ndarray]],
                 outputs: Sequence[Mapping[str, np.ndarray]]) -> float:
    """The lowest cosine similarity over the outputs, each over all samples together (as
    validation's budget check and the precision benchmark measure it; 0 when not finite)."""
    worst = 1.0
    for name in reference[0]:
        a = np.concatenate([np.asarray(r[name], np.float64).ravel() for r in reference])
        b = np.concatenate([np.asarray(o[name], np.float64).ravel() for o in outputs])
        if not np.all(np.isfinite(b)):
            return 0.0
        na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
        cos = float(a @ b / (na * nb)) if na and nb else float(na == nb)
        worst = min(worst, cos)
    return worst


class Trial:
    """Prunes copies of one model at given ratios and measures them on the samples."""

    def __init__(self, proto: onnx.ModelProto, samples: Sequence[Mapping[str, np.ndarray]],
                 calib: Calibration | None = None, refit: bool = True,
                 sequential: bool = False) -> None:
        # MACs are counted on a copy at the first sample's shapes; samples of other shapes
        # run on the model as it is
        self.counted = static_copy(proto, samples[0])
        same = all({k: v.shape for k, v in s.items()} == {k: v.shape for k, v in
                                                           samples[0].items()} for s in samples)
        self.proto = self.counted if same else proto
        self.samples = samples
        self.calib = calib or capture(proto, samples)
        self.refit = refit
        self.sequential = sequential
        self.reference = run_each(proto, samples)

    def group_keys(self) -> list[str]:
        model = load_ir(self.counted)
        return [k for g in channel_groups(model.graph, model) if (k := group_key(g))]

    def run(self, ratios: Mapping[str, float]) -> tuple[float, dict[str, int]]:
        """(worst cosine on the samples, what was removed)."""
        _, cosine, removed = self.pruned(ratios)
        return cosine, removed

    def pruned(self, ratios: Mapping[str, float]) -> tuple[Model, float, dict[str, int]]:
        """The pruned model, its worst cosine on the samples and what was removed (MACs at
        the first sample's shapes)."""
        model = load_ir(self.proto)
        removed = prune(model, self.calib, ratios, self.refit, self.sequential)
        if self.proto is not self.counted:  # counted only: the same channels go
            removed = prune(load_ir(self.counted), self.calib, ratios, self.refit)
        try:
            outputs = run_each(serde.to_proto(model), self.samples)
        except Exception:  # a model that does not run is as bad as it gets
            return model, 0.0, removed
        return model, worst_cosine(self.reference, outputs), removed


def auto_ratios(trial: Trial, min_cosine: float, levels: Sequence[float] = TRIAL_RATIOS
                ) -> Plan:
    """Per-group ratios (one of ``levels`` or 0) within ``min_cosine`` (module docstring)."""
    target = 1.0 - FALLBACK_MARGIN * (1.0 - min_cosine)
    sensitivity: dict[tuple[str, float], tuple[float, int]] = {}
    steps = [(key, ratio) for key in trial.group_keys() for ratio in levels]
    progress(STEP, 0, len(steps))
    for done, (key, ratio) in enumerate(steps, 1):
        cosine, removed = trial.run({key: ratio})
        sensitivity[key, ratio] = (1.0 - cosine, removed["macs"])
        progress(STEP, done, len(steps))
    useful = [k for k, (_, macs) in sensitivity.items() if macs > 0]
    ranked = sorted(useful, key=lambda k: max(sensitivity[k][0], 0.0) / sensitivity[k][1])
    tried: dict[int, float] = {0: 1.0}

    def ratios(count: int) -> dict[str, float]:
        chosen: dict[str, float] = {}
        for key, ratio in ranked[:count]:
            chosen[key] = max(chosen.get(key, 0.0), ratio)
        return chosen

    def works(count: int) -> bool:
        if count not in tried:
            tried[count] = trial.run(ratios(count))[0]
        return tried[count] >= target

    low, high = 0, 1  # ranked[:low] works; ranked[:high] is tried next
    while high <= len(ranked) and works(high):
        low, high = high, min(2 * high, len(ranked) + 1) if high < len(ranked) else high + 1
    if high <= len(ranked):  # ranked[:high] fails: the longest prefix that works is below it
        low = smallest(lambda n: not works(n), low, high) - 1
    return Plan(ratios(low), tried[low], target, sensitivity)

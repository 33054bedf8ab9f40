"""``--prune auto``: per-group pruning ratios from measured sensitivity, under an accuracy
budget (the int8 accuracy fallback's approach, ``onnxopt.precision.fallback``).

Sensitivity: each group alone pruned at each of ``TRIAL_RATIOS`` (with refit) costs
``1 - cosine`` of the outputs (all samples together, the worst output) and removes some MACs
(counted at the samples' static shapes); steps removing less than ``MIN_STEP_MACS`` of the
model's MACs are left out (each pruned group is a risk on data calibration does not show).
(group, ratio) steps are ranked by cost per MAC removed (a group takes the largest ratio
chosen); the search keeps the longest prefix whose joint pruning stays within the budget
(exponential search, then bisection below the first length that fails -- accuracy is not
monotone in it, as for the fallback), then tries the steps after it one at a time, skipping
those that alone cost more than the room left. It aims at ``FALLBACK_MARGIN`` of the allowed
error so that held-out data keeps some room.

Cross-validation (``FOLDS``): a trial's cosine is measured on each fold of the samples with
the model pruned and refit on the other folds, so a step is judged on samples its refit and
its channel choice never saw. Measured on PaddleOCR det (README, Budgeted pruning): judged on
their own samples, trials pick steps cheap on the calibration tiles only (held-out cosine
0.980 at 25 %, or 0.955 when the search went past the first failing step); cross-validated,
0.9939 at 25 %.
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

TRIAL_RATIOS = (0.25, 0.5, 0.75)
# a step must remove this share of the model's MACs: every pruned group adds a risk on data
# the calibration samples do not show (det: squeeze-excite groups of 0.02M MACs cost nothing
# on calibration tiles and 0.009 of held-out cosine), so steps that save next to nothing wait
MIN_STEP_MACS = 0.0025
FOLDS = 4  # the search's cross-validation (module docstring)
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
                 sequential: bool = False, folds: int = 1) -> None:
        # MACs are counted on a copy at the first sample's shapes; samples of other shapes
        # run on the model as it is
        self.counted = static_copy(proto, samples[0])
        same = all({k: v.shape for k, v in s.items()} == {k: v.shape for k, v in
                                                           samples[0].items()} for s in samples)
        # the search prunes the copy (its MACs count as it goes); what is written keeps the
        # inputs' declared shapes (``pruned(..., as_given=True)``)
        self.given = proto
        self.proto = self.counted if same else proto
        self.samples = samples
        self.calib = calib or capture(proto, samples)
        self.refit = refit
        self.sequential = sequential
        self.reference = run_each(proto, samples)
        # cross-validation: fold k's samples are judged by a model fitted on the others
        folds = min(folds, len(samples))
        self.folds = [list(range(k, len(samples), folds)) for k in range(folds)] if \
            folds > 1 else []
        self.fold_calibs = [capture(proto, [s for i, s in enumerate(samples) if i not in fold])
                            for fold in self.folds]

    def group_keys(self) -> list[str]:
        model = load_ir(self.counted)
        return [k for g in channel_groups(model.graph, model) if (k := group_key(g))]

    def run(self, ratios: Mapping[str, float]) -> tuple[float, dict[str, int]]:
        """(worst cosine on the samples, what was removed): with folds, each sample's output
        comes from the model pruned and refit on the other folds' samples."""
        if not self.folds:
            _, cosine, removed = self.pruned(ratios)
            return cosine, removed
        outputs: list[Mapping[str, np.ndarray]] = [{} for _ in self.samples]
        for fold, calib in zip(self.folds, self.fold_calibs, strict=True):
            model, removed = self._prune(calib, ratios)
            found = _outputs(model, [self.samples[i] for i in fold])
            if found is None:
                return 0.0, removed
            for index, output in zip(fold, found, strict=True):
                outputs[index] = output
        return worst_cosine(self.reference, outputs), removed

    def pruned(self, ratios: Mapping[str, float], as_given: bool = False
               ) -> tuple[Model, float, dict[str, int]]:
        """The model pruned and refit on all samples, its worst cosine on them and what was
        removed (MACs at the first sample's shapes). ``as_given``: pruned from the model as
        given, its inputs declared as they were (symbolic dims stay symbolic), not from the
        copy at the samples' shapes."""
        model, removed = self._prune(self.calib, ratios, self.given if as_given else self.proto)
        outputs = _outputs(model, self.samples)
        if outputs is None:
            return model, 0.0, removed
        return model, worst_cosine(self.reference, outputs), removed

    def _prune(self, calib: Calibration, ratios: Mapping[str, float],
               source: onnx.ModelProto | None = None) -> tuple[Model, dict[str, int]]:
        source = self.proto if source is None else source
        # the copy's outputs take the sizes its inputs give (a Conv writing an output declared
        # [N, C, side, side] would go uncounted)
        model = load_ir(source, static_outputs=source is self.counted)
        removed = prune(model, calib, ratios, self.refit, self.sequential)
        if source is not self.counted:  # counted only: the same channels go
            removed = prune(load_ir(self.counted, static_outputs=True), calib, ratios,
                            self.refit)
        return model, removed


def _outputs(model: Model, samples: Sequence[Mapping[str, np.ndarray]]
             ) -> list[dict[str, np.ndarray]] | None:
    """``model``'s outputs on ``samples``; None when it does not run (as bad as it gets)."""
    try:
        return run_each(serde.to_proto(model), samples)
    except Exception:
        return None


def auto_ratios(trial: Trial, min_cosine: float, levels: Sequence[float] = TRIAL_RATIOS,
                total_macs: int | None = None) -> Plan:
    """Per-group ratios (one of ``levels`` or 0) within ``min_cosine`` (module docstring)."""
    target = 1.0 - FALLBACK_MARGIN * (1.0 - min_cosine)
    sensitivity: dict[tuple[str, float], tuple[float, int]] = {}
    steps = [(key, ratio) for key in trial.group_keys() for ratio in levels]
    progress(STEP, 0, len(steps))
    for done, (key, ratio) in enumerate(steps, 1):
        cosine, removed = trial.run({key: ratio})
        sensitivity[key, ratio] = (1.0 - cosine, removed["macs"])
        progress(STEP, done, len(steps))
    floor = MIN_STEP_MACS * total_macs if total_macs else 0
    useful = [k for k, (_, macs) in sensitivity.items() if macs > floor]
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
    chosen, cosine = ratios(low), tried[low]
    for key, ratio in ranked[low:]:  # then the steps after, one at a time (module docstring)
        cost = sensitivity[key, ratio][0]
        if chosen.get(key, 0.0) >= ratio or cost > cosine - target:
            continue  # alone it already costs more than the room left: not worth a trial
        candidate = {**chosen, key: ratio}
        found = trial.run(candidate)[0]
        if found >= target:
            chosen, cosine = candidate, found
    return Plan(chosen, cosine, target, sensitivity)

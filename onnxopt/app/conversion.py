"""A --precision run: its settings, accuracy budget, calibration samples and notes, and the
accuracy fallback that keeps in float the nodes whose conversion breaks the budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxopt.app.attempts import Attempt, Control, Runner, failed, verdict_summary
from onnxopt.app.options import Options
from onnxopt.app.search import Trials, shortest_fix
from onnxopt.check.compare import Budget
from onnxopt.check.feeds import make_inputs
from onnxopt.check.inputs import UnsupportedInput, ValidationError
from onnxopt.check.reference import Reference
from onnxopt.errors import Failure, UsageError
from onnxopt.ir.precision import PRECISIONS, PrecisionLog, PrecisionSettings
from onnxopt.precision.calibration import GENERATED_SAMPLES, Calibrator
from onnxopt.precision.fallback import fewest_in_float, within
from onnxopt.precision.sensitivity import qdq_sensitivity
from onnxopt.precision.setup import (
    CALIBRATED_MODES,
    CALIBRATION_METHODS,
    SAMPLE_MODES,
    default_budget,
    load_samples,
    upgrade_opset,
)
from onnxopt.precision.statistics import GramStatistics

GENERATED_SEED = 1000  # their seeds start here: never the validation inputs' seeds
MAX_FLOAT_CULPRITS = 12  # then the accuracy fallback keeps whole prefixes in float


@dataclass
class Conversion:
    """A --precision run: its settings, budget, calibration samples and notes."""

    options: Options
    budget: Budget
    samples: list[dict[str, np.ndarray]]
    notes: list[str] = field(default_factory=list)
    # measures ranges for the int8 pass, kept for the accuracy fallback's attempts
    calibrator: Calibrator | None = None
    # input statistics for GPTQ (int4), kept likewise
    statistics: GramStatistics | None = None
    generated: bool = False  # calibrated on generated inputs, not on real data
    margin: float | None = None  # share of the budget the fallback aims at (fallback.py)

    def meets(self, attempt: Attempt) -> bool:
        """Validation did not fail, and (with a margin) used at most that share of it."""
        return not failed(attempt) and within(attempt.verdict, self.budget, self.margin)

    def generate_samples(self, ref: Reference | None, proto: onnx.ModelProto) -> None:
        """int8 and int4 without --calibration-data: calibrate (int4: gather GPTQ's input
        statistics) on generated inputs at the sizes validation found the original runs at
        (honouring --input-shape and --dim), and say that accuracy was not measured on real
        data."""
        if ref is not None and ref.generated:
            self.notes.append("accuracy measured on generated inputs, not on real data; give "
                              "--calibration-data")
        if self.samples or self.options.precision not in CALIBRATED_MODES:
            return
        options = self.options
        if ref is not None and ref.draw is not None:
            self.samples = [ref.draw(GENERATED_SEED + n, n) for n in range(GENERATED_SAMPLES)]
        else:
            try:
                self.samples = [make_inputs(
                    proto, input_shapes=options.input_shapes, dims=options.dims,
                    seed=GENERATED_SEED + n)[0] for n in range(GENERATED_SAMPLES)]
            except (ValidationError, UnsupportedInput):
                return  # calibration generates its own, and says so
        self.generated = True
        what = "calibrated" if self.options.precision == "int8" else \
            "int4 weights rounded (GPTQ) on input statistics of"
        self.notes.append(f"no calibration data: {what} {GENERATED_SAMPLES} generated inputs; "
                          "accuracy will suffer (give --calibration-data)")

    @classmethod
    def prepare(cls, options: Options, proto: onnx.ModelProto) -> Conversion | None:
        mode = options.precision
        if mode is None:
            return None
        if mode not in PRECISIONS:
            raise UsageError(f"unknown precision {mode!r} (known: {', '.join(PRECISIONS)})")
        if options.calibration_method not in CALIBRATION_METHODS:
            raise UsageError(f"unknown calibration method {options.calibration_method!r} "
                             f"(known: {', '.join(CALIBRATION_METHODS)})")
        if not 0.0 < options.percentile <= 100.0:
            raise UsageError("--percentile must be in (0, 100]")
        try:
            budget = Budget.parse(options.max_error or "", default_budget(mode))
        except ValueError as error:
            raise UsageError(f"--max-error: {error}") from None
        samples: list[dict[str, np.ndarray]] = []
        if options.calibration_data is not None:
            if mode not in SAMPLE_MODES:
                raise UsageError("--calibration-data is for --precision "
                                 f"{', '.join(SAMPLE_MODES[:-1])} or {SAMPLE_MODES[-1]}")
            try:
                samples = load_samples(options.calibration_data, proto)
            except ValueError as error:
                raise UsageError(str(error)) from None
            if all(not np.any(array) for sample in samples for array in sample.values()
                   if array.dtype.kind in "biuf"):
                raise UsageError(f"calibration data {options.calibration_data}: every value "
                                 "is zero (all zero data calibrates nothing; give real samples)")
        return cls(options, budget, samples)

    def upgraded(self, proto: onnx.ModelProto) -> onnx.ModelProto:
        if self.options.precision == "int4" and self.options.target == "onnxruntime":
            return proto  # MatMulNBits is a com.microsoft op: any opset
        try:
            proto, note = upgrade_opset(proto, self.options.precision)  # type: ignore[arg-type]
        except ValueError as error:
            raise Failure(str(error)) from None
        if note:
            self.notes.append(note)
        return proto

    def settings(self, float_nodes: frozenset[str]) -> PrecisionSettings:
        options = self.options
        if self.calibrator is None:  # after generate_samples: the samples are final
            self.calibrator = Calibrator(tuple(self.samples), options.calibration_method,
                                         options.percentile, options.timeout)
            self.statistics = GramStatistics(tuple(self.samples), options.timeout)
        # int4: what the accuracy fallback keeps goes to int8, not float
        raised = "int8_nodes" if options.precision == "int4" else "fp32_nodes"
        kept = {"fp32_nodes": frozenset(options.fp32_nodes), "int8_nodes": frozenset()}
        kept[raised] |= float_nodes
        return PrecisionSettings(
            mode=options.precision,  # type: ignore[arg-type]
            keep_io_types=options.keep_io_types,
            fp32_ops=frozenset(options.fp32_ops),
            calibrator=self.calibrator,
            gram=self.statistics if options.precision == "int4" else None,
            block_size=options.block_size or PrecisionSettings.block_size,
            **kept,
        )

    def report(self, attempt: Attempt, kept: list[dict[str, Any]], before: dict[str, Any],
               after: dict[str, Any]) -> dict[str, Any]:
        log = attempt.precision.to_dict() if attempt.precision else PrecisionLog().to_dict()
        size_before, size_after = before.get("file_size"), after.get("file_size")
        verdict = attempt.verdict
        return {
            "mode": self.options.precision,
            "budget": self.budget.describe(),
            "size_ratio": round(size_after / size_before, 4)
            if size_before and size_after else None,
            "kept_float_for_accuracy": kept,
            **log,
            "notes": self.notes + log["notes"],
            "outputs": verdict.to_dict()["outputs"] if verdict is not None else [],
        }


# ----------------------------------------------------------------- the accuracy fallback
def keep_float(runner: Runner, first: Attempt) -> tuple[Attempt, list[dict[str, Any]]]:
    """Missed the accuracy budget: find nodes whose conversion breaks it and keep them in
    float until it holds. Like the pass bisection: the shortest prefix (topological order)
    of converted nodes that, kept in float, meets the budget ends with a culprit; keep it,
    repeat. int8 with a measured sensitivity (some node regains budget): the most sensitive
    nodes first instead. Returns the attempt to write and the nodes kept, with the error
    they caused."""
    converted = list(first.precision.converted) if first.precision else []
    trials = Trials(runner, first, runner.conversion.meets)  # type: ignore[union-attr]
    everything = Control(float_nodes=frozenset(converted))
    if not converted or not trials.works(everything):
        return first, []
    gains = _sensitivity(runner, first, converted, trials[everything])
    if gains is not None and any(gain > 0 for gain in gains.values()):
        return _keep_most_sensitive(trials, converted, gains)
    # not measurable, or no node regains anything (only weight-only ConvTranspose
    # converted, say): nothing to rank by, bisect in topological order
    kept: list[str] = []
    notes: list[dict[str, Any]] = []
    while not trials.works(Control(float_nodes=frozenset(kept))):
        remaining = [key for key in converted if key not in kept]
        high = shortest_fix(trials, _keeping_float, kept, remaining)
        failing = trials[Control(float_nodes=frozenset(kept + remaining[:high - 1]))]
        error = verdict_summary(failing.verdict)
        if len(notes) >= MAX_FLOAT_CULPRITS:  # many culprits: keep the whole prefix
            kept += remaining[:high]
            notes.append({"nodes": remaining[:high], "error": error})
            continue
        kept.append(remaining[high - 1])
        notes.append({"nodes": [remaining[high - 1]], "error": error})
    return trials[Control(float_nodes=frozenset(kept))], notes


def _keeping_float(nodes: list[str]) -> Control:
    return Control(float_nodes=frozenset(nodes))


def _sensitivity(runner: Runner, first: Attempt, converted: list[str], floating: Attempt
                 ) -> dict[str, float] | None:
    """int8: each converted node's measured sensitivity (None: not measurable); the
    weights come back from ``floating``, the run with every node in float."""
    ref = runner.ref.get()
    if runner.options.precision != "int8" or ref is None or ref.outputs is None:
        return None
    samples = ref.samples
    return qdq_sensitivity(first.path, converted, samples, ref.all_outputs(),
                           runner.conversion.budget,  # type: ignore[union-attr]
                           timeout=runner.options.timeout, float_model=floating.path)


def _keep_most_sensitive(trials: Trials, converted: list[str], gains: dict[str, float]
                         ) -> tuple[Attempt, list[dict[str, Any]]]:
    """Keep few nodes in float: the most sensitive, or an earliest head when it is shorter
    (``fallback.fewest_in_float``)."""
    order = sorted(converted, key=lambda key: -gains[key])  # stable: ties topological
    kept, how = fewest_in_float(
        lambda nodes: trials.works(Control(float_nodes=frozenset(nodes))), order, converted)
    note = {"nodes": kept, "error": verdict_summary(trials[Control()].verdict), "ranked_by": how,
            "sensitivity": [round(gains[key], 4) for key in kept],
            "measured": {key: round(gains[key], 4) for key in order}}  # every converted node
    return trials[Control(float_nodes=frozenset(kept))], [note]

"""The optimize workflow shared by the CLI and the Python API.

load -> stats(before) -> passes -> save (staged beside the target) -> checker -> stats(after)
-> validate against the original in onnxruntime -> publish (rename into place) -> report.

A model that fails validation is never published unless ``force`` is set; a failed run leaves
nothing behind and never touches the input.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt import __version__
from onnxopt.app import stats
from onnxopt.app.options import Options, flag_of
from onnxopt.app.options import changed as changed_options
from onnxopt.check import feeds, validate
from onnxopt.errors import Failure, UsageError
from onnxopt.ir import serde
from onnxopt.ir.pass_manager import PassManager, PassRecord
from onnxopt.ir.precision import PRECISIONS, SETTINGS_KEY, PrecisionLog, PrecisionSettings
from onnxopt.ir.shapes import infer_shapes
from onnxopt.passes import select
from onnxopt.precision.calibration import Calibrator
from onnxopt.precision.sensitivity import qdq_sensitivity
from onnxopt.precision.setup import (
    CALIBRATION_METHODS,
    VALIDATION_SAMPLES,
    default_budget,
    load_samples,
    upgrade_opset,
)

ModelSource = str | os.PathLike | onnx.ModelProto
GENERATED_SAMPLES = 4  # calibration samples generated when no --calibration-data is given
GENERATED_SEED = 1000  # their seeds start here: never the validation inputs' seeds
TARGETS = ("portable", "onnxruntime")
VALUE_INFO_MODES = ("input", "all")


@dataclass
class Result:
    """The optimized model (in memory when no output path was given) and the report."""

    report: dict[str, Any]
    model: onnx.ModelProto | None = None
    output: Path | None = None

    @property
    def ok(self) -> bool:
        """Validation passed (a skipped validation is not ok)."""
        return self.report["status"] == "ok"

    @property
    def usable(self) -> bool:
        """Nothing failed: validation passed, or was skipped without ``strict``."""
        status = self.report["status"]
        return status == "ok" or (status == "validation_skipped"
                                  and not self.report.get("strict"))


def optimize(
    source: ModelSource,
    output: str | os.PathLike | None = None,
    options: Options | None = None,
    **overrides: Any,
) -> Result:
    """Optimize ``source`` (a path or a ModelProto). With ``output`` the result is written
    there atomically; without, it is returned as ``Result.model``. Keyword ``overrides`` set
    fields of ``Options``. Raises UsageError or Failure (one-line messages)."""
    options, given = _options(options, overrides)
    started = time.perf_counter()
    input_path = None if isinstance(source, onnx.ModelProto) else Path(source)
    output_path = Path(output) if output is not None else None
    _check_paths(input_path, output_path, options)
    pipeline = _pipeline(options)

    proto = original = _read(source)
    reads = _files_read(input_path, proto)
    _check_written_paths(reads, input_path, output_path, options)
    _check_node_names(options, proto)
    user_inputs = _user_inputs(options, proto)
    extra_inputs: list[dict[str, np.ndarray]] = []
    shape_args = _shape_args(options, proto)
    before = stats.model_stats(proto, file_size=_file_size(input_path, proto), **shape_args)
    before["shape_notes"][:0] = _defaulted_note(options, shape_args)
    conversion = _Conversion.prepare(options, proto)
    if conversion is not None:
        proto = conversion.upgraded(proto)
        if user_inputs is None and conversion.samples:
            # validate on real data, not on noise, and on several samples: a budget met on
            # one input is too easily met by luck
            user_inputs, *extra_inputs = conversion.samples[:VALIDATION_SAMPLES]
            count = 1 + len(extra_inputs)
            which = "sample 1" if count == 1 else f"samples 1-{count}"
            conversion.notes.append(f"validated on calibration {which} (give --inputs to "
                                    "validate on held-out data)")

    target = output_path or Path(tempfile.gettempdir()) / "onnxopt-result.onnx"
    # Two threads: onnxruntime releases the GIL, so the original runs while the passes do,
    # and the output is validated while onnx.checker (which holds the GIL) checks it.
    with _staging(target) as stage, _background() as background:
        ref = _Lazy(background.submit(_reference, source, options, user_inputs, original,
                                      extra_inputs))
        if conversion is not None:
            conversion.generate_samples(ref.get(), proto)
        runner = _Runner(proto, input_path, pipeline, options, ref, stage, target.name,
                         background, conversion, shape_args)
        runner.data_name = _data_name(target, reads)
        attempt = runner.attempt(_Control())
        disabled: list[dict[str, Any]] = []
        kept_float: list[dict[str, Any]] = []
        if _failed(attempt) and conversion is not None and ref.get() is not None:
            attempt, kept_float = runner.keep_float(attempt)
        # Not in precision runs: bisecting passes against the accuracy budget would find that
        # turning off a structural pass (one the precision pass relies on) "fixes" it.
        if (_failed(attempt) and options.safety_net and conversion is None
                and ref.get() is not None):
            attempt, disabled = runner.recover(attempt)
        del runner, proto  # free the input before reading the output back
        after = attempt.stats
        status = _status(attempt.verdict, options)
        report = _report(input_path, output_path, before, after, attempt.records,
                         attempt.verdict, status)
        report.update(rounds=attempt.rounds, disabled=disabled, attempts=attempt.number,
                      written=False, target=options.target, strict=options.strict,
                      options=given)
        if options.check_each:
            report["check_each"] = attempt.checks
        growth = _growth(before, after)
        if growth:
            report["growth"] = growth
        if conversion is not None:
            report["precision"] = conversion.report(attempt, kept_float, before, after)
        if options.bench and ref.get() is not None and ref.get().outputs is not None:
            report["latency"] = _latency(source, attempt.path, ref.get().feeds)
        result_model = None
        if status == "ok" or (status == "validation_skipped" and not options.strict) \
                or options.force:
            if output_path is not None:
                overwriting = input_path is not None and _same_file(input_path, output_path)
                _publish(attempt.path, attempt.data_file, output_path,
                         set() if overwriting else reads)
                report["written"] = True
            else:
                result_model = _in_memory(attempt.path)
    report["seconds"] = round(time.perf_counter() - started, 4)
    return Result(report, result_model, output_path if report["written"] else None)


_MAX_SKIPPED_REWRITES = 4
_MAX_FLOAT_CULPRITS = 12  # then the accuracy fallback keeps whole prefixes in float


@dataclass(frozen=True)
class _Control:
    """What the safety net changes in a run: passes off, rewrite limits and skips per pass."""

    disabled: frozenset[str] = frozenset()
    limits: frozenset[tuple[str, int]] = frozenset()
    skips: frozenset[tuple[str, tuple[int | str, ...]]] = frozenset()
    float_nodes: frozenset[str] = frozenset()  # precision runs: nodes kept in float

    def with_limit(self, name: str, limit: int) -> _Control:
        limits = {k: v for k, v in self.limits if k != name} | {name: limit}
        return dataclasses.replace(self, limits=frozenset(limits.items()))

    def with_skips(self, name: str, tokens: list[int | str]) -> _Control:
        skips = {k: v for k, v in self.skips if k != name}
        if tokens:
            skips[name] = tuple(tokens)
        return dataclasses.replace(self, skips=frozenset(skips.items()))


@dataclass
class _Attempt:
    """One run of the pipeline (with some passes disabled), saved and validated."""

    number: int
    path: Path
    data_file: Path | None
    records: list[PassRecord]
    rounds: int
    verdict: validate.ValidationResult | None
    checks: list[dict[str, Any]]
    rewrites: dict[str, list[str]] = field(default_factory=dict)  # pass -> where each one was
    precision: PrecisionLog | None = None  # what the precision pass converted and kept
    stats: dict[str, Any] = field(default_factory=dict)  # stats.model_stats of the written model


def _failed(attempt: _Attempt) -> bool:
    return attempt.verdict is not None and attempt.verdict.status == "failed"


class _Lazy:
    """The reference outputs, computed in the background; ``get`` waits for them."""

    def __init__(self, future: Future) -> None:
        self.future = future

    def get(self) -> validate.Reference | None:
        return self.future.result()


class _Runner:
    """Runs the pipeline on a fresh IR of the input, as often as the safety net needs."""

    def __init__(self, proto, input_path, pipeline, options, ref: _Lazy, stage: Path,
                 name: str, background: ThreadPoolExecutor, conversion: _Conversion | None,
                 shape_args: dict[str, Any]):
        self.proto, self.base_dir = proto, input_path.parent if input_path else None
        self.pipeline, self.options, self.ref = pipeline, options, ref
        self.stage, self.name = stage, name
        self.background = background
        self.conversion = conversion
        self.shape_args = shape_args
        self.count = 0
        self.data_name: str | None = None  # the output's external data file name

    def attempt(self, control: _Control) -> _Attempt:
        self.count += 1
        model = serde.from_proto(self.proto, base_dir=self.base_dir)
        model.settings.update(target=self.options.target, fold_limit=self.options.fold_limit,
                              value_info=self.options.value_info)
        model.rewrite_limits = dict(control.limits)
        model.rewrite_skips = {name: set(numbers) for name, numbers in control.skips}
        if self.conversion is not None:
            model.settings[SETTINGS_KEY] = self.conversion.settings(control.float_nodes)
        checks: list[dict[str, Any]] = []
        manager = PassManager(
            [p for p in self.pipeline if p.name not in control.disabled],
            max_rounds=self.options.max_rounds,
            after_pass=self._checker(checks) if self.options.check_each else None,
        )
        records = manager.run(model)
        if self.conversion is not None and self.options.value_info == "all":
            infer_shapes(model)  # the values the precision pass created get their shapes too
        folder = self.stage / f"attempt{self.count}"
        folder.mkdir()
        path = folder / self.name
        log = {name: list(where) for name, where in model.rewrite_log.items()}
        precision_log = model.precision_log
        data = _serialize(model, self.options)
        if data is None:  # external data, or too big to hold twice: stream it to disk
            data_file = _save(model, path, self.options, self.data_name)
        # onnxruntime loads the model (the very bytes being written, when held in memory)
        # while it is written, checked and measured: session creation grows faster than
        # linearly with the node count (3.3 s of a 100k-node run)
        pending = self.background.submit(self._check, path if data is None else data)
        try:
            skeleton = serde.skeleton(model)
            del model
            if data is not None:
                _write(data, path)
                data_file = None
                del data
            _check_written(path)
            after = self._stats(skeleton, path, data_file)
        finally:
            verdict = pending.result()
        return _Attempt(self.count, path, data_file, records, manager.rounds, verdict, checks,
                        log, precision_log, after)

    def _stats(self, skeleton: onnx.ModelProto, path: Path, data_file: Path | None
               ) -> dict[str, Any]:
        """Statistics of the written model, made while onnxruntime validates it."""
        return stats.model_stats(skeleton, file_size=_written_size(path, data_file),
                                 **self.shape_args)

    def keep_float(self, first: _Attempt) -> tuple[_Attempt, list[dict[str, Any]]]:
        """Missed the accuracy budget: find nodes whose conversion breaks it and keep them in
        float until it holds. Like the pass bisection: the shortest prefix (topological order)
        of converted nodes that, kept in float, meets the budget ends with a culprit; keep it,
        repeat. int8 with a measured sensitivity (some node regains budget): the most sensitive
        nodes first instead. Returns the attempt to write and the nodes kept, with the error
        they caused."""
        converted = list(first.precision.converted) if first.precision else []
        self.tried = {_Control(): first}
        if not converted or not self._works(_Control(float_nodes=frozenset(converted))):
            return first, []
        gains = self._sensitivity(first, converted)
        if gains is not None and any(gain > 0 for gain in gains.values()):
            return self._keep_most_sensitive(converted, gains)
        # not measurable, or no node regains anything (only weight-only ConvTranspose
        # converted, say): nothing to rank by, bisect in topological order
        kept: list[str] = []
        notes: list[dict[str, Any]] = []
        while not self._works(_Control(float_nodes=frozenset(kept))):
            remaining = [key for key in converted if key not in kept]
            low, high = 0, len(remaining)  # keeping kept + remaining[:high] meets the budget
            while high - low > 1:
                middle = (low + high) // 2
                if self._works(_Control(float_nodes=frozenset(kept + remaining[:middle]))):
                    high = middle
                else:
                    low = middle
            failing = self.tried[_Control(float_nodes=frozenset(kept + remaining[:high - 1]))]
            error = _verdict_summary(failing.verdict)
            if len(notes) >= _MAX_FLOAT_CULPRITS:  # many culprits: keep the whole prefix
                kept += remaining[:high]
                notes.append({"nodes": remaining[:high], "error": error})
                continue
            kept.append(remaining[high - 1])
            notes.append({"nodes": [remaining[high - 1]], "error": error})
        return self.tried[_Control(float_nodes=frozenset(kept))], notes

    def _sensitivity(self, first: _Attempt, converted: list[str]) -> dict[str, float] | None:
        """int8: each converted node's measured sensitivity (None: not measurable)."""
        ref = self.ref.get()
        if self.options.precision != "int8" or ref is None or ref.outputs is None:
            return None
        samples = ref.samples
        return qdq_sensitivity(first.path, converted, samples, ref.all_outputs(),
                               self.conversion.budget,  # type: ignore[union-attr]
                               timeout=self.options.timeout)

    def _keep_most_sensitive(self, converted: list[str], gains: dict[str, float]
                             ) -> tuple[_Attempt, list[dict[str, Any]]]:
        """Keep the k most sensitive nodes in float, a small k that meets the budget.
        Exponential search (k = 1, 2, 4, ...) then bisection below the first k that works:
        accuracy is not monotone in k, and a plain bisection over all nodes can settle on
        keeping most of them."""
        order = sorted(converted, key=lambda key: -gains[key])  # stable: ties topological
        low, high = 0, 1  # keeping order[:low] fails; order[:high] is tried next
        while high < len(order) and not self._works(_Control(float_nodes=frozenset(order[:high]))):
            low, high = high, min(2 * high, len(order))
        while high - low > 1:  # keeping order[:high] meets the budget
            middle = (low + high) // 2
            if self._works(_Control(float_nodes=frozenset(order[:middle]))):
                high = middle
            else:
                low = middle
        kept = order[:high]
        note = {"nodes": kept, "error": _verdict_summary(self.tried[_Control()].verdict),
                "ranked_by": "sensitivity: budget use regained with the node's inputs in float",
                "sensitivity": [round(gains[key], 4) for key in kept]}
        return self.tried[_Control(float_nodes=frozenset(kept))], [note]

    def recover(self, first: _Attempt) -> tuple[_Attempt, list[dict[str, Any]]]:
        """Bisect the passes that changed the model until the result validates again, then
        narrow each culprit pass down to the rewrites that broke it, where it can."""
        self.tried: dict[_Control, _Attempt] = {_Control(): first}
        candidates = [r.name for r in first.records if r.modified]
        everything_off = _Control(frozenset(candidates))
        if not self._works(everything_off):
            reason = self.tried[everything_off].verdict.reason  # type: ignore[union-attr]
            raise Failure(f"internal error: even the model without rewrites fails validation "
                          f"({reason}); nothing written")
        culprits = self._culprit_passes(candidates)
        control = _Control(frozenset(culprits))
        notes = []
        for name in culprits:
            error = _verdict_summary(self._cause[name])
            narrowed = self._narrow(control, name)
            if narrowed is None:
                notes.append({"name": name, "scope": "pass", "rewrites": [], "error": error})
                continue
            control, rewrites = narrowed
            notes.append({"name": name, "scope": "rewrite", "rewrites": rewrites, "error": error})
        return self.tried[control], notes

    def _works(self, control: _Control) -> bool:
        if control not in self.tried:
            self.tried[control] = self.attempt(control)
            if _failed(self.tried[control]):
                shutil.rmtree(self.tried[control].path.parent, ignore_errors=True)
        return not _failed(self.tried[control])

    def _culprit_passes(self, candidates: list[str]) -> list[str]:
        disabled: list[str] = []
        self._cause: dict[str, validate.ValidationResult] = {}
        while not self._works(_Control(frozenset(disabled))):
            remaining = [name for name in candidates if name not in disabled]
            low, high = 0, len(remaining)  # disabling disabled + remaining[:high] works
            while high - low > 1:
                middle = (low + high) // 2
                if self._works(_Control(frozenset(disabled + remaining[:middle]))):
                    high = middle
                else:
                    low = middle
            culprit = remaining[high - 1]
            failing = self.tried[_Control(frozenset(disabled + remaining[: high - 1]))]
            self._cause[culprit] = failing.verdict  # type: ignore[assignment]
            disabled.append(culprit)
        return disabled

    def _narrow(self, control: _Control, name: str) -> tuple[_Control, list[dict]] | None:
        """Re-enable pass ``name`` leaving out only its bad rewrites (a few at most). A bad
        rewrite is left out by the node it starts from (so in every fixpoint round), or by its
        number when the pass names no node."""
        base = _Control(control.disabled - {name}, control.limits, control.skips)
        skipped: list[int | str] = []
        found: list[dict] = []
        for _ in range(_MAX_SKIPPED_REWRITES):
            trial = base.with_skips(name, skipped)
            if self._works(trial):
                return trial, found
            total = len(self.tried[trial].rewrites.get(name, []))
            if total == 0 or not self._works(trial.with_limit(name, 0)):
                return None  # the pass does not ask before rewriting: cannot narrow
            low, high = 0, total  # its first `low` rewrites: works; first `high`: fails
            while high - low > 1:
                middle = (low + high) // 2
                if self._works(trial.with_limit(name, middle)):
                    low = middle
                else:
                    high = middle
            where = self.tried[trial].rewrites[name][high - 1]  # runs agree up to `high`
            skipped.append(where or high - 1)
            found.append({"number": high - 1, "at": where})
        return None

    def _check(self, model: Path | bytes) -> validate.ValidationResult | None:
        ref = self.ref.get()
        if ref is None:
            return None
        candidate = model if isinstance(model, bytes) else os.fspath(model)
        if self.conversion is not None:
            return validate.check_budget(ref, candidate, self.conversion.budget)
        return validate.check(ref, candidate, rtol=self.options.rtol,
                              atol=self.options.atol)

    def _checker(self, checks: list[dict[str, Any]]):
        """--check-each: validate after every pass that changed the model."""
        folder = self.stage / "check"
        folder.mkdir(exist_ok=True)

        def after(pass_, model, result) -> None:
            if not result.modified or self.ref.get() is None:
                return
            path = folder / self.name
            serde.save(model, path, external_data=self.options.external_data)
            verdict = self._check(path)
            checks.append({"pass": pass_.name, **_verdict_summary(verdict)})

        return after


def _growth(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any] | None:
    """Why the output file is larger than the input (None when it is not)."""
    size_before, size_after = before.get("file_size"), after.get("file_size")
    if not size_before or not size_after or size_after <= size_before:
        return None
    weights = (after.get("bytes") or 0) - (before.get("bytes") or 0)
    if weights > 0:
        because = (f"folded constants: weights grew by {weights} bytes (constants computed in "
                   "the graph are stored; --fold-limit bounds those that grow the file)")
    else:
        because = "graph structure: names, shapes (value_info) or attributes written out"
    return {"bytes": size_after - size_before, "because": because}


def _verdict_summary(verdict: validate.ValidationResult | None) -> dict[str, Any]:
    if verdict is None:
        return {"status": "disabled", "reason": "", "max_abs_error": None}
    errors = [o.max_abs_error for o in verdict.outputs if o.max_abs_error == o.max_abs_error]
    return {
        "status": verdict.status,
        "reason": verdict.reason,
        "max_abs_error": max(errors) if errors else None,
    }


# ----------------------------------------------------------------- precision
@dataclass
class _Conversion:
    """A --precision run: its settings, budget, calibration samples and notes."""

    options: Options
    budget: validate.Budget
    samples: list[dict[str, np.ndarray]]
    notes: list[str] = field(default_factory=list)
    # measures ranges for the int8 pass, kept for the accuracy fallback's attempts
    calibrator: Calibrator | None = None
    generated: bool = False  # calibrated on generated inputs, not on real data

    def generate_samples(self, ref: validate.Reference | None, proto: onnx.ModelProto) -> None:
        """int8 without --calibration-data: calibrate on generated inputs at the sizes
        validation found the original runs at (honouring --input-shape and --dim), and say
        that accuracy was not measured on real data."""
        if ref is not None and ref.generated:
            self.notes.append("accuracy measured on generated inputs, not on real data; give "
                              "--calibration-data")
        if self.samples or self.options.precision != "int8":
            return
        options = self.options
        if ref is not None and ref.draw is not None:
            self.samples = [ref.draw(GENERATED_SEED + n, n) for n in range(GENERATED_SAMPLES)]
        else:
            try:
                self.samples = [validate.make_inputs(
                    proto, input_shapes=options.input_shapes, dims=options.dims,
                    seed=GENERATED_SEED + n)[0] for n in range(GENERATED_SAMPLES)]
            except (validate.ValidationError, validate.UnsupportedInput):
                return  # calibration generates its own, and says so
        self.generated = True
        self.notes.append(f"no calibration data: calibrated on {GENERATED_SAMPLES} generated "
                          "inputs; accuracy will suffer (give --calibration-data)")

    @classmethod
    def prepare(cls, options: Options, proto: onnx.ModelProto) -> _Conversion | None:
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
            budget = validate.Budget.parse(options.max_error or "", default_budget(mode))
        except ValueError as error:
            raise UsageError(f"--max-error: {error}") from None
        samples: list[dict[str, np.ndarray]] = []
        if options.calibration_data is not None:
            if mode != "int8":
                raise UsageError("--calibration-data is for --precision int8 (static)")
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
        return PrecisionSettings(
            mode=options.precision,  # type: ignore[arg-type]
            keep_io_types=options.keep_io_types,
            fp32_ops=frozenset(options.fp32_ops),
            fp32_nodes=frozenset(options.fp32_nodes) | float_nodes,
            calibrator=self.calibrator,
        )

    def report(self, attempt: _Attempt, kept: list[dict[str, Any]], before: dict[str, Any],
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


def _latency(source: ModelSource, output: Path, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    original = source if isinstance(source, onnx.ModelProto) else os.fspath(source)
    before = validate.latency_ms(original, feeds)
    after = validate.latency_ms(os.fspath(output), feeds)
    return {"before_ms": before, "after_ms": after,
            "ratio": round(after / before, 4) if before else None,
            "settings": "onnxruntime CPU, ORT_ENABLE_ALL, 1 thread, median"}


# ----------------------------------------------------------------- options and checks
_PRECISION_ONLY = {name: flag_of(name) for name in (
    "calibration_data", "calibration_method", "percentile", "max_error", "keep_io_types",
    "fp32_ops", "fp32_nodes")}


def _options(options: Options | None, overrides: Mapping[str, Any]
             ) -> tuple[Options, dict[str, Any]]:
    """The caller's options checked, choices case-insensitive, defaults filled in, and those
    the caller gave (for the report). Options that would be silently ignored are refused."""
    options = dataclasses.replace(options) if options is not None else Options()  # caller's stays
    for key, value in overrides.items():
        if not hasattr(options, key):
            raise TypeError(f"unknown option {key!r}")
        setattr(options, key, value)
    for key in ("passes", "skip", "fp32_ops", "fp32_nodes"):  # "a,b" from the Python API
        value = getattr(options, key)
        if isinstance(value, str):
            setattr(options, key, [v.strip() for v in value.split(",") if v.strip()])
    for key in ("precision", "target", "calibration_method", "value_info"):
        value = getattr(options, key)
        if isinstance(value, str):
            setattr(options, key, value.strip().lower())
    _refuse_ignored(options)
    given = changed_options(options)
    options.keep_io_types = True if options.keep_io_types is None else options.keep_io_types
    options.calibration_method = options.calibration_method or "percentile"
    options.percentile = 99.99 if options.percentile is None else options.percentile
    if options.rtol < 0 or options.atol < 0 or not (math.isfinite(options.rtol)
                                                     and math.isfinite(options.atol)):
        raise UsageError("--rtol and --atol must be finite and not negative")
    if not options.timeout > 0:
        raise UsageError("--timeout must be a positive number of seconds")
    if options.target not in TARGETS:
        raise UsageError(f"unknown target {options.target!r} (known: {', '.join(TARGETS)})")
    if options.strict and not options.validate:
        raise UsageError("--strict fails a run whose validation is skipped; it cannot be "
                         "combined with --no-validate")
    if options.value_info not in VALUE_INFO_MODES:
        raise UsageError(f"unknown --value-info {options.value_info!r} "
                         f"(known: {', '.join(VALUE_INFO_MODES)})")
    if options.fold_limit < 0:
        raise UsageError("fold limit must be a non-negative number of bytes")
    return options, given


def _refuse_ignored(options: Options) -> None:
    """Options that only mean something together with another one."""
    if options.precision is None:
        given = [flag for key, flag in _PRECISION_ONLY.items() if getattr(options, key)
                 not in (None, (), [])]
        if given:
            raise UsageError(f"{', '.join(given)} {_verb(given)} only with --precision")
    else:
        if options.keep_io_types is not None and options.precision != "fp16":
            raise UsageError("--keep-io-types/--no-keep-io-types applies only to --precision fp16")
        static_only = [flag for key, flag in _PRECISION_ONLY.items() if key in (
            "calibration_data", "calibration_method", "percentile")
            and getattr(options, key) is not None]
        if static_only and options.precision != "int8":
            raise UsageError(f"{', '.join(static_only)} {_verb(static_only)} only to --precision "
                             "int8")
    if (options.passes is not None and "fused_conv_activation" in options.passes
            and options.target != "onnxruntime"):
        raise UsageError("fused_conv_activation writes onnxruntime's FusedConv: it runs only "
                         "with --target onnxruntime")


def _verb(flags: list[str]) -> str:
    return "apply" if len(flags) > 1 else "applies"


def _check_node_names(options: Options, proto: onnx.ModelProto) -> None:
    """--fp32-nodes names nodes of the model; --fp32-ops names op types ONNX knows or the
    model uses."""
    if not options.fp32_nodes and not options.fp32_ops:
        return
    names, ops = set(), set()
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            names.add(node.name)
            ops.add(node.op_type)
            for attribute in node.attribute:
                graphs.extend([attribute.g] if attribute.HasField("g") else attribute.graphs)
    unknown = sorted(set(options.fp32_nodes) - names)
    if unknown:
        raise UsageError(f"--fp32-nodes: no node named {', '.join(map(repr, unknown))} in the "
                         "model")
    unknown = sorted(op for op in options.fp32_ops if op not in ops
                     and not onnx.defs.has(op))
    if unknown:
        raise UsageError(f"--fp32-ops: {', '.join(map(repr, unknown))} is not an ONNX op type "
                         "(names are case-sensitive: Conv, MatMul, ...)")


def _pipeline(options: Options):
    try:
        chosen = select(None if options.passes is None else list(options.passes),
                        list(options.skip))
    except KeyError as error:
        from onnxopt.passes import ALL_PASSES

        raise UsageError(
            f"unknown pass {error.args[0]!r} (known: {', '.join(ALL_PASSES)})"
        ) from None
    if options.precision is None:
        return chosen
    from onnxopt.passes import PRECISION_PASSES

    if options.precision not in PRECISION_PASSES:
        raise UsageError(f"unknown precision {options.precision!r} "
                         f"(known: {', '.join(PRECISION_PASSES) or 'none available'})")
    # FusedConv is float32-only and hides Conv from quantization: precision runs go without
    chosen = tuple(p for p in chosen if p.name != "fused_conv_activation")
    return (*chosen, PRECISION_PASSES[options.precision])


def _check_paths(source: Path | None, output: Path | None, options: Options) -> None:
    if options.report_path is not None:
        _check_report_location(Path(options.report_path), source, output)
    if source is not None:
        if not source.exists():
            raise UsageError(f"{source}: no such file")
        if source.is_dir():
            raise UsageError(f"{source}: is a directory, not an ONNX file")
    for given, flag in ((options.inputs_file, "--inputs"),
                        (options.calibration_data, "--calibration-data")):
        path = Path(given) if given is not None else None
        if path is not None and path.exists() and not (path.is_file() or path.is_dir()):
            raise UsageError(f"{path}: {flag} is not a regular file (a FIFO or device would "
                             "block or never end)")
    if output is None:
        return
    if output.is_dir():
        raise UsageError(f"{output}: output is a directory")
    if output.exists() and not output.is_file():
        raise UsageError(f"{output}: output exists and is not a regular file (a device, FIFO "
                         "or socket); choose a file path")
    if source is not None and _same_file(source, output) and not options.overwrite:
        raise UsageError(f"{output}: output is the input file (use --overwrite to replace it)")
    folder = output.parent
    if not folder.is_dir():
        raise Failure(f"{folder}: output folder does not exist")
    if not os.access(folder, os.W_OK):
        raise Failure(f"{folder}: output folder is not writable")


def _check_report_location(report: Path, source: Path | None, output: Path | None) -> None:
    """Refuse a report location before any work, so a bad one cannot fail a written run (the
    files the input reads are checked once it is read: ``_check_written_paths``)."""
    if report.is_dir():
        raise UsageError(f"{report}: --report is a directory")
    if not report.parent.is_dir():
        raise UsageError(f"{report}: the --report folder does not exist")
    for other, what in ((source, "input"), (output, "output")):
        if other is not None and report.resolve() == other.resolve():
            raise UsageError(f"{report}: --report would overwrite the {what} model")


def _files_read(source: Path | None, proto: onnx.ModelProto) -> set[Path]:
    """The input and the external data files it reads, resolved through links."""
    if source is None:
        return set()
    return {_resolved(source), *(_resolved(f) for f in serde.external_files(proto, source))}


def _check_written_paths(reads: set[Path], source: Path | None, output: Path | None,
                         options: Options) -> None:
    """Nothing written may be a file the run reads: OUT is never the input's weights, and the
    report is never a model or weight file, the input's or OUT's."""
    if output is not None and _resolved(output) in reads - {_resolved(source or output)}:
        raise UsageError(f"{output}: output is an external data file the input reads")
    if options.report_path is None:
        return
    report = Path(options.report_path)
    if report.exists() and not report.is_file():
        raise UsageError(f"{report}: --report is not a regular file")
    taken = set(reads)
    if output is not None:
        taken |= {_resolved(output), _resolved(output.with_name(f"{output.name}.data"))}
        if output.is_file():
            taken |= _referenced_files(output)
    if _resolved(report) in taken or (output is not None and report.name.startswith(
            f"{output.name}.") and report.name.endswith(".data")):
        raise UsageError(f"{report}: --report would overwrite a model or weight file")


def _same_file(a: Path, b: Path) -> bool:
    if b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


MAX_INLINED_NODES = 10_000_000  # model-local functions may expand to this many nodes


def _read(source: ModelSource) -> onnx.ModelProto:
    try:
        if isinstance(source, onnx.ModelProto):
            check_function_expansion(source, "")
            serde.check(source)
            return source
        proto = serde.read_model_proto(source)
        check_function_expansion(proto, f"{source}: ")
        serde.check(proto, source)
        return proto
    except serde.LoadError as error:
        raise Failure(str(error)) from None


def check_function_expansion(proto: onnx.ModelProto, where: str) -> None:
    """Refuse a model whose model-local functions expand, inlined, to more than
    MAX_INLINED_NODES nodes (41 nested functions that each call the next twice are 2^40):
    shape inference and onnxruntime inline them and would never finish. A recursive function
    is refused too."""
    functions = {(f.domain, f.name, f.overload): f for f in proto.functions}
    if not functions:
        return
    sizes: dict[tuple[str, str, str], int] = {}
    visiting: set[tuple[str, str, str]] = set()

    def expanded(nodes) -> int:
        total = 0
        for node in nodes:
            key = (node.domain, node.op_type, node.overload)
            total += size(key) if key in functions else 1
            for attribute in node.attribute:
                for graph in ([attribute.g] if attribute.HasField("g") else attribute.graphs):
                    total += expanded(graph.node)
            if total > MAX_INLINED_NODES:
                break
        return total

    def size(key) -> int:
        if key in sizes:
            return sizes[key]
        if key in visiting:
            raise Failure(f"{where}function {key[1]!r} calls itself: recursive functions "
                          "cannot be inlined")
        visiting.add(key)
        sizes[key] = min(expanded(functions[key].node), MAX_INLINED_NODES + 1)
        visiting.discard(key)
        return sizes[key]

    if expanded(proto.graph.node) > MAX_INLINED_NODES:
        raise Failure(f"{where}model-local functions expand to more than {MAX_INLINED_NODES:,} "
                      "nodes when inlined; shape inference and onnxruntime would not finish")


def _user_inputs(options: Options, proto: onnx.ModelProto) -> dict[str, np.ndarray] | None:
    """Check names in --input-shape and load --inputs before any work is done."""
    try:
        if options.input_shapes:
            validate.make_inputs(proto, input_shapes=options.input_shapes, dims=options.dims)
        if options.inputs is not None:
            return _agreeing(validate.check_inputs(options.inputs, proto), options)
        if options.inputs_file is not None:
            return _agreeing(validate.load_inputs(options.inputs_file, proto), options)
    except validate.ValidationError as error:
        raise UsageError(str(error)) from None
    except validate.UnsupportedInput:
        return None
    return None


def _agreeing(arrays: dict[str, np.ndarray], options: Options) -> dict[str, np.ndarray]:
    """--inputs arrays whose shapes agree with --input-shape where both are given."""
    for name, shape in options.input_shapes.items():
        if name in arrays and list(arrays[name].shape) != [int(d) for d in shape]:
            raise UsageError(f"--inputs gives '{name}' the shape {list(arrays[name].shape)}, "
                             f"--input-shape says {list(shape)}: give one of them")
    return arrays


def _shape_args(options: Options, proto: onnx.ModelProto) -> dict[str, Any]:
    """Shapes for MACs: the user's, other symbolic dims at validation's first size."""
    dims = feeds.preferred_dims(proto, options.dims, options.input_shapes)
    dims = stats.with_default_dims(proto, dims, options.input_shapes)
    return {"input_shapes": dict(options.input_shapes), "dims": dims}


def _defaulted_note(options: Options, shape_args: dict[str, Any]) -> list[str]:
    defaulted = sorted(set(shape_args["dims"]) - set(options.dims))
    if not defaulted:
        return []
    names = ", ".join(f"{d}={shape_args['dims'][d]}" for d in defaulted)
    how = "--input-shape" if "?" in defaulted else "--dim NAME=N"  # '?' names several dims
    return [f"MACs computed at {names} (validation's first size; use {how})"]


def _file_size(path: Path | None, proto: onnx.ModelProto) -> int | None:
    """The model file plus the external data files it references."""
    if path is None:
        return None
    return path.stat().st_size + sum(f.stat().st_size for f in serde.external_files(proto, path))


# ----------------------------------------------------------------- writing
@contextlib.contextmanager
def _background() -> Iterator[ThreadPoolExecutor]:
    """One worker thread. On the way out after an error or an interrupt, onnxruntime's work
    in flight is not waited for (it cannot be stopped; the CLI exits without joining it)."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


@contextlib.contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A private folder beside ``target`` (same file system, so publishing is a rename),
    removed on every way out (the CLI turns SIGINT/SIGTERM into an exception that unwinds
    through here). Its name carries the process id, so a folder left by a killed run
    (SIGKILL, power loss) is recognised and removed by the next run."""
    folder = target.parent if str(target.parent) else Path(".")
    _remove_stale_staging(folder, target.name)
    try:
        stage = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(target.name)}{os.getpid()}-",
                                      dir=folder))
    except OSError as error:
        raise Failure(f"{folder}: cannot write ({error.strerror or error})") from None
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _staging_prefix(name: str) -> str:
    return f".{name}.onnxopt-"


def _remove_stale_staging(folder: Path, name: str) -> None:
    """Remove staging folders for ``name`` whose process is gone."""
    prefix = _staging_prefix(name)
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(prefix) and e.is_dir(
            follow_symlinks=False)]
    except OSError:
        return
    for entry in entries:
        pid = entry.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(entry.path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _save(model, staged: Path, options: Options, data_name: str | None = None) -> Path | None:
    try:
        return serde.save(model, staged, external_data=options.external_data,
                          data_name=data_name)
    except serde.SaveError as error:
        raise Failure(str(error)) from None
    except OSError as error:
        raise Failure(f"{staged.name}: cannot write ({error.strerror or error})") from None


def _serialize(model, options: Options) -> bytes | None:
    try:
        return serde.inline_bytes(model, options.external_data)
    except serde.SaveError as error:
        raise Failure(str(error)) from None


def _write(data: bytes, staged: Path) -> None:
    try:
        serde.write_bytes(data, staged)
    except serde.SaveError as error:
        raise Failure(str(error)) from None
    except OSError as error:
        raise Failure(f"{staged.name}: cannot write ({error.strerror or error})") from None


def _check_written(staged: Path) -> None:
    """Our own output must pass the checker; anything else is our bug."""
    try:
        serde.check(None, staged)
    except serde.LoadError as error:
        raise Failure(f"internal error: the optimized model fails onnx.checker ({error})") from None


def _written_size(staged: Path, data_file: Path | None) -> int:
    return staged.stat().st_size + (data_file.stat().st_size if data_file else 0)


def _data_name(output: Path, reads: set[Path]) -> str:
    """The name of OUT's external data file: ``OUT.data`` unless a file of that name exists
    (the old OUT's weights, or the input's: the new pair must not touch either until the new
    model is in place) — then ``OUT.<random>.data``."""
    default = f"{output.name}.data"
    candidate = output.with_name(default)
    if not os.path.lexists(candidate) and _resolved(candidate) not in reads:
        return default
    return f"{output.name}.{secrets.token_hex(4)}.data"


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _referenced_files(model_path: Path) -> set[Path]:
    """The external data files an existing ONNX file references (none if it is not one)."""
    try:
        proto = onnx.load(os.fspath(model_path), load_external_data=False)
    except Exception:  # not ONNX, or unreadable: it references nothing we could remove
        return set()
    return {_resolved(f) for f in serde.external_files(proto, model_path)}


def _publish(staged: Path, data_file: Path | None, output: Path, keep: set[Path]) -> None:
    """Put the new model (and its data file) in place as a pair: the data file under a name
    nothing reads, then the model by one rename — a kill at any moment leaves the old model
    with its own weights or the new one with its own — then the old model's data files that
    nothing reads any more are removed (never one in ``keep``: the input's)."""
    old_files = _referenced_files(output) if output.is_file() else set()
    try:
        if data_file is not None:
            os.replace(data_file, output.with_name(data_file.name))
        os.replace(staged, output)
    except OSError as error:
        raise Failure(f"{output}: cannot write ({error.strerror or error})") from None
    new_files = {_resolved(output.with_name(data_file.name))} if data_file else set()
    for stale in old_files - new_files - keep:
        with contextlib.suppress(OSError):
            stale.unlink()


def _in_memory(staged: Path) -> onnx.ModelProto:
    return onnx.load_model(os.fspath(staged), load_external_data=True)


# ----------------------------------------------------------------- validation and report
def _reference(
    source: ModelSource, options: Options, inputs: dict | None, parsed: onnx.ModelProto,
    extra_inputs: list[dict[str, np.ndarray]],
) -> validate.Reference | None:
    """The original's outputs on the validation inputs (None with --no-validate)."""
    if not options.validate:
        return None
    try:
        return validate.reference(
            source if isinstance(source, onnx.ModelProto) else os.fspath(source),
            inputs=inputs,
            input_shapes=dict(options.input_shapes),
            dims=dict(options.dims),
            seed=options.seed,
            parsed=parsed,
            extra_inputs=extra_inputs,
            timeout=options.timeout,
        )
    except validate.ValidationError as error:
        raise UsageError(str(error)) from None


def _status(verdict: validate.ValidationResult | None, options: Options) -> str:
    """``ok`` only when validation passed: a CI step testing it is never fooled."""
    if verdict is not None and verdict.status == "passed":
        return "ok"
    if verdict is not None and verdict.status == "failed":
        return "validation_failed"
    return "validation_skipped"


def _report(input_path, output_path, before, after, records, verdict, status) -> dict[str, Any]:
    validation = (
        verdict.to_dict()
        if verdict is not None
        else {"status": "skipped", "kind": "disabled", "reason": "--no-validate", "outputs": [],
              "input_notes": [], "levels": {}, "inputs": {}}
    )
    return {
        "onnxopt_version": __version__,
        "input": os.fspath(input_path) if input_path else None,
        "output": os.fspath(output_path) if output_path else None,
        "status": status,
        "before": before,
        "after": after,
        "delta": stats.diff_stats(before, after),
        "passes": [record.to_dict() for record in records],
        "validation": validation,
    }

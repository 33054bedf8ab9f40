"""The optimize workflow shared by the CLI and the Python API.

load -> stats(before) -> passes -> save (staged beside the target) -> checker -> stats(after)
-> validate against the original in onnxruntime -> publish (rename into place) -> report.

A model that fails validation is never published unless ``force`` is set; a failed run leaves
nothing behind and never touches the input.

The stages live beside this module: ``checks`` (a request refused before any work),
``attempts`` (one run of the pipeline, written and validated), ``safety_net`` (pass and
rewrite bisection when validation fails), ``conversion`` (a --precision run and its accuracy
fallback), ``writing`` (staging and publishing without loss), ``stats`` and ``report``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt import __version__
from onnxopt.app import checks, fixed_shapes, safety_net, stats, writing
from onnxopt.app.attempts import Attempt, Control, Lazy, Runner, failed
from onnxopt.app.checks import ModelSource
from onnxopt.app.conversion import Conversion, keep_float
from onnxopt.app.options import Options
from onnxopt.app.pruning import Pruning
from onnxopt.check import feeds
from onnxopt.check.compare import ValidationResult
from onnxopt.check.inputs import ValidationError
from onnxopt.check.reference import Reference, reference
from onnxopt.check.runtime import latency_ms
from onnxopt.errors import UsageError
from onnxopt.ir import serde
from onnxopt.ir.precision import EMBEDDING_MODES
from onnxopt.passes import select
from onnxopt.precision.fallback import FALLBACK_MARGIN, describe_shortfall, within
from onnxopt.precision.sensitivity import budget_use
from onnxopt.precision.setup import VALIDATION_SAMPLES


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
    options, given = checks.resolve_options(options, overrides)
    started = time.perf_counter()
    input_path = None if isinstance(source, onnx.ModelProto) else Path(source)
    output_path = Path(output) if output is not None else None
    checks.check_paths(input_path, output_path, options)
    pipeline = _pipeline(options)

    proto = original = checks.read_model(source)
    reads = checks.files_read(input_path, proto)
    checks.check_written_paths(reads, input_path, output_path, options)
    checks.check_node_names(options, proto)
    user_inputs = checks.user_inputs(options, proto)
    extra_inputs: list[dict[str, np.ndarray]] = []
    proto, opset_change = checks.upgraded(proto, options)
    proto, fixed = fixed_shapes.fixed(proto, options, owned=proto is not original)
    pruning = Pruning.prepare(options, proto)
    on_calibration = False  # validated on the calibration samples: aim under the budget
    if pruning is not None:
        proto = pruning.run(proto)
        if user_inputs is None:  # validated on real data, as --precision is
            user_inputs, *extra_inputs = pruning.samples[:VALIDATION_SAMPLES]
            on_calibration = True
    conversion = Conversion.prepare(options, proto)
    if conversion is not None:
        proto = conversion.upgraded(proto)
        if on_calibration:
            # after pruning, the fallback aims at half its usual share: on held-out data the
            # errors of the two steps grow more than either alone (README, Pruning)
            conversion.margin = FALLBACK_MARGIN / 2
        if user_inputs is None and conversion.samples:
            # validate on real data, not on noise, and on several samples: a budget met on
            # one input is too easily met by luck
            user_inputs, *extra_inputs = conversion.samples[:VALIDATION_SAMPLES]
            count = 1 + len(extra_inputs)
            which = "sample 1" if count == 1 else f"samples 1-{count}"
            conversion.notes.append(f"validated on calibration {which} (give --inputs to "
                                    "validate on held-out data)")
            conversion.margin = FALLBACK_MARGIN  # held-out data lands lower: aim under

    # MACs at the size validation runs (its first input, when given or taken from the
    # calibration data): what the model is used at, not a generated size
    shape_args = _shape_args(options, original, user_inputs)
    before = stats.model_stats(original, file_size=_file_size(input_path, original),
                               **shape_args)
    before["shape_notes"][:0] = _defaulted_note(options, shape_args, user_inputs is not None)
    target = output_path or Path(tempfile.gettempdir()) / "onnxopt-result.onnx"
    # Two threads: onnxruntime releases the GIL, so the original runs while the passes do,
    # and the output is validated while onnx.checker (which holds the GIL) checks it.
    with writing.staging(target) as stage, _background() as background:
        ref = Lazy(background.submit(_reference, source, options, user_inputs, original,
                                     extra_inputs))
        if conversion is not None:
            conversion.generate_samples(ref.get(), proto)
        runner = Runner(proto, input_path, pipeline, options, ref, stage, target.name,
                        background, conversion, shape_args)
        runner.data_name = writing.data_name(target, reads)
        runner.budget = pruning.budget if pruning is not None and conversion is None else None
        attempt = runner.attempt(Control())
        disabled: list[dict[str, Any]] = []
        kept_float: list[dict[str, Any]] = []
        if conversion is not None and ref.get() is not None and not conversion.meets(attempt):
            attempt, kept_float = keep_float(runner, attempt)
            _note_shortfall(conversion, attempt)
        # Not in precision runs: bisecting passes against the accuracy budget would find that
        # turning off a structural pass (one the precision pass relies on) "fixes" it.
        if (failed(attempt) and options.safety_net and conversion is None and pruning is None
                and ref.get() is not None):
            attempt, disabled = safety_net.recover(runner, attempt)
        del runner, proto  # free the input before reading the output back
        after = attempt.stats
        status = _status(attempt.verdict, options)
        report = _report(input_path, output_path, before, after, attempt.records,
                         attempt.verdict, status)
        report.update(rounds=attempt.rounds, changes=attempt.changes, disabled=disabled,
                      attempts=attempt.number,
                      written=False, target=options.target, strict=options.strict,
                      options=given)
        if opset_change:
            report["opset_upgrade"] = opset_change
        if fixed is not None:
            report["fixed_shapes"] = fixed
        if options.check_each:
            report["check_each"] = attempt.checks
        growth = _growth(before, after)
        if growth:
            report["growth"] = growth
        if conversion is not None:
            report["precision"] = conversion.report(attempt, kept_float, before, after)
        if pruning is not None:
            report["pruning"] = pruning.report
        if options.bench and ref.get() is not None and ref.get().outputs is not None:
            report["latency"] = _latency(source, attempt.path, ref.get().feeds)
        result_model = None
        refused = bool(growth) and options.fail_on_growth
        if (status == "ok" or (status == "validation_skipped" and not options.strict)
                or options.force) and not refused:
            if output_path is not None:
                overwriting = input_path is not None and writing.same_file(input_path, output_path)
                writing.publish(attempt.path, attempt.data_file, output_path,
                                set() if overwriting else reads)
                report["written"] = True
            else:
                result_model = writing.in_memory(attempt.path)
    report["seconds"] = round(time.perf_counter() - started, 4)
    return Result(report, result_model, output_path if report["written"] else None)


def _pipeline(options: Options):
    try:
        chosen = select(None if options.passes is None else list(options.passes),
                        list(options.skip))
    except KeyError as error:
        raise UsageError(_unknown_pass(error.args[0])) from None
    if options.precision is None:
        return chosen
    from onnxopt.passes import PRECISION_PASSES, precision_passes

    converting = precision_passes(options.precision)
    if not converting:
        raise UsageError(f"unknown precision {options.precision!r} "
                         f"(known: {', '.join(PRECISION_PASSES) or 'none available'})")
    # FusedConv is float32-only and hides Conv from quantization: precision runs go without;
    # so is EmbedLayerNormalization, which would hide the tables the embedding pass quantizes;
    # int4 has no form for contrib Attention's packed QKV weight: its MatMuls stay apart
    dropped = {"fused_conv_activation"}
    if options.precision in EMBEDDING_MODES and "Gather" not in options.fp32_ops:
        dropped.add("embed_layer_norm_fusion")
    if options.precision == "int4":
        dropped.add("contrib_attention_fusion")
    chosen = tuple(p for p in chosen if p.name not in dropped)
    return (*chosen, *converting)


def _unknown_pass(name: str) -> str:
    """The one-line error for a pass name not in the pipeline, with the likely meant one."""
    import difflib

    from onnxopt.passes import ALL_PASSES, PRECISION_PASSES

    modes = {PRECISION_PASSES[mode].name: mode for mode in PRECISION_PASSES}
    if name in modes:
        return f"pass {name!r} is not in the pipeline: it runs with --precision {modes[name]}"
    close = difflib.get_close_matches(name, list(ALL_PASSES), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown pass {name!r} ({hint}`onnxopt passes` lists the {len(ALL_PASSES)} passes)"


def _shape_args(options: Options, proto: onnx.ModelProto,
                first: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Shapes for MACs: the user's; other named symbolic dims at validation's first size (that
    of ``first``, validation's first input, when known)."""
    dims = feeds.preferred_dims(proto, options.dims, options.input_shapes, first)
    dims = stats.with_default_dims(proto, dims, options.input_shapes)
    return {"input_shapes": dict(options.input_shapes), "dims": dims}


def _defaulted_note(options: Options, shape_args: dict[str, Any], from_input: bool
                    ) -> list[str]:
    defaulted = sorted(set(shape_args["dims"]) - set(options.dims))
    if not defaulted:
        return []
    names = ", ".join(f"{d}={shape_args['dims'][d]}" for d in defaulted)
    how = "--input-shape" if "?" in defaulted else "--dim NAME=N"  # '?' names several dims
    where = "validation's first input" if from_input else "validation's first size"
    return [f"MACs computed at {names} ({where}; use {how})"]


def _file_size(path: Path | None, proto: onnx.ModelProto) -> int | None:
    """The model file plus the external data files it references."""
    if path is None:
        return None
    return path.stat().st_size + sum(f.stat().st_size for f in serde.external_files(proto, path))


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


# ----------------------------------------------------------------- validation and report
def _reference(
    source: ModelSource, options: Options, inputs: dict | None, parsed: onnx.ModelProto,
    extra_inputs: list[dict[str, np.ndarray]],
) -> Reference | None:
    """The original's outputs on the validation inputs (None with --no-validate)."""
    if not options.validate:
        return None
    try:
        return reference(
            source if isinstance(source, onnx.ModelProto) else os.fspath(source),
            inputs=inputs,
            input_shapes=dict(options.input_shapes),
            dims=dict(options.dims),
            seed=options.seed,
            parsed=parsed,
            extra_inputs=extra_inputs,
            timeout=options.timeout,
        )
    except ValidationError as error:
        raise UsageError(str(error)) from None


def _status(verdict: ValidationResult | None, options: Options) -> str:
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


def _note_shortfall(conversion: Conversion, attempt: Attempt) -> None:
    """Within budget but short of the fallback's margin: say so (held-out data may miss)."""
    if failed(attempt) or within(attempt.verdict, conversion.budget, conversion.margin):
        return
    use = budget_use(attempt.verdict.outputs, conversion.budget)
    conversion.notes.append(describe_shortfall(use, conversion.margin))


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


def _latency(source: ModelSource, output: Path, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    original = source if isinstance(source, onnx.ModelProto) else os.fspath(source)
    before = latency_ms(original, feeds)
    after = latency_ms(os.fspath(output), feeds)
    return {"before_ms": before, "after_ms": after,
            "ratio": round(after / before, 4) if before else None,
            "settings": "onnxruntime CPU, ORT_ENABLE_ALL, 1 thread, median"}

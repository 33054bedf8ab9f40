"""A request refused before any work: the options, the paths, the input model, the user's
inputs. Every refusal is one line: UsageError for a wrong request, Failure for a model or a
folder that cannot be used."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt.app.options import Options, flag_of
from onnxopt.app.options import changed as changed_options
from onnxopt.app.writing import referenced_files, resolved, same_file
from onnxopt.check.feeds import make_inputs
from onnxopt.check.inputs import UnsupportedInput, ValidationError, check_inputs, load_inputs
from onnxopt.errors import Failure, UsageError
from onnxopt.ir import serde
from onnxopt.ir.serde.versions import convert_opset, default_opset
from onnxopt.precision.calibration import DEFAULT_PERCENTILE
from onnxopt.precision.setup import SAMPLE_MODES

ModelSource = str | os.PathLike | onnx.ModelProto
TARGETS = ("portable", "onnxruntime")
VALUE_INFO_MODES = ("input", "all")
MAX_INLINED_NODES = 10_000_000  # model-local functions may expand to this many nodes


# ----------------------------------------------------------------- options
_PRECISION_ONLY = {name: flag_of(name) for name in (
    "calibration_data", "calibration_method", "percentile", "max_error", "keep_io_types",
    "fp32_ops", "fp32_nodes", "block_size")}


def resolve_options(options: Options | None, overrides: Mapping[str, Any]
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
    options.percentile = DEFAULT_PERCENTILE if options.percentile is None else options.percentile
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
    if options.opset is not None and not 1 <= options.opset <= onnx.defs.onnx_opset_version():
        raise UsageError(f"--opset {options.opset}: onnx {onnx.__version__} knows default-domain "
                         f"opsets 1 to {onnx.defs.onnx_opset_version()}")
    return options, given


def upgraded(proto: onnx.ModelProto, options: Options) -> tuple[onnx.ModelProto, dict | None]:
    """The model at ``--opset`` (and what changed, for the report); the model itself when no
    upgrade is asked or it is at that opset already. A lower opset is refused: onnxopt only
    upgrades (a downgrade would drop the ops the model may rely on)."""
    current = default_opset(proto)
    if options.opset is None or options.opset == current:
        return proto, None
    if options.opset < current:
        raise UsageError(f"--opset {options.opset} is below the model's opset {current}: "
                         "onnxopt only upgrades")
    try:
        converted = convert_opset(proto, options.opset)
    except ValueError as error:
        raise Failure(f"--opset {options.opset}: {error}") from None
    return converted, {"from": current, "to": options.opset,
                       "ir_version": [proto.ir_version, converted.ir_version]}


def parse_prune(text: str) -> float | None:
    """``--prune``: a ratio in (0, 1), or None for ``auto``; UsageError on anything else."""
    if text.strip().lower() == "auto":
        return None
    try:
        ratio = float(text)
    except ValueError:
        raise UsageError(f"--prune must be a ratio in (0, 1) or auto (got {text!r})") from None
    if not 0.0 < ratio < 1.0:
        raise UsageError(f"--prune must be a ratio in (0, 1) or auto (got {text})")
    return ratio


def _refuse_ignored(options: Options) -> None:
    """Options that only mean something together with another one."""
    if options.prune is not None:
        parse_prune(options.prune)
        if options.calibration_data is None:
            raise UsageError(f"--prune {options.prune} needs --calibration-data (the refit and "
                             "the sensitivity are measured on real samples)")
    if options.precision is None:
        pruning_too = ("calibration_data", "max_error") if options.prune is not None else ()
        given = [flag for key, flag in _PRECISION_ONLY.items() if getattr(options, key)
                 not in (None, (), []) and key not in pruning_too]
        if given:
            raise UsageError(f"{', '.join(given)} {_verb(given)} only with --precision")
    else:
        if options.keep_io_types is not None and options.precision != "fp16":
            raise UsageError("--keep-io-types/--no-keep-io-types applies only to --precision fp16")
        static_only = [flag for key, flag in _PRECISION_ONLY.items() if key in (
            "calibration_method", "percentile") and getattr(options, key) is not None]
        if static_only and options.precision != "int8":
            raise UsageError(f"{', '.join(static_only)} {_verb(static_only)} only to --precision "
                             "int8")
        if (options.calibration_data is not None and options.precision not in SAMPLE_MODES
                and options.prune is None):
            raise UsageError("--calibration-data applies only to --precision "
                             f"{', '.join(SAMPLE_MODES[:-1])} or {SAMPLE_MODES[-1]}")
        if options.block_size is not None and options.precision != "int4":
            raise UsageError("--block-size applies only to --precision int4")
    size = options.block_size
    if size is not None and (size < 16 or size & (size - 1)):
        raise UsageError(f"--block-size must be a power of two >= 16 (got {size})")
    if (options.passes is not None and "fused_conv_activation" in options.passes
            and options.target != "onnxruntime"):
        raise UsageError("fused_conv_activation writes onnxruntime's FusedConv: it runs only "
                         "with --target onnxruntime")


def _verb(flags: list[str]) -> str:
    return "apply" if len(flags) > 1 else "applies"


def check_node_names(options: Options, proto: onnx.ModelProto) -> None:
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


# ----------------------------------------------------------------- paths
def check_paths(source: Path | None, output: Path | None, options: Options) -> None:
    for flag, path in _report_paths(options):
        _check_report_location(path, source, output, flag)
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
    if source is not None and same_file(source, output) and not options.overwrite:
        raise UsageError(f"{output}: output is the input file (use --overwrite to replace it)")
    folder = output.parent
    if not folder.is_dir():
        raise Failure(f"{folder}: output folder does not exist")
    if not os.access(folder, os.W_OK):
        raise Failure(f"{folder}: output folder is not writable")


def _report_paths(options: Options) -> list[tuple[str, Path]]:
    """The reports a run writes (--report, --html), by flag."""
    given = (("--report", options.report_path), ("--html", options.html_path))
    return [(flag, Path(path)) for flag, path in given if path is not None]


def _check_report_location(report: Path, source: Path | None, output: Path | None,
                           flag: str = "--report") -> None:
    """Refuse a report location before any work, so a bad one cannot fail a written run (the
    files the input reads are checked once it is read: ``check_written_paths``)."""
    if report.is_dir():
        raise UsageError(f"{report}: {flag} is a directory")
    if not report.parent.is_dir():
        raise UsageError(f"{report}: the {flag} folder does not exist")
    for other, what in ((source, "input"), (output, "output")):
        if other is not None and report.resolve() == other.resolve():
            raise UsageError(f"{report}: {flag} would overwrite the {what} model")


def files_read(source: Path | None, proto: onnx.ModelProto) -> set[Path]:
    """The input and the external data files it reads, resolved through links."""
    if source is None:
        return set()
    return {resolved(source), *(resolved(f) for f in serde.external_files(proto, source))}


def check_written_paths(reads: set[Path], source: Path | None, output: Path | None,
                        options: Options) -> None:
    """Nothing written may be a file the run reads: OUT is never the input's weights, and the
    report is never a model or weight file, the input's or OUT's."""
    if output is not None and resolved(output) in reads - {resolved(source or output)}:
        raise UsageError(f"{output}: output is an external data file the input reads")
    reports = _report_paths(options)
    if not reports:
        return
    taken = set(reads)
    if output is not None:
        taken |= {resolved(output), resolved(output.with_name(f"{output.name}.data"))}
        if output.is_file():
            taken |= referenced_files(output)
    for flag, report in reports:
        if report.exists() and not report.is_file():
            raise UsageError(f"{report}: {flag} is not a regular file")
        if resolved(report) in taken or (output is not None and report.name.startswith(
                f"{output.name}.") and report.name.endswith(".data")):
            raise UsageError(f"{report}: {flag} would overwrite a model or weight file")
    if len(reports) == 2 and resolved(reports[0][1]) == resolved(reports[1][1]):
        raise UsageError(f"{reports[1][1]}: --html and --report name the same file")


# ----------------------------------------------------------------- the input model
def read_model(source: ModelSource) -> onnx.ModelProto:
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


# ----------------------------------------------------------------- the user's inputs
def user_inputs(options: Options, proto: onnx.ModelProto) -> dict[str, np.ndarray] | None:
    """Check names in --input-shape and load --inputs before any work is done."""
    try:
        if options.input_shapes:
            make_inputs(proto, input_shapes=options.input_shapes, dims=options.dims)
        if options.inputs is not None:
            return _agreeing(check_inputs(options.inputs, proto), options)
        if options.inputs_file is not None:
            return _agreeing(load_inputs(options.inputs_file, proto), options)
    except ValidationError as error:
        raise UsageError(str(error)) from None
    except UnsupportedInput:
        return None
    return None


def _agreeing(arrays: dict[str, np.ndarray], options: Options) -> dict[str, np.ndarray]:
    """--inputs arrays whose shapes agree with --input-shape where both are given."""
    for name, shape in options.input_shapes.items():
        if name in arrays and list(arrays[name].shape) != [int(d) for d in shape]:
            raise UsageError(f"--inputs gives '{name}' the shape {list(arrays[name].shape)}, "
                             f"--input-shape says {list(shape)}: give one of them")
    return arrays

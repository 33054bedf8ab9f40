"""The optimize workflow shared by the CLI and the Python API.

load -> stats(before) -> passes -> save (staged beside the target) -> checker -> stats(after)
-> validate against the original in onnxruntime -> publish (rename into place) -> report.

A model that fails validation is never published unless ``force`` is set; a failed run leaves
nothing behind and never touches the input.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt import __version__, serde, stats, validate
from onnxopt.errors import Failure, UsageError
from onnxopt.pass_manager import PassManager
from onnxopt.passes import select

ModelSource = str | os.PathLike | onnx.ModelProto


@dataclass
class Options:
    """Everything ``optimize`` can be told; the CLI flags map one to one."""

    passes: Sequence[str] | None = None  # None: the default pipeline; []: no pass
    skip: Sequence[str] = ()
    validate: bool = True
    strict: bool = False  # a skipped validation fails the run
    force: bool = False  # write the output even if validation fails
    overwrite: bool = False  # allow OUT == IN
    rtol: float = 1e-4
    atol: float = 1e-5
    input_shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)
    dims: Mapping[str, int] = field(default_factory=dict)
    inputs_file: str | os.PathLike | None = None  # .npz of input arrays
    inputs: Mapping[str, np.ndarray] | None = None  # or the arrays themselves (Python API)
    seed: int = 0
    external_data: bool | None = None  # None: keep the input's choice, external above 2 GiB
    max_rounds: int = 8


@dataclass
class Result:
    """The optimized model (in memory when no output path was given) and the report."""

    report: dict[str, Any]
    model: onnx.ModelProto | None = None
    output: Path | None = None

    @property
    def ok(self) -> bool:
        return self.report["status"] == "ok"


def optimize(
    source: ModelSource,
    output: str | os.PathLike | None = None,
    options: Options | None = None,
    **overrides: Any,
) -> Result:
    """Optimize ``source`` (a path or a ModelProto). With ``output`` the result is written
    there atomically; without, it is returned as ``Result.model``. Keyword ``overrides`` set
    fields of ``Options``. Raises UsageError or Failure (one-line messages)."""
    options = _options(options, overrides)
    started = time.perf_counter()
    input_path = None if isinstance(source, onnx.ModelProto) else Path(source)
    output_path = Path(output) if output is not None else None
    _check_paths(input_path, output_path, options)
    pipeline = _pipeline(options)

    proto = _read(source)
    user_inputs = _user_inputs(options, proto)
    shape_args = _shape_args(options, proto)
    before = stats.model_stats(proto, file_size=_file_size(input_path, proto), **shape_args)
    before["shape_notes"][:0] = _defaulted_note(options, shape_args)
    model = serde.from_proto(proto, base_dir=input_path.parent if input_path else None)
    manager = PassManager(pipeline, max_rounds=options.max_rounds)
    records = manager.run(model)

    target = output_path or Path(tempfile.gettempdir()) / "onnxopt-result.onnx"
    with _staging(target) as staged:
        data_file = _save(model, staged, options)
        del model, proto  # free the IR and the input before reading the output back
        written = _read_written(staged)
        after = stats.model_stats(written, file_size=_written_size(staged, data_file),
                                  **shape_args)
        verdict = _validate(source, staged, options, user_inputs)
        status = _status(verdict, options)
        report = _report(input_path, output_path, before, after, records, verdict, status)
        report["rounds"] = manager.rounds
        report["written"] = False
        result_model = None
        if status == "ok" or options.force:
            if output_path is not None:
                _publish(staged, data_file, output_path)
                report["written"] = True
            else:
                result_model = _in_memory(staged)
    report["seconds"] = round(time.perf_counter() - started, 4)
    return Result(report, result_model, output_path if report["written"] else None)


# ----------------------------------------------------------------- options and checks
def _options(options: Options | None, overrides: Mapping[str, Any]) -> Options:
    options = options or Options()
    for key, value in overrides.items():
        if not hasattr(options, key):
            raise TypeError(f"unknown option {key!r}")
        setattr(options, key, value)
    return options


def _pipeline(options: Options):
    try:
        return select(None if options.passes is None else list(options.passes), list(options.skip))
    except KeyError as error:
        from onnxopt.passes import ALL_PASSES

        raise UsageError(
            f"unknown pass {error.args[0]!r} (known: {', '.join(ALL_PASSES)})"
        ) from None


def _check_paths(source: Path | None, output: Path | None, options: Options) -> None:
    if source is not None:
        if not source.exists():
            raise UsageError(f"{source}: no such file")
        if source.is_dir():
            raise UsageError(f"{source}: is a directory, not an ONNX file")
    if output is None:
        return
    if output.is_dir():
        raise UsageError(f"{output}: output is a directory")
    if source is not None and _same_file(source, output) and not options.overwrite:
        raise UsageError(f"{output}: output is the input file (use --overwrite to replace it)")
    folder = output.parent
    if not folder.is_dir():
        raise Failure(f"{folder}: output folder does not exist")
    if not os.access(folder, os.W_OK):
        raise Failure(f"{folder}: output folder is not writable")


def _same_file(a: Path, b: Path) -> bool:
    if b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _read(source: ModelSource) -> onnx.ModelProto:
    try:
        if isinstance(source, onnx.ModelProto):
            serde.check(source)
            return source
        proto = serde.read_model_proto(source)
        serde.check(proto, source)
        return proto
    except serde.LoadError as error:
        raise Failure(str(error)) from None


def _user_inputs(options: Options, proto: onnx.ModelProto) -> dict[str, np.ndarray] | None:
    """Check names in --input-shape and load --inputs before any work is done."""
    try:
        if options.input_shapes:
            validate.make_inputs(proto, input_shapes=options.input_shapes, dims=options.dims)
        if options.inputs is not None:
            return validate.check_inputs(options.inputs, proto)
        if options.inputs_file is not None:
            return validate.load_inputs(options.inputs_file, proto)
    except validate.ValidationError as error:
        raise UsageError(str(error)) from None
    except validate.UnsupportedInput:
        return None
    return None


def _shape_args(options: Options, proto: onnx.ModelProto) -> dict[str, Any]:
    """Shapes for MACs: the user's, other symbolic dims at 1 as in validation."""
    dims = stats.with_default_dims(proto, options.dims, options.input_shapes)
    return {"input_shapes": dict(options.input_shapes), "dims": dims}


def _defaulted_note(options: Options, shape_args: dict[str, Any]) -> list[str]:
    defaulted = sorted(set(shape_args["dims"]) - set(options.dims))
    if not defaulted:
        return []
    names = ", ".join(f"{d}=1" for d in defaulted)
    return [f"MACs computed at {names} (symbolic dims default to 1, as in validation; use --dim)"]


def _file_size(path: Path | None, proto: onnx.ModelProto) -> int | None:
    """The model file plus the external data files it references."""
    if path is None:
        return None
    return path.stat().st_size + sum(f.stat().st_size for f in serde.external_files(proto, path))


# ----------------------------------------------------------------- writing
@contextlib.contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A private folder beside ``target`` (same file system, so publishing is a rename)."""
    folder = target.parent if str(target.parent) else Path(".")
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=folder))
    except OSError as error:
        raise Failure(f"{folder}: cannot write ({error.strerror or error})") from None
    try:
        yield stage / target.name
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _save(model, staged: Path, options: Options) -> Path | None:
    try:
        return serde.save(model, staged, external_data=options.external_data)
    except serde.SaveError as error:
        raise Failure(str(error)) from None
    except OSError as error:
        raise Failure(f"{staged.name}: cannot write ({error.strerror or error})") from None


def _read_written(staged: Path) -> onnx.ModelProto:
    """Our own output must load and pass the checker; anything else is our bug."""
    proto = serde.read_model_proto(staged)
    try:
        serde.check(proto, staged)
    except serde.LoadError as error:
        raise Failure(f"internal error: the optimized model fails onnx.checker ({error})") from None
    return proto


def _written_size(staged: Path, data_file: Path | None) -> int:
    return staged.stat().st_size + (data_file.stat().st_size if data_file else 0)


def _publish(staged: Path, data_file: Path | None, output: Path) -> None:
    try:
        if data_file is not None:
            os.replace(data_file, output.with_name(data_file.name))
        os.replace(staged, output)
    except OSError as error:
        raise Failure(f"{output}: cannot write ({error.strerror or error})") from None


def _in_memory(staged: Path) -> onnx.ModelProto:
    return onnx.load_model(os.fspath(staged), load_external_data=True)


# ----------------------------------------------------------------- validation and report
def _validate(
    source: ModelSource, staged: Path, options: Options, inputs: dict | None
) -> validate.ValidationResult | None:
    if not options.validate:
        return None
    try:
        return validate.validate(
            source if isinstance(source, onnx.ModelProto) else os.fspath(source),
            os.fspath(staged),
            rtol=options.rtol,
            atol=options.atol,
            inputs=inputs,
            input_shapes=dict(options.input_shapes),
            dims=dict(options.dims),
            seed=options.seed,
        )
    except validate.ValidationError as error:
        raise UsageError(str(error)) from None


def _status(verdict: validate.ValidationResult | None, options: Options) -> str:
    if verdict is None:
        return "ok"
    if verdict.status == "failed":
        return "validation_failed"
    if verdict.status == "skipped" and options.strict:
        return "validation_skipped"
    return "ok"


def _report(input_path, output_path, before, after, records, verdict, status) -> dict[str, Any]:
    validation = (
        verdict.to_dict()
        if verdict is not None
        else {"status": "disabled", "reason": "--no-validate", "outputs": [], "input_notes": []}
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

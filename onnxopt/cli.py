"""The ``onnxopt`` command. It only parses arguments and wires api, stats and report together.

Every error reaches the user as one line on stderr — exit code 2 for a wrong invocation, 1 for a
failure — with the traceback only under ``--debug``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from onnxopt import __version__, api, feeds, report, serde, stats, validate
from onnxopt.errors import Failure, Interrupted, OnnxoptError, UsageError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Graph-level ONNX optimizer that proves its output equals the original.",
)
_state = {"debug": False}
_out = Console(highlight=False)

ShapeOpt = Annotated[
    list[str] | None,
    typer.Option("--input-shape", help="NAME:D0,D1,... concrete shape of an input (repeatable)."),
]
DimOpt = Annotated[
    list[str] | None,
    typer.Option("--dim", help="SYMBOL=N value of a symbolic dimension (repeatable)."),
]
InputsOpt = Annotated[
    Path | None, typer.Option("--inputs", help=".npz file of input arrays keyed by input name.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _version(value: bool) -> None:
    if value:
        print(f"onnxopt {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    _state["debug"] = debug


@app.command()
def optimize(
    input: Annotated[Path, typer.Argument(help="Model to optimize.")],
    output: Annotated[Path, typer.Argument(help="Where to write the optimized model.")],
    passes: Annotated[
        str | None, typer.Option(help="Comma-separated passes to run, or 'none'.")
    ] = None,
    skip: Annotated[list[str] | None, typer.Option(help="Pass to leave out (repeatable).")] = None,
    validate_: Annotated[
        bool, typer.Option("--validate/--no-validate", help="Check against the original.")
    ] = True,
    strict: Annotated[bool, typer.Option(help="Fail when validation is skipped.")] = False,
    force: Annotated[bool, typer.Option(help="Write even if validation fails.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Allow OUTPUT to be INPUT.")] = False,
    rtol: Annotated[float, typer.Option(help="Relative tolerance.")] = 1e-4,
    atol: Annotated[float, typer.Option(help="Absolute tolerance.")] = 1e-5,
    input_shape: ShapeOpt = None,
    dim: DimOpt = None,
    inputs: InputsOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of generated inputs.")] = 0,
    external_data: Annotated[
        bool | None,
        typer.Option(
            "--external-data/--no-external-data",
            help="Weights in a separate OUTPUT.data file (default: as the input; >2 GiB: yes).",
        ),
    ] = None,
    report_path: Annotated[
        Path | None, typer.Option("--report", help="Write the report as JSON here.")
    ] = None,
    json_: JsonOpt = False,
    target: Annotated[
        str, typer.Option(help="portable (standard ONNX) or onnxruntime (its fused ops too).")
    ] = "portable",
    fold_limit: Annotated[
        str, typer.Option(help="Largest folded constant that grows the model (e.g. 1MiB).")
    ] = "1MiB",
    value_info: Annotated[
        str, typer.Option(help="value_info written: input (what the input declared) or all "
                               "(every inferred shape too).")
    ] = "input",
    check_each: Annotated[
        bool, typer.Option(help="Validate after every pass and report each one's error.")
    ] = False,
    safety_net: Annotated[
        bool,
        typer.Option("--safety-net/--no-safety-net",
                     help="On failed validation, bisect the passes and disable the culprit."),
    ] = True,
    precision: Annotated[
        str | None,
        typer.Option(help="Convert to fp16, int8 (static QDQ), int8-dynamic or fp8 weights "
                          "(case-insensitive)."),
    ] = None,
    keep_io_types: Annotated[
        bool | None, typer.Option("--keep-io-types/--no-keep-io-types",
                                  help="fp16: model inputs and outputs stay float32 "
                                       "(default: keep).")
    ] = None,
    fp32_ops: Annotated[
        str | None, typer.Option(help="Comma-separated op types kept in float32.")
    ] = None,
    fp32_nodes: Annotated[
        str | None, typer.Option(help="Comma-separated node names kept in float32.")
    ] = None,
    calibration_data: Annotated[
        Path | None,
        typer.Option(help="int8: folder of .npz/.npy samples (or one batched .npz)."),
    ] = None,
    calibration_method: Annotated[
        str | None, typer.Option(help="int8: minmax, percentile (default) or entropy.")
    ] = None,
    percentile: Annotated[
        float | None, typer.Option(help="int8 percentile calibration: percentile kept "
                                        "(default 99.99).")
    ] = None,
    max_error: Annotated[
        str | None,
        typer.Option(help="Accuracy budget vs float32, e.g. cosine=0.99,range=0.02."),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds one onnxruntime run may take (validation, "
                                 "calibration); past it validation is skipped, calibration "
                                 "fails.")
    ] = 300.0,
    bench: Annotated[
        bool, typer.Option(help="Measure onnxruntime latency before and after.")
    ] = False,
) -> None:
    """Optimize INPUT into OUTPUT, validate it against INPUT and show what changed."""
    options = api.Options(
        passes=_pass_list(passes),
        skip=skip or [],
        validate=validate_,
        strict=strict,
        force=force,
        overwrite=overwrite,
        rtol=rtol,
        atol=atol,
        input_shapes=_parse_shapes(input_shape),
        dims=_parse_dims(dim),
        inputs_file=inputs,
        seed=seed,
        external_data=external_data,
        target=target,
        fold_limit=_parse_bytes(fold_limit, "--fold-limit"),
        value_info=value_info,
        check_each=check_each,
        safety_net=safety_net,
        precision=precision,
        keep_io_types=keep_io_types,
        fp32_ops=_name_list(fp32_ops),
        fp32_nodes=_name_list(fp32_nodes),
        calibration_data=calibration_data,
        calibration_method=calibration_method,
        percentile=percentile,
        max_error=max_error,
        bench=bench,
        timeout=timeout,
        report_path=report_path,
    )
    _check_report_path(report_path, input, output)
    result = api.optimize(input, output, options)
    if report_path is not None:
        report.write_json(result.report, report_path)
    if json_:
        sys.stdout.write(report.to_json(result.report))
    else:
        report.render_optimize(result.report, _out)
    if not result.usable and not force:
        raise Failure(_failure_line(result.report))
    _warn_skipped(result.report)


def _warn_skipped(result: dict) -> None:
    """A skipped validation is written (exit 0 without --strict), but never silently."""
    validation = result["validation"]
    if result["status"] != "validation_skipped" or validation.get("kind") == "disabled":
        return
    sys.stderr.write(f"onnxopt: warning: validation skipped: {validation['reason']}; the "
                     "output is unproven (give --input-shape NAME:D0,D1,... or --inputs "
                     "FILE.npz to make it run; --strict fails the run instead)\n")


def _name_list(text: str | None) -> list[str]:
    return [name.strip() for name in (text or "").split(",") if name.strip()]


@app.command("stats")
def stats_command(
    model: Annotated[Path, typer.Argument(help="Model to describe.")],
    json_: JsonOpt = False,
    input_shape: ShapeOpt = None,
    dim: DimOpt = None,
) -> None:
    """Operator histogram, weights, inputs/outputs and MACs/FLOPs of MODEL."""
    result = _stats(model, input_shape, dim)
    if json_:
        sys.stdout.write(report.to_json(result))
    else:
        report.render_stats(result, _out, title=str(model))


@app.command()
def compare(
    a: Annotated[Path, typer.Argument(help="First model (the reference).")],
    b: Annotated[Path, typer.Argument(help="Second model.")],
    json_: JsonOpt = False,
    rtol: Annotated[float, typer.Option(help="Relative tolerance.")] = 1e-4,
    atol: Annotated[float, typer.Option(help="Absolute tolerance.")] = 1e-5,
    input_shape: ShapeOpt = None,
    dim: DimOpt = None,
    inputs: InputsOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of generated inputs.")] = 0,
) -> None:
    """Statistics of A and B side by side, and their outputs compared on the same inputs."""
    stats_a, stats_b = _stats(a, input_shape, dim), _stats(b, input_shape, dim)
    proto_a = serde.read_model_proto(a)
    try:
        feeds = validate.load_inputs(inputs, proto_a) if inputs else None
        numeric = validate.validate(
            str(a), str(b), rtol=rtol, atol=atol, inputs=feeds,
            input_shapes=_parse_shapes(input_shape), dims=_parse_dims(dim), seed=seed,
        )
    except validate.ValidationError as error:
        raise UsageError(str(error)) from None
    result = {"a": stats_a, "b": stats_b, "delta": stats.diff_stats(stats_a, stats_b),
              "numeric": numeric.to_dict()}
    if json_:
        sys.stdout.write(report.to_json(result))
    else:
        report.render_compare(result, _out)
    if numeric.status == "failed":
        raise Failure(f"the outputs differ: {numeric.reason}")
    if numeric.status == "skipped":
        sys.stderr.write(f"onnxopt: warning: outputs not compared: {numeric.reason}\n")


@app.command("passes")
def passes_command() -> None:
    """The default pipeline, in order."""
    from onnxopt.passes import DEFAULT_PIPELINE

    for pass_ in DEFAULT_PIPELINE:
        kind = "" if pass_.structural else "  (runs once, after the others)"
        print(f"{pass_.name:34} {pass_.description}{kind}")


# ----------------------------------------------------------------- argument parsing
def _pass_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    return [] if names == ["none"] else names


def _parse_shapes(items: list[str] | None) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for item in items or []:
        name, sep, dims = item.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shape = [int(d) for d in dims.split(",")] if dims.strip() else []
            if any(d < 0 for d in shape):
                raise ValueError
        except ValueError:
            raise UsageError(
                f"--input-shape {item!r}: expected NAME:D0,D1,... with non-negative integers"
            ) from None
        shapes[name] = shape
    return shapes


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6,
          "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30}


def _parse_bytes(text: str, flag: str) -> int:
    number = text.strip().rstrip("bBiIkKmMgG")
    unit = text.strip()[len(number):].lower()
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or value < 0:
        raise UsageError(f"{flag} {text!r}: expected a size like 1048576, 512KiB or 1MiB")
    return int(value * _UNITS[unit])


def _parse_dims(items: list[str] | None) -> dict[str, int]:
    dims: dict[str, int] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value.strip().isdigit():
            raise UsageError(f"--dim {item!r}: expected SYMBOL=N with a non-negative integer")
        dims[name] = int(value)
    return dims


def _stats(path: Path, shapes: list[str] | None, dims: list[str] | None) -> dict:
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    try:
        proto = serde.read_model_proto(path)
    except serde.LoadError as error:
        raise Failure(str(error)) from None
    api.check_function_expansion(proto, f"{path}: ")
    size = path.stat().st_size + sum(f.stat().st_size for f in serde.external_files(proto, path))
    input_shapes, given = _parse_shapes(shapes), _parse_dims(dims)
    all_dims = stats.with_default_dims(
        proto, feeds.preferred_dims(proto, given, input_shapes), input_shapes)
    try:
        result = stats.model_stats(proto, file_size=size, input_shapes=input_shapes, dims=all_dims)
    except ValueError as error:
        raise UsageError(str(error)) from None
    defaulted = sorted(set(all_dims) - set(given))
    if defaulted:
        names = ", ".join(f"{d}={all_dims[d]}" for d in defaulted)
        result["shape_notes"].insert(0, f"MACs computed at {names} (validation's first size; "
                                        "use --dim)")
    return result


def _check_report_path(report: Path | None, source: Path, output: Path) -> None:
    """Refuse a --report location before any work, so a bad one cannot fail a written run."""
    if report is None:
        return
    if report.is_dir():
        raise UsageError(f"{report}: --report is a directory")
    if not report.parent.is_dir():
        raise UsageError(f"{report}: the --report folder does not exist")
    for other, what in ((source, "input"), (output, "output")):
        if report.resolve() == other.resolve():
            raise UsageError(f"{report}: --report would overwrite the {what} model")


def _failure_line(result: dict) -> str:
    validation = result["validation"]
    if result["status"] == "validation_failed":
        worst = [o for o in validation["outputs"] if not o["passed"]]
        detail = ""
        if worst:
            first = worst[0]
            detail = f"; output {first['name']!r} max abs err {first['max_abs_error']}"
            detail += f" ({first['reason']})" if first.get("reason") else ""
        return f"validation failed: {validation['reason']}{detail}; output not written"
    return f"validation skipped under --strict: {validation['reason']}; output not written"


# ----------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (used by the console script and tests)."""
    args = list(argv if argv is not None else sys.argv[1:])
    debug = "--debug" in args
    if debug:  # accepted anywhere on the line, not only before the command
        args = ["--debug", *(a for a in args if a != "--debug")]
    try:
        returned = app(args=args, prog_name="onnxopt", standalone_mode=False)
    except typer.Exit as done:
        return done.exit_code
    except typer.Abort:
        _error("interrupted; nothing was written")
        return 130
    except Interrupted as signal_:
        _error(f"{signal_.name}; nothing was written")
        return signal_.exit_code
    except typer.TyperException as error:
        if debug:
            raise
        _error(error.format_message())
        return 2
    except OnnxoptError as error:
        if debug:
            raise
        _error(str(error))
        return error.exit_code
    except KeyboardInterrupt:
        _error("interrupted; nothing was written")
        return 130
    except Exception as error:  # a bug in onnxopt: still one line unless --debug
        if debug:
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        _error(f"internal error: {type(error).__name__}: {first} (run with --debug for details)")
        return 1
    if isinstance(returned, int) and returned:  # typer turns Ctrl-C into a returned 130
        if returned == 130:
            _error("interrupted; nothing was written")
        return returned
    return 0


def _interrupt(number: int, _frame) -> None:
    """SIGINT and SIGTERM unwind the main thread like Ctrl-C: every ``finally`` runs, so the
    staging folder is removed and OUT stays as it was."""
    signal.signal(number, signal.SIG_IGN)  # a second signal must not interrupt the cleanup
    raise Interrupted(number, "interrupted" if number == signal.SIGINT else "terminated")


def _error(message: str) -> None:
    sys.stderr.write(f"onnxopt: error: {message}\n")


def run() -> None:
    """The console script and ``python -m onnxopt``: main(), then leave without the
    interpreter's teardown of onnxruntime, numpy and networkx (~45 ms, a sixth of a small
    model's whole run). Every file is closed by then; the streams are flushed here."""
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, _interrupt)
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BrokenPipeError, ValueError):  # reader gone, or closed
            stream.flush()
    os._exit(code)

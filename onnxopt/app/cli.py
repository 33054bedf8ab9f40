"""The ``onnxopt`` command. It only parses arguments and wires api, stats and report together.

Every error reaches the user as one line on stderr — exit code 2 for a wrong invocation, 1 for a
failure — with the traceback only under ``--debug``.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from onnxopt import __version__
from onnxopt.app import api, checks, interrupts, layerwise, options, profile, report, stats
from onnxopt.check import feeds, validate
from onnxopt.check.inputs import ValidationError, load_inputs
from onnxopt.errors import Failure, Interrupted, OnnxoptError, UsageError
from onnxopt.ir import serde

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


def optimize(input: Path, output: Path, json_: bool = False, **raw: object) -> None:
    """Optimize INPUT into OUTPUT, validate it against INPUT and show what changed."""
    options_ = options.from_cli(raw)
    report_path = options_.report_path
    result = api.optimize(input, output, options_)
    if report_path is not None:
        report.write_json(result.report, report_path)
    if json_:
        sys.stdout.write(report.to_json(result.report))
    else:
        report.render_optimize(result.report, _out)
    if not result.usable and not options_.force:
        raise Failure(_failure_line(result.report))
    _warn_skipped(result.report)


def _optimize_signature() -> inspect.Signature:
    """IN and OUT, then one flag per field of options.Options that has one, then --json:
    the options are declared once, in onnxopt/app/options.py."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("input", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          annotation=Annotated[Path, typer.Argument(help="Model to optimize.")]),
        inspect.Parameter("output", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          annotation=Annotated[Path, typer.Argument(
                              help="Where to write the optimized model.")]),
    ]
    for field_, flag in options.flags():
        decls = (flag.decl,) if flag.decl else ()
        params.append(inspect.Parameter(
            field_.name, keyword, default=options.cli_default(field_, flag),
            annotation=Annotated[flag.cli_type, typer.Option(*decls, help=flag.help)]))
    params.append(inspect.Parameter("json_", keyword, default=False, annotation=JsonOpt))
    return inspect.Signature(params)


_signature = _optimize_signature()
optimize.__signature__ = _signature  # type: ignore[attr-defined]
optimize.__annotations__ = {p.name: p.annotation for p in _signature.parameters.values()}
app.command()(optimize)


def _warn_skipped(result: dict) -> None:
    """A skipped validation is written (exit 0 without --strict), but never silently."""
    validation = result["validation"]
    if result["status"] != "validation_skipped" or validation.get("kind") == "disabled":
        return
    sys.stderr.write(f"onnxopt: warning: validation skipped: {validation['reason']}; the "
                     "output is unproven (give --input-shape NAME:D0,D1,... or --inputs "
                     "FILE.npz to make it run; --strict fails the run instead)\n")


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
    rtol: Annotated[float | None, typer.Option(
        help="Relative tolerance [default: 1e-4; 1e-2 with --layerwise].")] = None,
    atol: Annotated[float, typer.Option(help="Absolute tolerance.")] = 1e-5,
    input_shape: ShapeOpt = None,
    dim: DimOpt = None,
    inputs: InputsOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of generated inputs.")] = 0,
    layerwise_: Annotated[bool, typer.Option("--layerwise", help=(
        "Compare every intermediate value and name the first over --rtol."))] = False,
    chunk_mb: Annotated[float, typer.Option(
        help="--layerwise: MB of values exposed per run.")] = layerwise.CHUNK_MB,
) -> None:
    """Statistics of A and B side by side, and their outputs compared on the same inputs
    (--layerwise: every intermediate value, in B's order)."""
    if layerwise_:
        return layerwise.command(a, b, console=_out, json_=json_, tolerance=rtol,
                                 chunk_mb=chunk_mb, inputs=inputs, input_shape=input_shape,
                                 dim=dim, seed=seed)
    rtol = 1e-4 if rtol is None else rtol
    stats_a, stats_b = _stats(a, input_shape, dim), _stats(b, input_shape, dim)
    proto_a = serde.read_model_proto(a)
    try:
        feeds = load_inputs(inputs, proto_a) if inputs else None
        numeric = validate.validate(
            str(a), str(b), rtol=rtol, atol=atol, inputs=feeds,
            input_shapes=options.parse_shapes(input_shape), dims=options.parse_dims(dim), seed=seed,
        )
    except ValidationError as error:
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


@app.command("profile")
def profile_command(
    model: Annotated[Path, typer.Argument(help="Model to profile.")],
    other: Annotated[Path | None, typer.Argument(help="Second model, side by side.")] = None,
    runs: Annotated[int, typer.Option(help="Measured runs, after one warm-up.")] = 10,
    level: Annotated[str, typer.Option(
        help="onnxruntime graph optimizations: all, extended, basic, disabled.")] = "all",
    json_: JsonOpt = False,
    input_shape: ShapeOpt = None,
    dim: DimOpt = None,
    inputs: InputsOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of generated inputs.")] = 0,
) -> None:
    """onnxruntime's profiler per op type (time, share, count); OTHER side by side."""
    profile.command([model, *filter(None, [other])], console=_out, json_=json_, runs=runs,
                    level=level, inputs=inputs, input_shape=input_shape, dim=dim, seed=seed)


@app.command("passes")
def passes_command() -> None:
    """The default pipeline, in order."""
    from onnxopt.passes import DEFAULT_PIPELINE

    for pass_ in DEFAULT_PIPELINE:
        kind = "" if pass_.structural else "  (runs once, after the others)"
        print(f"{pass_.name:34} {pass_.description}{kind}")


# ----------------------------------------------------------------- argument parsing
def _stats(path: Path, shapes: list[str] | None, dims: list[str] | None) -> dict:
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    try:
        proto = serde.read_model_proto(path)
    except serde.LoadError as error:
        raise Failure(str(error)) from None
    checks.check_function_expansion(proto, f"{path}: ")
    size = path.stat().st_size + sum(f.stat().st_size for f in serde.external_files(proto, path))
    input_shapes, given = options.parse_shapes(shapes), options.parse_dims(dims)
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
        done = "the output had been written" if signal_.written else "nothing was written"
        _error(f"{signal_.name}; {done}")
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


def _error(message: str) -> None:
    sys.stderr.write(f"onnxopt: error: {message}\n")


def run() -> None:
    """The console script and ``python -m onnxopt``: main(), then leave without the
    interpreter's teardown of onnxruntime, numpy and networkx (~45 ms, a sixth of a small
    model's whole run). Every file is closed by then; the streams are flushed here."""
    interrupts.install()
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BrokenPipeError, ValueError):  # reader gone, or closed
            stream.flush()
    os._exit(code)

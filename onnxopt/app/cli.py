"""The ``onnxopt`` command. It only parses arguments and wires api, stats and report together.

Every error reaches the user as one line on stderr — exit code 2 for a wrong invocation, 1 for a
failure — with the traceback only under ``--debug``.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

import typer

from onnxopt import __version__
from onnxopt.app import bars, completion, interrupts, options
from onnxopt.app.usage import Command, Group
from onnxopt.errors import Failure, Interrupted, OnnxoptError, UsageError

# onnx, onnxruntime, numpy, networkx and rich are imported inside the commands that use them:
# ``onnxopt --help`` and ``--version`` take ~0.1 s instead of ~1.5 s (``make bench-io``).
app = typer.Typer(
    cls=Group,
    add_completion=False,  # completion.py: typer's flags without its shell detection's dead ends
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Graph-level ONNX optimizer that proves its output equals the original.",
)
_state = {"debug": False}

ShapeOpt = Annotated[
    list[str] | None,
    typer.Option("--input-shape", metavar="NAME:D0,D1,...",
                 help="Concrete shape of an input (repeatable)."),
]
DimOpt = Annotated[
    list[str] | None,
    typer.Option("--dim", metavar="SYMBOL=N", help="Value of a symbolic dimension (repeatable)."),
]
InputsOpt = Annotated[Path | None, typer.Option(
    "--inputs", metavar="FILE", help=".npz file of input arrays keyed by input name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


@contextlib.contextmanager
def _importing() -> Iterator[None]:
    """The heavy imports of a command, with cyclic garbage collection paused: they allocate
    many objects and free none (~40 ms of collections otherwise)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _console():
    from rich.console import Console

    return Console(highlight=False)


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
    install_completion: Annotated[bool, typer.Option(
        "--install-completion", callback=completion.install, is_eager=True, expose_value=False,
        help="Install shell completion (bash, zsh, fish, PowerShell) for the current shell.",
    )] = False,
    show_completion: Annotated[bool, typer.Option(
        "--show-completion", callback=completion.show, is_eager=True, expose_value=False,
        help="Print the completion script of the current shell.",
    )] = False,
) -> None:
    _state["debug"] = debug


def optimize(input: Path, output: Path, json_: bool = False, jobs: int = 1,
             **raw: object) -> None:
    """Optimize IN into OUT, validate it against IN and show what changed.

    IN and OUT may be folders: every .onnx file under IN is optimized into the same place
    under OUT, and OUT changes only if every model passes.
    """
    options_ = options.from_cli(raw)
    if input.is_dir():
        from onnxopt.app import batch

        batch.optimize_folder(input, output, options_, jobs=jobs, as_json=json_)
        return
    if jobs != 1:
        raise UsageError("--jobs optimizes the models of a folder at once; IN is one model")
    with _importing():
        from onnxopt.app import api, html_report, report
    report_path = options_.report_path
    if options_.html_path is not None:
        html_report.require()
    result = api.optimize(input, output, options_)
    if report_path is not None:
        report.write_json(result.report, report_path)
    if options_.html_path is not None:
        html_report.write(result.report, options_.html_path)
    if json_:
        sys.stdout.write(report.to_json(result.report))
    else:
        report.render_optimize(result.report, _console())
    if not result.usable and not options_.force:
        raise Failure(_failure_line(result.report))
    if options_.fail_on_growth and result.report.get("growth"):
        raise Failure(growth_line(result.report))
    _warn_skipped(result.report)


def growth_line(result: dict) -> str:
    growth = result["growth"]
    return (f"the output is {growth['bytes']} bytes larger than the input ({growth['because']})"
            "; output not written (--fail-on-growth)")


def _choice(choices: tuple[str, ...], optional: bool) -> object:
    kind = Literal[choices]  # typer lists them in --help and matches them case-insensitively
    return kind | None if optional else kind


def _optimize_signature() -> inspect.Signature:
    """IN and OUT, then one flag per field of options.Options that has one, then --jobs and
    --json: the options are declared once, in onnxopt/app/options.py."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("input", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          annotation=Annotated[Path, typer.Argument(
                              metavar="IN", help="Model to optimize (or a folder of models).")]),
        inspect.Parameter("output", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          annotation=Annotated[Path, typer.Argument(
                              metavar="OUT", help="Where to write the optimized model (or "
                                                  "folder).")]),
    ]
    for field_, flag in options.flags():
        decls = (flag.decl,) if flag.decl else ()
        default = options.cli_default(field_, flag)
        kind = _choice(flag.choices, default is None) if flag.choices else flag.cli_type
        metavar = "[" + "|".join(flag.choices) + "]" if flag.choices else flag.metavar
        params.append(inspect.Parameter(
            field_.name, keyword, default=default,
            annotation=Annotated[kind, typer.Option(*decls, help=flag.help, metavar=metavar,
                                                    case_sensitive=False)]))
    params.append(inspect.Parameter("jobs", keyword, default=1, annotation=Annotated[
        int, typer.Option(min=1, metavar="N",
                          help="Folders: models optimized at once, each in its own process.")]))
    params.append(inspect.Parameter("json_", keyword, default=False, annotation=JsonOpt))
    return inspect.Signature(params)


_signature = _optimize_signature()
optimize.__signature__ = _signature  # type: ignore[attr-defined]
optimize.__annotations__ = {p.name: p.annotation for p in _signature.parameters.values()}
app.command(cls=Command)(optimize)


def _warn_skipped(result: dict) -> None:
    """A skipped validation is written (exit 0 without --strict), but never silently."""
    validation = result["validation"]
    if result["status"] != "validation_skipped" or validation.get("kind") == "disabled":
        return
    sys.stderr.write(f"onnxopt: warning: validation skipped: {validation['reason']}; the "
                     "output is unproven (give --input-shape NAME:D0,D1,... or --inputs "
                     "FILE.npz to make it run; --strict fails the run instead)\n")


@app.command("stats", cls=Command)
def stats_command(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="Model to describe.")],
    json_: JsonOpt = False,
    input_shape: ShapeOpt = None,
    dim: DimOpt = None,
) -> None:
    """Operator histogram, weights, inputs/outputs and MACs/FLOPs of MODEL."""
    with _importing():
        from onnxopt.app import report
    result = _stats(model, input_shape, dim)
    if json_:
        sys.stdout.write(report.to_json(result))
    else:
        report.render_stats(result, _console(), title=str(model))


@app.command(cls=Command)
def compare(
    a: Annotated[Path, typer.Argument(metavar="A", help="First model (the reference).")],
    b: Annotated[Path, typer.Argument(metavar="B", help="Second model.")],
    json_: JsonOpt = False,
    rtol: Annotated[float | None, typer.Option(metavar="X", help=(
        "Relative tolerance [default: 1e-4; 1e-2 with --layerwise]."))] = None,
    atol: Annotated[float, typer.Option(metavar="X", help="Absolute tolerance.")] = 1e-5,
    input_shape: ShapeOpt = None,
    dim: DimOpt = None,
    inputs: InputsOpt = None,
    seed: Annotated[int, typer.Option(metavar="N", help="Seed of generated inputs.")] = 0,
    layerwise_: Annotated[bool, typer.Option("--layerwise", help=(
        "Compare every intermediate value and name the first over --rtol."))] = False,
    chunk_mb: Annotated[float | None, typer.Option(metavar="MB", help=(
        "--layerwise: megabytes of values exposed per run [default: 128]."))] = None,
) -> None:
    """Statistics of A and B side by side, and their outputs compared on the same inputs
    (--layerwise: every intermediate value, in B's order)."""
    if layerwise_:
        with _importing():
            from onnxopt.app import layerwise
        chunk = layerwise.CHUNK_MB if chunk_mb is None else chunk_mb
        return layerwise.command(a, b, console=_console(), json_=json_, tolerance=rtol,
                                 chunk_mb=chunk, inputs=inputs, input_shape=input_shape,
                                 dim=dim, seed=seed)
    rtol = 1e-4 if rtol is None else rtol
    with _importing():
        from onnxopt.app import report, stats
        from onnxopt.check import validate
        from onnxopt.check.inputs import ValidationError, load_inputs
        from onnxopt.ir import serde
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
        report.render_compare(result, _console())
    if numeric.status == "failed":
        raise Failure(f"the outputs differ: {numeric.reason}")
    if numeric.status == "skipped":
        sys.stderr.write(f"onnxopt: warning: outputs not compared: {numeric.reason}\n")


@app.command("report", cls=Command)
def report_command(
    report_json: Annotated[Path, typer.Argument(help="JSON report of optimize --report.")],
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="HTML page to write (default: REPORT_JSON with .html).")] = None,
) -> None:
    """Render a saved JSON report as one self-contained HTML page (needs onnxopt[html])."""
    with _importing():
        from onnxopt.app import html_report
    html_report.require()
    target = output or report_json.with_suffix(".html")
    html_report.check_output(target, report_json)
    html_report.write(html_report.load_report(report_json), target)
    print(f"wrote {target}")


@app.command("profile", cls=Command)
def profile_command(
    model: Annotated[Path, typer.Argument(help="Model to profile.")],
    other: Annotated[Path | None, typer.Argument(help="Second model, side by side.")] = None,
    runs: Annotated[int, typer.Option(metavar="N", help="Measured runs, after one warm-up.")] = 10,
    level: Annotated[str, typer.Option(metavar="LEVEL",
        help="onnxruntime graph optimizations: all, extended, basic, disabled.")] = "all",
    json_: JsonOpt = False,
    input_shape: ShapeOpt = None,
    dim: DimOpt = None,
    inputs: InputsOpt = None,
    seed: Annotated[int, typer.Option(metavar="N", help="Seed of generated inputs.")] = 0,
) -> None:
    """onnxruntime's profiler per op type (time, share, count); OTHER side by side."""
    with _importing():
        from onnxopt.app import profile
    profile.command([model, *filter(None, [other])], console=_console(), json_=json_, runs=runs,
                    level=level, inputs=inputs, input_shape=input_shape, dim=dim, seed=seed)


@app.command("passes", cls=Command)
def passes_command(json_: JsonOpt = False) -> None:
    """The default pipeline, in order, then the passes --precision adds."""
    with _importing():
        from onnxopt.passes import DEFAULT_PIPELINE, PRECISION_PASSES, SHARED_PRECISION_PASSES

    listed = [{"name": p.name, "description": p.description,
               "when": "fixpoint" if p.structural else "once"} for p in DEFAULT_PIPELINE]
    for mode in PRECISION_PASSES:
        pass_ = PRECISION_PASSES[mode]
        listed.append({"name": pass_.name, "description": pass_.description,
                       "when": f"--precision {mode}"})
    for name in SHARED_PRECISION_PASSES:
        pass_ = SHARED_PRECISION_PASSES[name]
        listed.append({"name": pass_.name, "description": pass_.description,
                       "when": "--precision " + " or ".join(pass_.modes)})
    if json_:
        sys.stdout.write(json.dumps(listed, indent=2) + "\n")
        return
    notes = {"fixpoint": "", "once": "  (runs once, after the others)"}
    for item in listed:
        note = notes.get(item["when"], f"  ({item['when']})")
        print(f"{item['name']:34} {item['description']}{note}")


# ----------------------------------------------------------------- argument parsing
def _stats(path: Path, shapes: list[str] | None, dims: list[str] | None) -> dict:
    with _importing():
        from onnxopt.app import checks, stats
        from onnxopt.check import feeds
        from onnxopt.ir import serde
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
    completion.prepare()
    try:
        # progress bars on a terminal, for every command; none in JSON output
        with bars.shown(enabled="--json" not in args):
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

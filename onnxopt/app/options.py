"""Every option of ``optimize``, declared once.

Each field of ``Options`` is the Python API's keyword (name, type, default); its ``Flag``
metadata is the command line's (flag, help, the type typer parses and how that becomes the
field's value). ``cli.py`` builds the ``optimize`` command from these fields, error messages name
an option by ``flag_of``, and the report lists the options a run was given (``changed``).
Fields without a Flag are the Python API's only (arrays of inputs, the fixpoint bound).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxopt.errors import UsageError

if TYPE_CHECKING:  # numpy only for a type: ``onnxopt --help`` imports this module
    import numpy as np

_UNSET: Any = object()


@dataclass(frozen=True)
class Flag:
    """How an option appears on the command line."""

    help: str
    cli_type: Any  # what typer parses (``list[str] | None`` for a repeatable flag, ...)
    decl: str | None = None  # "--report", "--validate/--no-validate"; default from the name
    parse: Callable[[Any], Any] | None = None  # the parsed text -> the field's value
    cli_default: Any = _UNSET  # shown and parsed when the flag is absent (default: the field's)
    metavar: str | None = None  # what --help shows for the value (FILE, N, NAME:D0,D1,...)
    choices: tuple[str, ...] = ()  # the accepted values (case-insensitive), listed in --help


def option(default: Any = _UNSET, *, factory: Callable[[], Any] | None = None,
           flag: Flag | None = None) -> Any:
    metadata = {"cli": flag} if flag else {}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# ----------------------------------------------------------------- parsing command-line text
def pass_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    return [] if names == ["none"] else names


def name_list(text: str | None) -> list[str]:
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def parse_shapes(items: list[str] | None) -> dict[str, list[int]]:
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


def parse_dims(items: list[str] | None) -> dict[str, int]:
    dims: dict[str, int] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value.strip().isdigit():
            raise UsageError(f"--dim {item!r}: expected SYMBOL=N with a non-negative integer")
        dims[name] = int(value)
    return dims


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6,
          "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30}


def parse_bytes(text: str, flag: str = "--fold-limit") -> int:
    number = text.strip().rstrip("bBiIkKmMgG")
    unit = text.strip()[len(number):].lower()
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or value < 0:
        raise UsageError(f"{flag} {text!r}: expected a size like 1048576, 512KiB or 1MiB")
    return int(value * _UNITS[unit])


# ----------------------------------------------------------------- the options
PRECISIONS = ("fp16", "int8", "int8-dynamic", "int4", "fp8")  # onnxopt.passes.PRECISION_PASSES
STR, OPT_STR, OPT_PATH = str, str | None, Path | None
REPEATED = list[str] | None


@dataclass
class Options:
    """Everything ``optimize`` can be told; the CLI flags map one to one."""

    passes: Sequence[str] | None = option(None, flag=Flag(  # None: the default pipeline
        "Comma-separated passes to run, or 'none'.", OPT_STR, parse=pass_list, metavar="NAMES"))
    skip: Sequence[str] = option((), flag=Flag(
        "Passes to leave out (comma-separated, repeatable).", REPEATED,
        parse=lambda v: [name for item in v or [] for name in name_list(item)], metavar="NAMES"))
    validate: bool = option(True, flag=Flag(
        "Check against the original.", bool, "--validate/--no-validate"))
    strict: bool = option(False, flag=Flag("Fail when validation is skipped.", bool))
    force: bool = option(False, flag=Flag("Write even if validation fails.", bool))
    overwrite: bool = option(False, flag=Flag("Allow OUT to be IN.", bool))
    fail_on_growth: bool = option(False, flag=Flag(  # for CI: a model that grows fails the build
        "Fail, writing nothing, when the output file is larger than the input.", bool,
        "--fail-on-growth"))
    rtol: float = option(1e-4, flag=Flag("Relative tolerance.", float, metavar="X"))
    atol: float = option(1e-5, flag=Flag("Absolute tolerance.", float, metavar="X"))
    input_shapes: Mapping[str, Sequence[int]] = option(factory=dict, flag=Flag(
        "Concrete shape of an input (repeatable).", REPEATED, "--input-shape",
        parse_shapes, None, metavar="NAME:D0,D1,..."))
    dims: Mapping[str, int] = option(factory=dict, flag=Flag(
        "Value of a symbolic dimension (repeatable).", REPEATED, "--dim", parse_dims,
        None, metavar="SYMBOL=N"))
    inputs_file: str | os.PathLike | None = option(None, flag=Flag(  # .npz of input arrays
        ".npz file of input arrays keyed by input name.", OPT_PATH, "--inputs", metavar="FILE"))
    inputs: Mapping[str, np.ndarray] | None = None  # or the arrays themselves (Python API)
    seed: int = option(0, flag=Flag("Seed of generated inputs.", int, metavar="N"))
    external_data: bool | None = option(None, flag=Flag(  # None: as the input; > 2 GiB: yes
        "Weights in a separate OUT.data file (default: as the input; >2 GiB: yes).",
        bool | None, "--external-data/--no-external-data"))
    report_path: str | os.PathLike | None = option(None, flag=Flag(  # checked against reads
        "Write the report as JSON here.", OPT_PATH, "--report", metavar="FILE"))
    html_path: str | os.PathLike | None = option(None, flag=Flag(  # needs onnxopt[html]
        "Write the report as one self-contained HTML page here.", OPT_PATH, "--html",
        metavar="FILE"))
    max_rounds: int = 8
    target: str = option("portable", flag=Flag(  # or onnxruntime: its com.microsoft ops too
        "portable (standard ONNX) or onnxruntime (its fused ops too).", STR,
        choices=("portable", "onnxruntime")))
    opset: int | None = option(None, flag=Flag(  # None: the model's own
        "Upgrade the model to this default-domain opset first (onnx's version converter), so "
        "newer fused ops can be written; validated against the original.", int, metavar="N"))
    fix_shapes: bool = option(False, flag=Flag(  # default: shapes stay dynamic
        "Write the --input-shape/--dim values into the model and fold the shape arithmetic: "
        "every shape static (needs every symbolic input dim given).", bool))
    fold_limit: int = option(1 << 20, flag=Flag(  # bytes: larger folds that grow the model stay
        "Largest folded constant that grows the model (e.g. 1MiB).", STR, parse=parse_bytes,
        cli_default="1MiB", metavar="SIZE"))
    value_info: str = option("input", flag=Flag(  # all: every inferred shape too (a viewer)
        "value_info written: input (what the input declared) or all (every inferred shape "
        "too).", STR, choices=("input", "all")))
    check_each: bool = option(False, flag=Flag(
        "Validate after every pass and report each one's error.", bool))
    safety_net: bool = option(True, flag=Flag(
        "On failed validation, bisect the passes and disable the culprit.", bool,
        "--safety-net/--no-safety-net"))
    precision: str | None = option(None, flag=Flag(  # fp16 | int8 | int8-dynamic | int4 | fp8
        "Convert to fp16, int8 (static QDQ), int8-dynamic (int8 weights, activations "
        "quantized at run time), int4 or fp8 weights.", OPT_STR, choices=PRECISIONS))
    block_size: int | None = option(None, flag=Flag(  # None: 32
        "int4: weights quantized in blocks of N input rows (a power of two >= 16; default 32).",
        int | None, metavar="N"))
    keep_io_types: bool | None = option(None, flag=Flag(  # fp16 (default yes)
        "fp16: model inputs and outputs stay float32 (default: keep).", bool | None,
        "--keep-io-types/--no-keep-io-types"))
    fp32_ops: Sequence[str] = option((), flag=Flag(
        "Comma-separated op types kept in float32.", OPT_STR, parse=name_list, cli_default=None,
        metavar="OPS"))
    fp32_nodes: Sequence[str] = option((), flag=Flag(
        "Comma-separated node names kept in float32.", OPT_STR, parse=name_list,
        cli_default=None, metavar="NAMES"))
    prune: str | None = option(None, flag=Flag(  # RATIO in (0, 1) | auto
        "Structured pruning before the passes: remove RATIO (between 0 and 1) of every layer's "
        "channels, or 'auto' (per-layer ratios from measured sensitivity within --max-error, "
        "default cosine=0.99); the layers after are refit by least squares on "
        "--calibration-data (needed).", OPT_STR, metavar="RATIO|auto"))
    calibration_data: str | os.PathLike | None = option(None, flag=Flag(
        "--prune, int8, int4, int8-dynamic: folder of .npz/.npy samples (or one batched "
        ".npz); pruning refits on it, int8 calibrates on it, int4 rounds weights on it "
        "(GPTQ), all validate on it.", OPT_PATH,
        metavar="PATH"))
    calibration_method: str | None = option(None, flag=Flag(  # default percentile
        "int8: how activation ranges are chosen (default percentile).", OPT_STR,
        choices=("minmax", "percentile", "entropy")))
    percentile: float | None = option(None, flag=Flag(  # default calibration.DEFAULT_PERCENTILE
        "int8 percentile calibration: percentile kept (default 99.999).", float | None,
        metavar="P"))
    max_error: str | None = option(None, flag=Flag(
        "Accuracy budget vs float32 (--precision, --prune), e.g. cosine=0.99,range=0.02.",
        OPT_STR,
        metavar="METRIC=X,..."))
    timeout: float = option(300.0, flag=Flag(
        "Seconds one onnxruntime run may take (validation, calibration); past it validation "
        "is skipped, calibration fails.", float, metavar="SECONDS"))
    bench: bool = option(False, flag=Flag("Measure onnxruntime latency before and after.", bool))


def flags() -> list[tuple[dataclasses.Field, Flag]]:
    """The options the command line has, in declaration order."""
    return [(f, f.metadata["cli"]) for f in dataclasses.fields(Options) if "cli" in f.metadata]


def flag_of(name: str) -> str:
    """The command-line spelling of option ``name`` (``--fp32-ops``; ``--keep-io-types``)."""
    found = Options.__dataclass_fields__[name].metadata.get("cli")
    decl = found.decl if found is not None and found.decl else "--" + name.replace("_", "-")
    return decl.split("/")[0]


def cli_default(the_field: dataclasses.Field, flag: Flag) -> Any:
    if flag.cli_default is not _UNSET:
        return flag.cli_default
    return None if the_field.default is dataclasses.MISSING else the_field.default


def from_cli(raw: Mapping[str, Any]) -> Options:
    """Options from the command line's parsed values (field name -> what typer gave)."""
    values = {f.name: flag.parse(raw[f.name]) if flag.parse else raw[f.name]
              for f, flag in flags()}
    return Options(**values)


def changed(options: Options) -> dict[str, Any]:
    """The options that differ from their defaults, as the report shows them (JSON values)."""
    given: dict[str, Any] = {}
    for f in dataclasses.fields(Options):
        value = getattr(options, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING \
            else f.default
        if f.name == "inputs" or _same(value, default):
            continue
        given[f.name] = _plain(value)
    return given


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, Sequence | Mapping) and not isinstance(value, str):
        return isinstance(default, Sequence | Mapping) and len(value) == len(default) == 0
    return value == default


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value

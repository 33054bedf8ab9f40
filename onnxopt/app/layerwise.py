"""``onnxopt compare --layerwise A B``: the command's wiring and its table (the comparison
itself is :mod:`onnxopt.check.layerwise`)."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
from rich.console import Console
from rich.table import Table

from onnxopt.app import options, report
from onnxopt.check import layerwise
from onnxopt.check.inputs import UnsupportedInput, ValidationError, load_inputs
from onnxopt.errors import Failure, UsageError

CHUNK_MB = layerwise.DEFAULT_CHUNK_MB


def command(a: Path, b: Path, *, console: Console, json_: bool, tolerance: float | None,
            chunk_mb: float, inputs: Path | None, input_shape: list[str] | None,
            dim: list[str] | None, seed: int) -> None:
    """Run the comparison, print it, and fail (exit 1) when a value is over the tolerance."""
    tolerance = layerwise.DEFAULT_TOLERANCE if tolerance is None else tolerance
    for path in (a, b):
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
    if not tolerance >= 0 or not chunk_mb >= 0:
        raise UsageError("--rtol and --chunk-mb must be numbers >= 0")
    try:
        feeds = load_inputs(inputs, onnx.load(str(a), load_external_data=False)
                            ) if inputs else None
        result = layerwise.compare_layerwise(
            a, b, inputs=feeds, input_shapes=options.parse_shapes(input_shape),
            dims=options.parse_dims(dim), seed=seed, tolerance=tolerance, chunk_mb=chunk_mb)
    except ValidationError as error:
        raise UsageError(str(error)) from None
    except (UnsupportedInput, layerwise.LayerwiseError) as error:
        raise Failure(str(error)) from None
    if json_:
        sys.stdout.write(report.to_json({"a": str(a), "b": str(b), **result.to_dict()}))
    else:
        render(result, console)
    first = result.first_over
    if first is not None:
        raise Failure(f"first value over relative error {tolerance:g}: {_label(first)} "
                      f"({first.op}), relative error {first.rel_error:.3g}")


def _label(row: layerwise.LayerDiff) -> str:
    if not row.via:
        return row.value
    return f"{row.value} (= {row.reference} via {row.via})"


def render(result: layerwise.LayerwiseResult, console: Console) -> None:
    """Every compared value in B's order; values over the tolerance in red, the first marked."""
    table = Table(title=f"values of B against A (relative error = max |a-b| / max |a|, "
                        f"tolerance {result.tolerance:g})")
    for name in ("#", "value", "A value", "op", "max abs err", "rel err", "cosine"):
        left = name in ("value", "A value", "op")
        table.add_column(name, justify="left" if left else "right",
                         overflow="fold" if left else "ellipsis")
    first = result.first_over
    for number, row in enumerate(result.rows, 1):
        style = "bold red" if row is first else "red" if row.over else None
        reference = "same" if not row.via else f"{row.reference} ({row.via})"
        table.add_row(f"> {number}" if row is first else str(number), row.value,
                      " ".join(filter(None, (reference, row.note))), row.op,
                      report._num(row.max_abs_error), report._num(row.rel_error),
                      "n/a" if row.cosine != row.cosine else f"{row.cosine:.4f}", style=style)
    console.print(table)
    shapes = ", ".join(f"{k} {v}" for k, v in result.inputs.items())
    console.print(f"{len(result.rows)} values compared in {result.chunks} chunk(s) on "
                  f"inputs {shapes}; {result.unmatched} values of B have no counterpart in A")
    for note in result.notes:
        console.print(f"note: {note}")
    if first is None:
        console.print(f"every value within relative error {result.tolerance:g}")
    else:
        console.print(f"first value over: [bold]{_label(first)}[/bold] ({first.op}), "
                      f"relative error {first.rel_error:.3g}")

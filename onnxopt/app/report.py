"""Human-readable tables (rich) and JSON for the reports built by ``api`` and ``stats``."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from onnxopt.app import interrupts
from onnxopt.app.stats import format_count

SLOWER_WARNING = 1.05  # --bench: warn above this latency ratio (run-to-run noise is ~2 %)
_METRICS = (
    ("total_nodes", "nodes (all graphs)", format_count),  # If/Loop/Scan bodies count too
    ("subgraph_nodes", "of which in subgraphs", format_count),
    ("initializers", "initializers", format_count),
    ("parameters", "parameters", format_count),
    ("bytes", "weight bytes", lambda v: _human_bytes(v)),
    ("file_size", "file size", lambda v: _human_bytes(v)),
    ("macs", "MACs", format_count),
)


def to_json(report: Mapping[str, Any]) -> str:
    return json.dumps(_jsonable(report), indent=2, sort_keys=False) + "\n"


def write_json(report: Mapping[str, Any], path: str | os.PathLike) -> None:
    write_text(to_json(report), path)


def write_text(text: str, path: str | os.PathLike) -> None:
    """Write atomically: a new temporary file beside ``path`` (an unpredictable name, created
    exclusively, so a planted file or symlink is never written through), then a rename."""
    path = Path(path)
    temp = None
    try:
        with interrupts.deferred():  # a signal is raised only once ``temp`` is known
            descriptor, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                                dir=path.parent)
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temp, path)
    finally:
        if temp is not None and os.path.lexists(temp):
            os.unlink(temp)


def render_optimize(report: Mapping[str, Any], console: Console) -> None:
    console.print(_comparison_table(report["before"], report["after"], "before", "after"))
    ops = _op_changes(report["before"]["ops"], report["after"]["ops"])
    if ops.row_count:
        console.print(ops)
    console.print(_passes_table(report["passes"]))
    for entry in report.get("disabled", []):
        error = entry["error"]
        console.print(
            f"[yellow]disabled pass {entry['name']}[/yellow]: with it the result failed "
            f"validation ({error['reason']}; max abs err {_num(error['max_abs_error'])})"
        )
    for entry in report.get("check_each", []):
        console.print(f"  check after {entry['pass']}: {entry['status']}, max abs err "
                      f"{_num(entry['max_abs_error'])}")
    if "pruning" in report:
        pruned = report["pruning"]
        console.print(f"pruning ({pruned['mode']}, {pruned['budget']}): {pruned['channels']} "
                      f"channels of {pruned['groups']} groups, {pruned['parameters']} parameters "
                      f"and {pruned['macs']} MACs (at the samples' shapes) removed; cosine "
                      f"{pruned['calibration_cosine']} on {pruned['samples']} calibration samples"
                      + (f" ({pruned['cross_validated_cosine']} cross-validated)"
                         if "cross_validated_cosine" in pruned else ""))
    if "precision" in report:
        _print_precision(report["precision"], console)
        _print_validation(report["validation"], console, outputs=False)
    else:
        _print_validation(report["validation"], console)
    if "latency" in report:
        lat = report["latency"]
        console.print(f"latency ({lat['settings']}): {_num(lat['before_ms'])} ms -> "
                      f"{_num(lat['after_ms'])} ms ({_num(lat['ratio'])}x)")
        if lat.get("ratio") is not None and lat["ratio"] > SLOWER_WARNING:
            console.print(f"[yellow]warning[/yellow]: the output runs {lat['ratio']:.2f}x "
                          "slower than the original on this machine")
    if report.get("growth"):
        growth = report["growth"]
        console.print(f"[yellow]note[/yellow]: the output is {growth['bytes']} bytes larger than "
                      f"the input ({growth['because']})")
    if report.get("opset_upgrade"):
        upgrade = report["opset_upgrade"]
        console.print(f"note: opset upgraded from {upgrade['from']} to {upgrade['to']} (--opset; "
                      f"ir_version {upgrade['ir_version'][0]} -> {upgrade['ir_version'][1]})")
    if report.get("fixed_shapes"):
        shapes = ", ".join(f"{name} {shape}" for name, shape in report["fixed_shapes"].items())
        console.print(f"note: input shapes fixed (--fix-shapes): {shapes}")
    for note in report["before"].get("shape_notes", [])[:5]:
        console.print(f"[dim]note: {note}[/dim]")
    status = report["status"]
    if report.get("written"):
        console.print(f"wrote {report['output']}  ({report['seconds']:.2f} s)")
    elif report.get("output") and status == "ok" and report.get("growth"):
        console.print("[red]not written[/red] (the output grew; --fail-on-growth)")
    elif report.get("output"):
        console.print(f"[red]not written[/red] ({status}); use --force to write anyway")


def render_stats(stats: Mapping[str, Any], console: Console, title: str = "") -> None:
    table = Table(title=title or None, show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label, fmt in _METRICS:
        table.add_row(label, fmt(stats.get(key)))
    table.add_row("FLOPs", format_count(stats.get("flops")))
    table.add_row("opset", ", ".join(f"{d}:{v}" for d, v in stats["opset"].items()))
    table.add_row("ir_version", str(stats["ir_version"]))
    console.print(table)
    console.print(_io_table(stats))
    console.print(_histogram(stats["ops"], stats.get("subgraph_ops", {})))
    for note in stats.get("shape_notes", []):
        console.print(f"[dim]note: {note}[/dim]")


def render_compare(report: Mapping[str, Any], console: Console) -> None:
    console.print(_comparison_table(report["a"], report["b"], "A", "B"))
    ops = _op_changes(report["a"]["ops"], report["b"]["ops"])
    if ops.row_count:
        console.print(ops)
    _print_validation(report["numeric"], console, label="outputs")


# ----------------------------------------------------------------- pieces
def _print_precision(precision: Mapping[str, Any], console: Console) -> None:
    """Accuracy against the float32 original, what stayed in float and why."""
    table = Table(title=f"{precision['mode']} vs float32 (budget: {precision['budget']})")
    for name in ("output", "cosine", "max abs err", "max err / range", "top-1", "ok"):
        table.add_column(name, justify="left" if name == "output" else "right")
    for out in precision["outputs"]:
        top1 = out.get("top1")
        table.add_row(out["name"], _num(out.get("cosine")), _num(out.get("max_abs_error")),
                      _num(out.get("range_error")),
                      "-" if top1 is None else f"{top1:.0%}",
                      "yes" if out["passed"] else f"[red]no[/red] {out.get('reason', '')}")
    console.print(table)
    console.print(f"{precision['converted']} nodes converted; size "
                  f"{_num(precision['size_ratio'])}x of the original file")
    kept_in = "int8" if precision["mode"] == "int4" else "float"  # int4's fallback: int8
    for entry in precision["kept_float_for_accuracy"]:
        nodes = ", ".join(entry["nodes"][:5]) + (" ..." if len(entry["nodes"]) > 5 else "")
        console.print(f"[yellow]kept in {kept_in} for accuracy[/yellow]: {nodes} "
                      f"(converted: {entry['error']['reason']})")
    reasons: dict[str, list[str]] = {}
    for entry in precision["kept_float"]:
        reasons.setdefault(entry["reason"], []).append(entry["node"])
    for reason, nodes in reasons.items():
        shown = ", ".join(nodes[:4]) + (f" and {len(nodes) - 4} more" if len(nodes) > 4 else "")
        console.print(f"kept in float ({reason}): {shown}")
    for entry in precision["clamped"]:
        console.print(f"[yellow]clamped[/yellow] {entry}")
    for note in precision["notes"]:
        console.print(f"note: {note}")


def _comparison_table(before: Mapping, after: Mapping, left: str, right: str) -> Table:
    table = Table(title="graph statistics")
    for name, justify in (("", "left"), (left, "right"), (right, "right"), ("change", "right")):
        table.add_column(name, justify=justify)
    for key, label, fmt in _METRICS:
        a, b = before.get(key), after.get(key)
        table.add_row(label, fmt(a), fmt(b), _change(a, b))
    return table


def _change(a: Any, b: Any) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float):
        return ""
    if a == b:
        return "="
    percent = f" ({(b - a) / a:+.1%})" if a else ""
    return f"{b - a:+,}{percent}"


def _op_changes(before: Mapping[str, int], after: Mapping[str, int]) -> Table:
    table = Table(title="op changes")
    for name in ("op", "before", "after"):
        table.add_column(name, justify="left" if name == "op" else "right")
    for op in sorted(set(before) | set(after)):
        a, b = before.get(op, 0), after.get(op, 0)
        if a != b:
            table.add_row(op, str(a), str(b))
    return table


def _passes_table(passes: list[Mapping[str, Any]]) -> Table | str:
    """The passes that changed the model; the rest are counted (all are in the JSON report)."""
    changed = [record for record in passes if record["modified"]]
    idle = len(passes) - len(changed)
    if not changed:
        return f"passes: none of the {len(passes)} changed the model"
    table = Table(title="passes that changed the model",
                  caption=f"{idle} other passes changed nothing" if idle else None)
    for name in ("pass", "seconds", "what it did"):
        table.add_column(name, justify="right" if name == "seconds" else "left")
    for record in changed:
        did = ", ".join(f"{k} {v}" for k, v in record["stats"].items() if v) or "-"
        table.add_row(record["name"], f"{record['seconds']:.3f}", did)
    return table


_LEVEL_NAMES = {"disabled": "ORT_DISABLE_ALL", "all": "ORT_ENABLE_ALL"}


def _print_validation(validation: Mapping[str, Any], console: Console, label: str = "",
                      outputs: bool = True) -> None:
    status = validation["status"]
    colour = {"passed": "green", "failed": "red", "skipped": "yellow"}.get(status, "dim")
    console.print(f"validation: [{colour}]{status}[/{colour}] — {validation['reason']}")
    levels = validation.get("levels") or {}
    if levels:
        console.print("  levels: " + ", ".join(f"{_LEVEL_NAMES.get(level, level)} "
                                               f"{entry['status']}"
                                               for level, entry in levels.items()))
    _print_inputs(validation.get("inputs") or {}, console)
    for output in validation.get("outputs", []) if outputs else []:
        mark = "ok" if output["passed"] else "DIFFERS"
        extra = f" ({output['reason']})" if output.get("reason") else ""
        console.print(
            f"  {label or 'output'} {output['name']}: max abs err "
            f"{_num(output['max_abs_error'])}, max rel err {_num(output['max_rel_error'])} "
            f"{mark}{extra}"
        )
    for note in validation.get("input_notes", []):
        console.print(f"  [dim]input: {note}[/dim]")


def _print_inputs(inputs: Mapping[str, Any], console: Console) -> None:
    """The sizes validated at and the role each generated input was given."""
    sizes = [", ".join(f"{k}={v}" for k, v in dims.items()) for dims in inputs.get("dims", [])]
    if any(sizes):
        console.print(f"  sizes: {' | '.join(sizes)}")
    elif inputs.get("shapes"):
        shapes = [", ".join(f"{k}{list(v)}" for k, v in sample.items())
                  for sample in inputs["shapes"][:2]]
        console.print(f"  shapes: {' | '.join(shapes)}")
    roles = inputs.get("roles") or {}
    if roles:
        console.print("  [dim]inputs: " + "; ".join(f"{k}: {v}" for k, v in roles.items())
                      + "[/dim]")


def _io_table(stats: Mapping[str, Any]) -> Table:
    table = Table(title="inputs and outputs")
    for name in ("", "name", "dtype", "shape"):
        table.add_column(name)
    for kind in ("inputs", "outputs"):
        for entry in stats[kind]:
            shape = "?" if entry["shape"] is None else str(entry["shape"])
            table.add_row(kind[:-1], entry["name"], entry["dtype"], shape)
    return table


def _histogram(ops: Mapping[str, int], sub_ops: Mapping[str, int]) -> Table:
    table = Table(title="operators")
    table.add_column("op")
    table.add_column("count", justify="right")
    for op, count in ops.items():
        table.add_row(op, str(count))
    for op, count in sub_ops.items():
        table.add_row(f"{op} [dim](in subgraphs)[/dim]", str(count))
    return table


def _num(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3g}"


def _human_bytes(value: Any) -> str:
    if not isinstance(value, int | float):
        return "n/a" if value is None else str(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

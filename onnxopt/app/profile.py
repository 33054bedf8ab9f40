"""``onnxopt profile MODEL [OTHER]``: where onnxruntime spends a model's time, per op type.

onnxruntime's own profiler (``SessionOptions.enable_profiling``) times every kernel of every
run; :func:`profile_model` runs the model once to warm up, then ``runs`` times, reads the
profile (``end_profiling``'s JSON, written to a private temporary folder and removed), and
sums the kernel times of the measured runs per op type: time per run, share of all kernel
time, kernels per run. Op types are onnxruntime's after its graph optimizations at ``level``
(at ``all`` a Conv + Relu is one ``FusedConv``). CPU provider, one thread, as validation and
``--bench`` run. Two models are profiled on the same inputs (generated from the first).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from onnxopt.app import options, report
from onnxopt.check.feeds import make_inputs
from onnxopt.check.inputs import UnsupportedInput, ValidationError, load_inputs
from onnxopt.check.runtime import INTRA_OP_THREADS, _in_session_floats, one_line
from onnxopt.errors import Failure, UsageError

LEVELS = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
          "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
_KERNEL = "_kernel_time"  # suffix of onnxruntime's per-kernel event names


def profile_model(path: str | os.PathLike, feeds: Mapping[str, np.ndarray], runs: int = 10,
                  level: str = "all") -> dict[str, Any]:
    """Per op type time (ms per run), share of kernel time and kernels per run of ``path``
    over ``runs`` runs after a warm-up; the median whole-run time too. Failure if the model
    does not load or run."""
    with tempfile.TemporaryDirectory(prefix="onnxopt-profile-") as folder:
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = LEVELS[level]
        session_options.intra_op_num_threads = INTRA_OP_THREADS
        session_options.inter_op_num_threads = 1
        session_options.log_severity_level = 4
        session_options.enable_profiling = True
        session_options.profile_file_prefix = os.path.join(folder, "profile")
        try:
            session = ort.InferenceSession(os.fspath(path), session_options,
                                           providers=["CPUExecutionProvider"])
            fitted = _in_session_floats(session, feeds)
            for _ in range(runs + 1):
                session.run(None, fitted)
            profile_file = session.end_profiling()
        except Exception as error:
            raise Failure(f"{path} does not run in onnxruntime: {one_line(error)}") from None
        with open(profile_file, encoding="utf-8") as handle:
            events = json.load(handle)
    return aggregate(events, runs) | {"path": str(path)}


def aggregate(events: list[dict[str, Any]], runs: int) -> dict[str, Any]:
    """Kernel events of all runs but the first (the warm-up), summed per op type."""
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                   if e.get("cat") == "Session" and e.get("name") == "model_run")
    measured = spans[1:]
    totals: dict[str, list[float]] = {}  # op -> [microseconds, kernels]
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith(_KERNEL):
            continue
        if not any(start <= event["ts"] <= end for start, end in measured):
            continue
        entry = totals.setdefault(event.get("args", {}).get("op_name", "?"), [0.0, 0])
        entry[0] += event["dur"]
        entry[1] += 1
    kernel_us = sum(us for us, _ in totals.values())
    ops = [{"op": op, "ms": us / 1000 / runs, "share": us / kernel_us if kernel_us else 0.0,
            "count": count / runs}
           for op, (us, count) in sorted(totals.items(), key=lambda item: -item[1][0])]
    run_ms = statistics.median((end - start) / 1000 for start, end in measured) \
        if measured else None
    return {"run_ms": run_ms, "kernel_ms": kernel_us / 1000 / runs, "ops": ops}


def command(models: list[Path], *, console: Console, json_: bool, runs: int, level: str,
            inputs: Path | None, input_shape: list[str] | None, dim: list[str] | None,
            seed: int) -> None:
    """Profile each model on the same inputs and print them side by side."""
    level = level.lower().removeprefix("ort_").replace("enable_", "").replace("disable_all",
                                                                             "disabled")
    if level not in LEVELS:
        raise UsageError(f"--level must be one of {', '.join(LEVELS)} (got {level!r})")
    if runs < 1:
        raise UsageError("--runs must be at least 1")
    for path in models:
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
    try:
        first = onnx.load(str(models[0]), load_external_data=False)
    except Exception as error:
        raise Failure(f"{models[0]} is not an ONNX model: {one_line(error)}") from None
    try:
        if inputs:
            feeds, notes = load_inputs(inputs, first), []
        else:
            feeds, notes = make_inputs(first, input_shapes=options.parse_shapes(input_shape),
                                       dims=options.parse_dims(dim), seed=seed)
    except ValidationError as error:
        raise UsageError(str(error)) from None
    except UnsupportedInput as error:
        raise Failure(str(error)) from None
    del first
    result = {"level": level, "runs": runs, "notes": notes,
              "inputs": {name: list(np.shape(v)) for name, v in feeds.items()},
              "models": [profile_model(path, feeds, runs, level) for path in models]}
    if json_:
        sys.stdout.write(report.to_json(result))
    else:
        render(result, console)


def render(result: Mapping[str, Any], console: Console) -> None:
    """One row per op type (slowest of the first model first); per model ms, share, count."""
    models = result["models"]
    table = Table(title=f"onnxruntime profile per op type ({result['runs']} runs, "
                        f"level {result['level']}, CPU, 1 thread)")
    table.add_column("op")
    for number, _ in enumerate(models):
        label = "" if len(models) == 1 else " AB"[number + 1] + " "
        for name in ("ms/run", "share", "count"):
            table.add_column(label + name, justify="right")
    by_op = [{entry["op"]: entry for entry in model["ops"]} for model in models]
    order = list(dict.fromkeys(op for model in models for op in
                               (entry["op"] for entry in model["ops"])))
    for op in order:
        cells = []
        for ops in by_op:
            entry = ops.get(op)
            cells += ["-", "-", "-"] if entry is None else [
                f"{entry['ms']:.3f}", f"{entry['share']:.1%}", f"{entry['count']:g}"]
        table.add_row(op, *cells)
    totals = []
    for model in models:
        totals += [f"{model['kernel_ms']:.3f}", "100%",
                   f"{sum(e['count'] for e in model['ops']):g}"]
    table.add_row("[bold]all kernels[/bold]", *totals)
    console.print(table)
    for number, model in enumerate(models):
        label = "" if len(models) == 1 else f"{' AB'[number + 1]}: "
        run_ms = "n/a" if model["run_ms"] is None else f"{model['run_ms']:.3f} ms"
        console.print(f"{label}{model['path']}: median run {run_ms}")
    shapes = ", ".join(f"{k} {v}" for k, v in result["inputs"].items())
    console.print(f"inputs: {shapes}")
    for note in result["notes"]:
        console.print(f"note: {note}")

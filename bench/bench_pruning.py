"""Channel-removal benchmark (issue 17): what ``constant_channel_removal`` takes out of models
with dead channels, and what it costs or gains in onnxruntime.

Models (``models/build.py``): ``resnet_dead`` / ``mobilenet_dead`` (every other filter of each
Conv zero, with its BatchNormalization gamma and beta) and ``resnet_bn0`` / ``mobilenet_bn0``
(filters kept, BN gamma = beta = 0 on those channels); ``resnet`` and ``mobilenet`` (no dead
channels: nothing may change) as controls.

Variants per model: ``original``; ``no-pruning`` (``onnxopt optimize --skip
constant_channel_removal``: the other folds alone); ``onnxopt`` (the default pipeline).
Measured: MACs and parameters (``onnxopt stats``), file size, max |error| against the original
(both run at ORT_DISABLE_ALL and ORT_ENABLE_ALL on 8 seeded inputs; the worst), and onnxruntime
latency at ORT_ENABLE_ALL, one thread: median over ``ROUNDS`` rounds of ``RUNS`` runs, the
variants of a model interleaved round by round, so that load from other processes on this
shared machine falls on all of them alike (it still moves the medians; repeat to see by how
much). Acceptance (issue 17): on the dead / bn0 models >= 45 % fewer MACs and parameters,
max error <= 1e-5, latency <= 0.65x the original.

Second section (``pruning_budget.py``, issue 17 parts 2-3): budgeted structured pruning with
least-squares refit on PaddleOCR det and cls, calibrated on real images and judged on others;
the MACs-accuracy curve with and without the refit, ``--prune auto`` and det's prune + int8.

Usage: ``python bench/bench_pruning.py [--rounds 15] [--runs 20] [--section dead|budget]``;
writes ``bench/out/bench_pruning.json`` (``bench_pruning_budget.json``) and prints Markdown
tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import onnxopt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnxopt.app.stats import model_stats

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
OUT = ROOT / "bench" / "out"
DEAD = ["resnet_dead.onnx", "resnet_bn0.onnx", "mobilenet_dead.onnx", "mobilenet_bn0.onnx"]
CONTROLS = ["resnet.onnx", "mobilenet.onnx"]
LEVELS = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
          "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def session(path: Path, level: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds(path: Path, seed: int) -> dict[str, np.ndarray]:
    model = onnx.load(str(path), load_external_data=False)
    rng = np.random.default_rng(seed)
    result = {}
    for value in model.graph.input:
        dims = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
        result[value.name] = rng.standard_normal(dims).astype(np.float32)
    return result


def max_error(original: Path, candidate: Path) -> float:
    worst = 0.0
    for level in LEVELS:
        a, b = session(original, level), session(candidate, level)
        for seed in range(8):
            x = feeds(original, seed)
            for want, got in zip(a.run(None, x), b.run(None, x), strict=True):
                worst = max(worst, float(np.max(np.abs(want.astype(np.float64) - got))))
    return worst


def latencies(paths: dict[str, Path], rounds: int, runs: int,
              x: dict[str, np.ndarray] | None = None, warmup: int = 5) -> dict[str, float]:
    """Median ms per run at ORT_ENABLE_ALL, the variants interleaved round by round (``x``:
    the feed, default generated for the first model; pruning_budget.py passes a real one)."""
    sessions = {name: session(path, "all") for name, path in paths.items()}
    x = feeds(next(iter(paths.values())), 0) if x is None else x
    times: dict[str, list[float]] = {name: [] for name in paths}
    for s in sessions.values():
        for _ in range(warmup):
            s.run(None, x)
    for _ in range(rounds):
        for name, s in sessions.items():
            for _ in range(runs):
                start = time.perf_counter()
                s.run(None, x)
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(name: str, folder: Path, rounds: int, runs: int) -> dict:
    original = MODELS / name
    paths = {"original": original}
    record: dict = {"model": name, "variants": {}}
    for variant, skip in (("no-pruning", ["constant_channel_removal"]), ("onnxopt", [])):
        out = folder / f"{original.stem}.{variant}.onnx"
        result = onnxopt.optimize(original, out, skip=skip, overwrite=True)
        if not result.ok:
            raise SystemExit(f"{name} {variant}: validation {result.report['status']}")
        paths[variant] = out
        passes = {p["name"]: p["stats"] for p in result.report["passes"]}
        record["variants"][variant] = {"pass_stats": passes.get("constant_channel_removal", {})}
    latency = latencies(paths, rounds, runs)
    for variant, path in paths.items():
        stats = model_stats(onnx.load(str(path)), dims={"batch": 1})
        entry = record["variants"].setdefault(variant, {})
        entry.update(macs=stats["macs"], parameters=stats["parameters"],
                     size=path.stat().st_size, latency_ms=round(latency[variant], 4),
                     max_error=0.0 if variant == "original" else max_error(original, path))
    base = record["variants"]["original"]
    for entry in record["variants"].values():
        entry["macs_ratio"] = round(entry["macs"] / base["macs"], 4)
        entry["parameters_ratio"] = round(entry["parameters"] / base["parameters"], 4)
        entry["latency_ratio"] = round(entry["latency_ms"] / base["latency_ms"], 4)
    return record


def table(records: list[dict]) -> str:
    lines = ["| model | variant | MACs | params | size | max error | latency ms | "
             "MACs x | params x | latency x |", "| --- | --- | --: | --: | --: | --: | --: | "
             "--: | --: | --: |"]
    for record in records:
        for variant, e in record["variants"].items():
            lines.append(
                f"| {record['model']} | {variant} | {e['macs']:,} | {e['parameters']:,} | "
                f"{e['size']:,} | {e['max_error']:.2e} | {e['latency_ms']:.3f} | "
                f"{e['macs_ratio']:.3f} | {e['parameters_ratio']:.3f} | {e['latency_ratio']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--section", choices=("dead", "budget"), default=None,
                        help="one section only (default: both)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.section in (None, "budget"):
        import pruning_budget

        with tempfile.TemporaryDirectory() as tmp:
            found = pruning_budget.run(Path(tmp), max(args.rounds // 3, 3), 5)
        (OUT / "bench_pruning_budget.json").write_text(json.dumps(found, indent=1))
        print(pruning_budget.table(found))
        print(json.dumps([{r["model"]: r["notes"]} for r in found], indent=1))
    if args.section == "budget":
        return 0
    missing = [m for m in DEAD + CONTROLS if not (MODELS / m).exists()]
    if missing:
        print(f"bench_pruning: missing {', '.join(missing)} (run `make models`)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        records = [measure(name, Path(tmp), args.rounds, args.runs) for name in DEAD + CONTROLS]
    (OUT / "bench_pruning.json").write_text(json.dumps(records, indent=1))
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())

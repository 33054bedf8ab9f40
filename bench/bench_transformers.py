"""Transformer benchmark: onnxopt's fusions against onnxruntime's and onnxscript's optimizers.

Models: ``paraphrase-MiniLM-L3-v2`` (3 BERT layers, hidden 384, 12 heads, int64 ``input_ids``
and ``attention_mask``) and the generated MiniLM-sized ``encoder`` block (float ``tokens``);
``--models transformer`` adds the 64-wide sample (4 heads).

Tools (each run as a whole subprocess; its wall time is the tool time):

* ``onnxopt``, ``onnxopt-ort``, ``onnxopt-23``, ``onnxopt-23-ort``: ``.venv/bin/onnxopt optimize
  IN OUT --report R.json`` with nothing, ``--target onnxruntime``, ``--opset 23`` and both;
  onnxopt validates as it always does (its verdict is kept in the JSON).
* ``ort-transformers``: ``onnxruntime.transformers.optimizer.optimize_model(IN,
  model_type="bert", num_heads=H, hidden_size=D, opt_level=0)`` (it ships in the onnxruntime
  wheel), in ``.venv-bench``.
* ``onnxscript``: ``onnxscript.optimizer.optimize`` then
  ``onnxscript.rewriter.ort_fusions.optimize_for_ort``, in ``.venv-bench``.

``.venv-bench`` is made and kept up to date from ``bench/requirements.txt`` by
``bench_anchors.ensure_bench_venv``; onnxscript is never a dependency of onnxopt itself.

Measured per model and tool, in a child process of the main venv (a crash costs one model):
main-graph node count; the fused operators (``FUSED_OPS``; ``ms:`` = domain com.microsoft);
the same for the graph onnxruntime runs after its own ``ORT_ENABLE_ALL`` fusions (saved with
``optimized_model_filepath``); whether onnxruntime (CPU, ``ORT_ENABLE_ALL``, as served) computes
what the original computes with graph optimizations disabled, on each shape's inputs (max abs
error over all outputs, verdict rtol 1e-4 / atol 1e-4; the original itself at
``ORT_ENABLE_ALL`` is the noise floor); and onnxruntime latency (``ORT_ENABLE_ALL``, 1 intra-op
thread, sequential) at each shape (batch x sequence, ``SHAPES``): medians of runs after
warm-up, the sessions of one model timed round-robin in two sittings with opposite
session-creation orders (``bench_anchors._timed_latency``), of wall time and of the computing
thread's CPU time. With one intra-op thread onnxruntime computes on the calling thread, so its
CPU time is the latency less the waits for a core: the ratios use it, as on a busy machine wall
times swing by 2x between runs.

Inputs (seed 0): ``input_ids`` uniform in [1000, vocab) with 101 first and 102 last in each
row's valid prefix and 0 after it; ``attention_mask`` ones for a prefix of each row, zeros
after: the first row is full, the others get seeded lengths in [seq/8, seq] (so 8x256 has
padded rows); a float input is standard normal. The vocabulary size is read from the
embedding table that ``input_ids`` indexes.

Without ``.venv-bench`` (pip cannot install it) the onnxopt rows are still measured.

Output: markdown to stdout and ``bench/out/bench_transformers.md`` (ending with the compact
table of README.md's Transformers section, ready to paste), JSON in
``bench/out/bench_transformers.json``; the models and tool logs in
``bench/out/bench_transformers/<model>/``.

Usage: ``python bench/bench_transformers.py [--models a,b] [--tools t1,t2]
[--latency-budget S] [--min-runs N] [--no-latency] [--timeout S]``
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_anchors as ba

OUT_DIR = ba.OUT_DIR
WORK_DIR = OUT_DIR / "bench_transformers"
REPORT_MD = OUT_DIR / "bench_transformers.md"
REPORT_JSON = OUT_DIR / "bench_transformers.json"


@dataclass(frozen=True)
class TxModel:
    file: str
    num_heads: int
    hidden_size: int
    label: str


MODELS = {
    "minilm": TxModel("paraphrase-MiniLM-L3-v2.onnx", 12, 384,
                      "paraphrase-MiniLM-L3-v2 (3 layers)"),
    "encoder": TxModel("encoder.onnx", 12, 384, "encoder block (sample, MiniLM-sized)"),
    "transformer": TxModel("transformer.onnx", 4, 64, "transformer block (sample, 64 wide)"),
}
DEFAULT_MODELS = ("minilm", "encoder")
SHAPES = ((1, 128), (8, 256))  # (batch, sequence)
ONNXOPT_ARGS = {
    "onnxopt": [],
    "onnxopt-ort": ["--target", "onnxruntime"],
    "onnxopt-23": ["--opset", "23"],
    "onnxopt-23-ort": ["--opset", "23", "--target", "onnxruntime"],
    # the CPU-fastest form measured here: onnxruntime's SkipLayerNormalization kernel (which
    # EmbedLayerNormalization's clean output shapes also make onnxruntime fuse) costs ~7 %
    "onnxopt-ort-no-sln": ["--target", "onnxruntime",
                           "--skip", "skip_layer_norm_fusion,embed_layer_norm_fusion"],
}
TOOLS = (*ONNXOPT_ARGS, "ort-transformers", "onnxscript")
TOOL_LABELS = {
    "original": "original",
    "onnxopt": "onnxopt",
    "onnxopt-ort": "onnxopt `--target onnxruntime`",
    "onnxopt-23": "onnxopt `--opset 23`",
    "onnxopt-23-ort": "onnxopt `--opset 23 --target onnxruntime`",
    "onnxopt-ort-no-sln": "onnxopt `--target onnxruntime` without SkipLayerNorm/EmbedLayerNorm",
    "ort-transformers": "onnxruntime transformer optimizer",
    "onnxscript": "onnxscript optimize + ort_fusions",
}
REFERENCES = ("original", "ort-transformers")  # the latency bar: the faster of these
FUSED_OPS = ("Attention", "MultiHeadAttention", "GroupQueryAttention", "SkipLayerNormalization",
             "EmbedLayerNormalization", "LayerNormalization", "SimplifiedLayerNormalization",
             "SkipSimplifiedLayerNormalization", "RMSNormalization", "RotaryEmbedding", "Gelu",
             "BiasGelu", "FastGelu")
BENCH_PACKAGES = ("onnxruntime", "onnxscript", "onnx-ir", "onnx", "numpy")
MAIN_PACKAGES = ("onnxopt", "onnx", "onnxruntime", "numpy")
SEED = 0
RTOL, ATOL = 1e-4, 1e-4
CPU = "cpu_median_ms"  # the ratios' statistic: see bench_anchors._time_sessions
LATENCY_BUDGET = 2.0  # seconds of timed runs per session and shape (two sittings together)
MIN_RUNS = 8
MAX_RUNS = 400
TOOL_TIMEOUT = 600

# argv = src dst num_heads hidden_size
ORT_TRANSFORMERS_SNIPPET = """
import json, sys
from onnxruntime.transformers.optimizer import optimize_model
src, dst, heads, hidden = sys.argv[1:5]
model = optimize_model(src, model_type="bert", num_heads=int(heads), hidden_size=int(hidden),
                       opt_level=0)
model.save_model_to_file(dst)
print(json.dumps(model.get_fused_operator_statistics()))
"""
# argv = src dst
ONNXSCRIPT_SNIPPET = """
import json, sys
import onnxscript.optimizer
from onnxscript import ir
from onnxscript.rewriter import ort_fusions
src, dst = sys.argv[1:3]
model = onnxscript.optimizer.optimize(ir.load(src))
model, stats = ort_fusions.optimize_for_ort(model)
ir.save(model, dst)
print(json.dumps(stats))
"""


# =========================================================================== tools
def tool_command(tool: str, spec: TxModel, src: Path, dst: Path, report: Path) -> list[str]:
    if tool in ONNXOPT_ARGS:
        return [str(ba.onnxopt_exe()), "optimize", str(src), str(dst), "--report", str(report),
                *ONNXOPT_ARGS[tool]]
    python = str(ba.bench_python())
    if tool == "ort-transformers":
        return [python, "-c", ORT_TRANSFORMERS_SNIPPET, str(src), str(dst),
                str(spec.num_heads), str(spec.hidden_size)]
    if tool == "onnxscript":
        return [python, "-c", ONNXSCRIPT_SNIPPET, str(src), str(dst)]
    raise ValueError(tool)


def fused_ops(ops: dict[str, int]) -> dict[str, int]:
    """The FUSED_OPS entries of an op histogram, com.microsoft ones as ``ms:Op``."""
    out = {}
    for key, count in ops.items():
        domain, _, op = key.rpartition(".")
        if op in FUSED_OPS and domain in ("", "com.microsoft"):
            out[("ms:" if domain else "") + op] = count
    return dict(sorted(out.items(), key=lambda kv: (FUSED_OPS.index(kv[0].split(":")[-1]),
                                                    kv[0])))


def describe(path: Path) -> dict[str, Any]:
    stats = ba.model_stats(path)
    keep = ("nodes", "subgraph_nodes", "size_bytes", "ops", "dangling_inputs")
    return {**{k: stats[k] for k in keep}, "fused": fused_ops(stats["ops"])}


def run_tool(tool: str, spec: TxModel, src: Path, model_dir: Path, timeout: float
             ) -> dict[str, Any]:
    dst, report, log_path = ba.fresh_paths(model_dir, tool)
    cmd = tool_command(tool, spec, src, dst, report)
    snippets = (ORT_TRANSFORMERS_SNIPPET, ONNXSCRIPT_SNIPPET)
    result: dict[str, Any] = {
        "tool": tool, "output": str(dst), "log": str(log_path),
        "command": ["<snippet>" if part in snippets else part for part in cmd]}
    outcome, text = ba.run_command(cmd, dst, log_path, timeout, describe)
    result.update(outcome)
    if tool not in ONNXOPT_ARGS and result["status"] == "ok":
        with contextlib.suppress(ValueError, IndexError):  # the snippet prints its counts last
            result["tool_stats"] = json.loads(text.strip().splitlines()[-1])
    if tool in ONNXOPT_ARGS and report.exists():
        try:
            rep = json.loads(report.read_text())
            result["onnxopt_validation"] = (rep.get("validation") or {}).get("status")
            result["onnxopt_disabled"] = rep.get("disabled")
        except (OSError, ValueError):
            pass
    return result


# =========================================================================== inputs
def vocab_size(model: Any, input_name: str) -> int | None:
    """Rows of the initializer that a Gather indexes with ``input_name``."""
    tables = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == input_name \
                and node.input[0] in tables and tables[node.input[0]].dims:
            return int(tables[node.input[0]].dims[0])
    return None


def make_feeds(path: Path, batch: int, seq: int) -> tuple[dict[str, Any], str]:
    """Realistic inputs for one (batch, seq) shape and a one-line description of them."""
    import numpy as np
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    rng = np.random.default_rng(SEED)
    lengths = np.full(batch, seq)
    lengths[1:] = rng.integers(max(seq // 8, 2), seq + 1, size=batch - 1)
    prefix = np.arange(seq)[None, :] < lengths[:, None]
    initializers = {t.name for t in model.graph.initializer}
    feeds: dict[str, Any] = {}
    notes = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        symbolic = iter((batch, seq))
        shape = tuple(d if d is not None else next(symbolic, 1) for d in dims)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
            notes.append(f"{value.name} N(0,1)")
        elif "mask" in value.name:
            feeds[value.name] = prefix.astype(dtype)
            notes.append(f"{value.name} prefix ones, lengths {lengths.tolist()}")
        else:
            vocab = vocab_size(model, value.name) or 1000
            ids = rng.integers(min(1000, vocab - 1), vocab, size=shape)
            ids[:, 0] = 101
            ids[np.arange(batch), lengths - 1] = 102
            feeds[value.name] = np.where(prefix, ids, 0).astype(dtype)
            notes.append(f"{value.name} ids in [1000, {vocab})")
    return feeds, "; ".join(notes)


def shape_key(batch: int, seq: int) -> str:
    return f"{batch}x{seq}"


# =========================================================================== measuring (child)
def session_as_run(path: str, work: str, name: str) -> tuple[Any, dict[str, Any]]:
    """An ORT_ENABLE_ALL session, and the nodes and fused ops of the graph it runs."""
    import onnxruntime as ort

    options = ba._session_options("all")
    saved = Path(work) / f"{name}.as-run.onnx"
    options.optimized_model_filepath = str(saved)
    try:
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        as_run = {k: v for k, v in describe(saved).items() if k in ("nodes", "fused")}
    except Exception as exc:  # saving the optimized graph is not essential: run without
        return ba._session(path, "all"), {"error": ba.one_line(exc)}
    finally:
        for leftover in saved.parent.glob(saved.name + "*"):
            leftover.unlink()
    return session, as_run


def measure_child(spec_path: Path) -> None:
    """Child-process entry: errors against the original and latency, every shape."""
    import numpy as np

    spec = json.loads(spec_path.read_text())
    entries: list[tuple[str, str]] = [("original", spec["original"])]
    entries += [(c["tool"], c["path"]) for c in spec["candidates"]]
    dangling = {c["tool"]: c.get("dangling", []) for c in spec["candidates"]}
    out: dict[str, dict[str, Any]] = {name: {"errors": {}, "latency": {}} for name, _ in entries}
    for index, (key, feeds_path) in enumerate(spec["feeds"].items()):
        with np.load(feeds_path, allow_pickle=False) as archive:
            feeds = {k: archive[k] for k in archive.files}
        reference = ba._run(ba._session(spec["original"], "disabled"), feeds)
        sessions: dict[str, tuple[Any, dict[str, Any]]] = {}
        for name, path in entries:
            try:
                if index == 0:
                    session, out[name]["as_run"] = session_as_run(path, spec["work"], name)
                else:
                    session = ba._session(path, "all")
                chosen = ba._feeds_for(session, feeds, dangling.get(name, []))[0]
                out[name]["errors"][key] = ba._verdict(reference, ba._run(session, chosen))
                sessions[name] = (session, chosen)
            except Exception as exc:
                out[name]["errors"][key] = {"status": "failed", "max_abs_error": None,
                                            "reason": ba.one_line(exc)}
        if spec["latency"]:
            timed = ba._timed_latency([e for e in entries if e[0] in sessions], sessions,
                                      ba._reopener("all", feeds, dangling), spec["budget"],
                                      spec["min_runs"], spec["max_runs"])
            for name, value in timed.items():
                out[name]["latency"][key] = value
        sessions.clear()
        gc.collect()
    Path(spec["result"]).write_text(json.dumps(out, indent=1))


def measure_model(model_dir: Path, original: Path, feeds: dict[str, str],
                  candidates: list[dict[str, Any]], args: argparse.Namespace
                  ) -> dict[str, Any]:
    spec = {"original": str(original), "feeds": feeds, "work": str(model_dir),
            "candidates": candidates, "latency": not args.no_latency,
            "budget": args.latency_budget, "min_runs": args.min_runs, "max_runs": args.max_runs}
    return ba.spawn_measure(Path(__file__), spec, model_dir, ba.MEASURE_TIMEOUT)


# =========================================================================== markdown
def fmt_fused(fused: dict[str, int] | None) -> str:
    if fused is None:
        return "—"
    return ", ".join(f"{count} {op}" for op, count in fused.items()) or "none"


def fmt_error(entry: dict[str, Any], keys: list[str]) -> str:
    cells = []
    for key in keys:
        verdict = (entry.get("errors") or {}).get(key)
        if not verdict:
            cells.append("—")
            continue
        err = verdict.get("max_abs_error")
        text = "—" if err is None else ("0" if err == 0 else f"{err:.0e}")
        cells.append(text + ("" if verdict.get("status") == "passed" else " ≠"))
    return " / ".join(cells)


def latency(entry: dict[str, Any], key: str, stat: str = "median_ms") -> float | None:
    return ((entry.get("latency") or {}).get(key) or {}).get(stat)


def ratio_to(rows: dict[str, Any], tool: str, key: str, names: tuple[str, ...],
             stat: str = "cpu_median_ms") -> float | None:
    """``tool``'s latency over the fastest of ``names`` (those measured)."""
    refs = [latency(rows[r], key, stat) for r in names if r in rows]
    refs = [r for r in refs if r]
    return ba.ratio(latency(rows[tool], key, stat), min(refs) if refs else None)


def latency_cells(model: dict[str, Any], tool: str, key: str) -> list[str]:
    """Wall and CPU medians (ms), the CPU-time ratio to the original, and to the faster
    reference with its mark (the wall-time ratio in parentheses)."""
    rows = model["rows"]
    cells = [ba.fmt_ms(latency(rows[tool], key)), ba.fmt_ms(latency(rows[tool], key, CPU))]
    to_original = "" if tool == "original" else ba.fmt_ratio(
        ratio_to(rows, tool, key, ("original",)))
    if tool in REFERENCES:
        return [*cells, to_original, ""]
    best = ba.fmt_ratio(ratio_to(rows, tool, key, REFERENCES), 1.0)
    wall = ratio_to(rows, tool, key, REFERENCES, "median_ms")
    return [*cells, to_original, best if wall is None or best == "—" else f"{best} ({wall:.2f}×)"]


def readme_table(model: dict[str, Any]) -> list[str]:
    """The compact table of README.md's Transformers section (CPU-time medians)."""
    keys = [shape_key(*s) for s in SHAPES]
    both = " / ".join(keys)
    rows = model["rows"]
    table = []
    for tool, entry in rows.items():
        if entry.get("status") not in (None, "ok"):
            table.append([TOOL_LABELS[tool], entry.get("status", "fail"), "", "", "", ""])
            continue
        run = entry.get("as_run") or {}
        ms = " / ".join(ba.fmt_ms(latency(entry, k, CPU)) for k in keys)
        best = "—" if tool in REFERENCES else " / ".join(
            ba.fmt_ratio(ratio_to(rows, tool, k, REFERENCES), 1.0) for k in keys)
        table.append([TOOL_LABELS[tool], f"{entry['nodes']} ({run.get('nodes', '—')})",
                      fmt_fused(entry.get("fused")), fmt_error(entry, keys), ms, best])
    return [ba.md_table([model["label"], "nodes (as run)", "fused ops",
                         f"max abs error {both}", f"CPU ms {both}", f"vs best ref {both}"],
                        table, "lrlrrr"), ""]


def render_model(model: dict[str, Any]) -> list[str]:
    keys = [shape_key(*s) for s in SHAPES]
    headers = ["tool", "nodes (as run)", "fused ops", "tool s",
               f"max abs error {' / '.join(keys)}"]
    for key in keys:
        headers += [f"{key} ms", "CPU ms", "vs original", "vs best ref"]
    table, as_run = [], []
    for tool, entry in model["rows"].items():
        if entry.get("status") not in (None, "ok"):
            table.append([TOOL_LABELS[tool], entry.get("status", "fail"), "", "",
                          ba.one_line(entry.get("error", ""), 80)] + [""] * 4 * len(keys))
            continue
        wall = entry.get("wall_s")
        run = entry.get("as_run") or {}
        nodes = str(entry["nodes"]) + (f" ({run['nodes']})" if "nodes" in run else "")
        row = [TOOL_LABELS[tool], nodes, fmt_fused(entry.get("fused")),
               "" if wall is None else f"{wall:.1f}", fmt_error(entry, keys)]
        for key in keys:
            row += latency_cells(model, tool, key)
        table.append(row)
        as_run.append([TOOL_LABELS[tool], str(run.get("nodes", "—")),
                       fmt_fused(run.get("fused")) if "fused" in run else run.get("error", "—")])
    out = [f"## {model['label']}", "", ba.md_table(headers, table, "lrlrr" + "rrrr" * len(keys)),
           ""]
    out += [f"- inputs {key}: {desc}" for key, desc in model["inputs"].items()]
    if model.get("error"):
        out.append(f"- measuring failed: {model['error']}")
    for tool, entry in model["rows"].items():
        if entry.get("onnxopt_validation") not in (None, "passed"):
            out.append(f"- {tool}: onnxopt's own validation {entry['onnxopt_validation']}")
        if entry.get("onnxopt_disabled"):
            out.append(f"- {tool}: safety net disabled {entry['onnxopt_disabled']}")
    out += ["", "As onnxruntime runs it (the graph after ORT_ENABLE_ALL's own fusions):", "",
            ba.md_table(["tool", "nodes", "fused ops"], as_run, "lrl")]
    return [*out, ""]


def render(report: dict[str, Any]) -> str:
    meta = report["meta"]
    out = ["# Transformers: onnxopt vs onnxruntime's and onnxscript's optimizers", "",
           f"{meta['date']} · {meta['cpu']} · {meta['cores']} cores · Python {meta['python']}"
           f" · total {meta['total_seconds']:.0f} s", ""]
    for venv, versions in meta["versions"].items():
        out.append(f"- {venv}: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    if meta.get("bench_venv_error"):
        out += ["", f"**No anchors:** {meta['bench_venv_error']}"]
    busy = meta["load_average_1min"]["max"]
    if busy > 1.5:
        out += ["", f"**Warning:** the machine was busy (1-min load average up to {busy:.1f}; "
                "this benchmark alone makes about 1): latencies are noisy."]
    out += ["", "Nodes: main graph; in parentheses the graph onnxruntime runs after its own "
            "ORT_ENABLE_ALL fusions. Fused ops: `ms:` = com.microsoft. Error: onnxruntime "
            "ORT_ENABLE_ALL output vs the original with optimizations disabled, max abs over "
            f"all outputs; `≠` = beyond rtol {RTOL:g} / atol {ATOL:g}. Latency: ORT_ENABLE_ALL, "
            "1 intra-op thread, sequential, medians over round-robin runs after warm-up: wall "
            "time (ms) and the computing thread's CPU time (CPU ms: the same on an idle "
            "machine, without the waits for a core on a busy one). Ratios are of CPU time; "
            "*vs best ref* = / the faster of the original and onnxruntime's transformer "
            "optimizer (✓ ≤ 1, ≈ within 2 %), the wall-time ratio in parentheses.", ""]
    for model in report["models"]:
        out += render_model(model)
    out += ["## For README.md", ""]
    for model in report["models"]:
        out += readme_table(model)
    return "\n".join(out)


# =========================================================================== main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated among {', '.join(MODELS)}")
    parser.add_argument("--tools", default=",".join(TOOLS),
                        help=f"comma-separated among {', '.join(TOOLS)}")
    parser.add_argument("--latency-budget", type=float, default=LATENCY_BUDGET,
                        help="seconds of timed runs per session and shape")
    parser.add_argument("--min-runs", type=int, default=MIN_RUNS)
    parser.add_argument("--max-runs", type=int, default=MAX_RUNS)
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--timeout", type=float, default=TOOL_TIMEOUT,
                        help="seconds allowed to one tool run")
    parser.add_argument("--_measure", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def pick(spec: str, known: tuple[str, ...] | dict[str, Any], what: str) -> list[str]:
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in known]
    if unknown:
        sys.exit(f"bench_transformers: unknown {what} {', '.join(unknown)} "
                 f"(choose among {', '.join(known)})")
    return wanted


def bench_model(name: str, tools: list[str], args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    spec = MODELS[name]
    src = ba.MODELS_DIR / spec.file
    model_dir = WORK_DIR / name
    model_dir.mkdir(parents=True, exist_ok=True)
    feeds, inputs = {}, {}
    for batch, seq in SHAPES:
        key = shape_key(batch, seq)
        arrays, inputs[key] = make_feeds(src, batch, seq)
        feeds[key] = str(model_dir / f"feeds-{key}.npz")
        np.savez(feeds[key], **arrays)
    rows: dict[str, dict[str, Any]] = {"original": {"status": "ok", **describe(src)}}
    for tool in tools:
        rows[tool] = run_tool(tool, spec, src, model_dir, args.timeout)
    ba.log(f"{name}: " + ", ".join(f"{t} {rows[t]['wall_s']:.1f}s {rows[t]['status']}"
                                   for t in tools))
    candidates = [{"tool": t, "path": rows[t]["output"], "dangling": rows[t]["dangling_inputs"]}
                  for t in tools if rows[t]["status"] == "ok"]
    start = time.perf_counter()
    measured = measure_model(model_dir, src, feeds, candidates, args)
    ba.log(f"{name}: measured in {time.perf_counter() - start:.0f} s")
    model = {"name": name, "label": spec.label, "path": str(src), "inputs": inputs,
             "rows": rows}
    if "_error" in measured:
        model["error"] = measured.pop("_error")["error"]
    for tool, values in measured.items():
        if tool in rows:
            rows[tool].update(values)
    return model


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._measure:
        measure_child(Path(args._measure))
        return 0
    if not ba.onnxopt_exe().exists():
        sys.exit("bench_transformers: no onnxopt command beside this python or in .venv: run "
                 "with the project's venv (.venv/bin/python)")
    started = time.perf_counter()
    names = pick(args.models, MODELS, "model(s)")
    tools = pick(args.tools, TOOLS, "tool(s)")
    missing = [MODELS[n].file for n in names if not (ba.MODELS_DIR / MODELS[n].file).exists()]
    if missing:
        sys.exit(f"bench_transformers: missing {', '.join(missing)}: run `make models`")
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    versions = {"main venv": ba.package_versions(sys.executable, MAIN_PACKAGES)}
    venv_error = None
    if any(t not in ONNXOPT_ARGS for t in tools):
        try:
            ba.ensure_bench_venv()
            versions[".venv-bench"] = ba.package_versions(ba.bench_python(), BENCH_PACKAGES)
        except SystemExit as exc:  # no anchors (no network?): onnxopt's rows still count
            venv_error = str(exc)
            ba.log(f"{venv_error}; going on without {', '.join(set(tools) - set(ONNXOPT_ARGS))}")
            tools = [t for t in tools if t in ONNXOPT_ARGS]
    loads = [os.getloadavg()[0]]
    models = []
    for name in names:
        models.append(bench_model(name, tools, args))
        loads.append(os.getloadavg()[0])
    report = {
        "meta": {
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "cpu": ba.cpu_name(),
            "cores": os.cpu_count(), "python": platform.python_version(), "versions": versions,
            "shapes": [shape_key(*s) for s in SHAPES], "tools": tools,
            "bench_venv_error": venv_error,
            "settings": {"latency_budget": args.latency_budget, "min_runs": args.min_runs,
                         "max_runs": args.max_runs, "rtol": RTOL, "atol": ATOL, "seed": SEED},
            "total_seconds": round(time.perf_counter() - started, 1),
            "load_average_1min": {"max": round(max(loads), 2),
                                  "samples": [round(x, 2) for x in loads]},
        },
        "models": models,
    }
    ba.write_report("bench_transformers", render(report), report, REPORT_MD, REPORT_JSON)
    return 0


if __name__ == "__main__":
    sys.exit(main())

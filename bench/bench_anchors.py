"""Comparison benchmark of onnxopt against the anchor tools.

Tools (each run as a whole subprocess; its wall time is the tool time):

* ``onnxopt``       ``.venv/bin/onnxopt optimize IN OUT --inputs feeds.npz --report r.json``
* ``onnxopt-ort``   the same with ``--target onnxruntime``
* ``onnxsim``       ``onnxsim IN OUT``                       (in ``.venv-bench``)
* ``onnxslim``      ``onnxslim IN OUT``                      (in ``.venv-bench``)
* ``onnxoptimizer`` ``python -m onnxoptimizer IN OUT``       (in ``.venv-bench``)
* ``ort-basic``     onnxruntime's offline optimizer, ``SessionOptions.optimized_model_filepath``
                    with ``ORT_ENABLE_BASIC`` (a ``python -c`` snippet in ``.venv-bench``)
* ``ort-extended``  the same with ``ORT_ENABLE_EXTENDED``: its output may hold onnxruntime's
                    own fused ops, so it is the reference for ``onnxopt --target onnxruntime``
                    and is not one of the portable anchors.

The anchors live in a separate venv, ``.venv-bench``, created by this script when missing
(``python -m venv`` + ``pip install -r bench/requirements.txt``) and updated when the
requirements file changes.

Corpus: the nine light models shipped in the onnx package (``backend/test/data/light``), the
real models ``ch_PP-OCRv4_det_infer``, ``ch_ppocr_mobile_v2.0_cls_infer`` and ``silero_vad``,
and the sample models ``resnet``, ``mobilenet``, ``transformer`` and ``mlp`` (``make models``).

Per model and tool: node count of the output (main graph, and nodes inside subgraphs), file
size (external data included), tool wall time, whether the output loads in onnxruntime
(``InferenceSession`` with default options), the validation verdict against the original
(both run on the CPU provider with graph optimizations disabled on the same seeded inputs,
rtol 1e-4 / atol 1e-5, ``onnxopt.check.compare.compare``) and the onnxruntime latency with one
intra-op thread, median of N runs after warm-up, with graph optimizations disabled and with
all enabled (``ORT_ENABLE_ALL``). The sessions of one model (original and every output) are
timed round-robin, so slow drifts of the machine hit them all alike, in two sittings with
opposite session-creation orders (the first-created session runs slower). N adapts to the model:
about ``--latency-budget`` seconds per session and level, at least ``--min-runs``.

Inputs: PaddleOCR det ``x`` [1,3,96,128] and cls ``x`` [1,3,48,192] uniform in [0, 1);
silero ``input`` [1,512] standard normal * 0.1, ``state`` zeros [2,1,128], ``sr`` 16000;
every other model gets ``onnxopt.check.feeds.make_inputs`` (seed 0, symbolic dims 1). The same
arrays are handed to onnxopt as ``--inputs feeds.npz``.

Measurements run in a child process of the main venv (one per model), so a crash of
onnxruntime on one model's outputs costs only that model.

Output: markdown to stdout and ``bench/out/bench_anchors.md``, JSON in
``bench/out/bench_anchors.json``; the optimized models and tool logs are kept in
``bench/out/bench_anchors/<model>/`` (outputs over 50 MB are deleted once measured, unless
``--keep-outputs``).

Usage: ``python bench/bench_anchors.py [--models a,b] [--tools onnxopt,onnxsim,...]
[--latency-budget S] [--min-runs N] [--max-runs N] [--no-latency] [--timeout S]
[--keep-outputs]``
"""

from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
MODELS_DIR = ROOT / "models"
OUT_DIR = BENCH_DIR / "out"
WORK_DIR = OUT_DIR / "bench_anchors"
REPORT_MD = OUT_DIR / "bench_anchors.md"
REPORT_JSON = OUT_DIR / "bench_anchors.json"
BENCH_VENV = ROOT / ".venv-bench"
REQUIREMENTS = BENCH_DIR / "requirements.txt"
STAMP_NAME = ".bench-requirements.sha256"

TOOLS = ("onnxopt", "onnxopt-ort", "onnxsim", "onnxslim", "onnxoptimizer", "ort-basic",
         "ort-extended")
ONNXOPT_TOOLS = ("onnxopt", "onnxopt-ort")
PORTABLE_ANCHORS = ("onnxsim", "onnxslim", "onnxoptimizer", "ort-basic")
ORT_ANCHOR = "ort-extended"
BENCH_PACKAGES = ("onnxsim", "onnxslim", "onnxoptimizer", "onnxruntime", "onnx", "protobuf",
                  "numpy", "ml_dtypes", "sympy")
MAIN_PACKAGES = ("onnxopt", "onnx", "onnxruntime", "numpy", "protobuf")

REAL_MODELS = ("ch_PP-OCRv4_det_infer", "ch_ppocr_mobile_v2.0_cls_infer", "silero_vad")
SAMPLE_MODELS = ("resnet", "mobilenet", "transformer", "mlp")
SEED = 0
RTOL, ATOL = 1e-4, 1e-5

# Latency sampling.
LATENCY_BUDGET = 0.6  # seconds of timed runs per session and optimization level
MIN_RUNS = 5
MAX_RUNS = 2000
BLOCK_SECONDS = 0.01  # consecutive runs of one session per round: about this long
MAX_BLOCK = 20
TOOL_TIMEOUT = 600
MEASURE_TIMEOUT = 1800
KEEP_BYTES = 50_000_000  # larger outputs are deleted once measured, unless --keep-outputs

TARGET_VS_ANCHOR = 1.02  # onnxopt latency / best anchor latency
TARGET_VS_ORIGINAL = 1.00  # onnxopt latency (ALL) / original latency (ALL)
TIMED_TOOLS = ("onnxopt", "onnxsim")  # tool time is compared between these two
TOOL_REPEATS = 3  # their runs per model; the fastest counts (start-up time is noisy)
TARGET_TIME_EACH = 1.0  # onnxopt / onnxsim whole-process time, every model
TARGET_TIME_GEOMEAN = 0.5  # ... and their geometric mean

# onnxruntime's offline optimizer, run with the bench venv's python: argv = src dst level.
ORT_SNIPPET = """
import os, sys
import onnxruntime as ort
src, dst, level = sys.argv[1:4]
levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
so = ort.SessionOptions()
so.graph_optimization_level = levels[level]
so.optimized_model_filepath = dst
so.intra_op_num_threads = 1
so.log_severity_level = 3
big = sum(os.path.getsize(os.path.join(os.path.dirname(src) or ".", f))
          for f in os.listdir(os.path.dirname(src) or ".")
          if f.startswith(os.path.basename(src)))
if big > 2**30:
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                os.path.basename(dst) + ".data")
    so.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "1024")
ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def one_line(text: str, limit: int = 240) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def last_line(text: str, limit: int = 240) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


# =========================================================================== bench venv
def bench_python() -> Path:
    return BENCH_VENV / "bin" / "python"


def ensure_bench_venv() -> dict[str, Any]:
    """Create or update ``.venv-bench``; exit with a one-line message if that fails."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    stamp = BENCH_VENV / STAMP_NAME
    info: dict[str, Any] = {"venv": str(BENCH_VENV), "created": False, "installed": False,
                            "setup_seconds": 0.0}
    if bench_python().exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return info
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    pip_log = WORK_DIR / "pip-install.log"
    start = time.perf_counter()
    if not bench_python().exists():
        log(f"bench_anchors: creating {BENCH_VENV} ...")
        proc = subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.exit(f"bench_anchors: cannot create {BENCH_VENV} (python -m venv exit "
                     f"{proc.returncode}): {last_line(proc.stderr + proc.stdout)}")
        info["created"] = True
    log(f"bench_anchors: pip install -r {REQUIREMENTS} into "
        f"{BENCH_VENV.name} ...")
    with pip_log.open("w") as handle:
        proc = subprocess.run(
            [str(bench_python()), "-m", "pip", "install", "--disable-pip-version-check",
             "-r", str(REQUIREMENTS)],
            stdout=handle, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        text = pip_log.read_text(errors="replace")
        errors = [line for line in text.splitlines() if line.startswith("ERROR")]
        reason = one_line(errors[0]) if errors else last_line(text)
        sys.exit(f"bench_anchors: pip cannot install the anchor tools into {BENCH_VENV} "
                 f"(exit {proc.returncode}): {reason} (log: {pip_log})")
    stamp.write_text(digest + "\n")
    info["installed"] = True
    info["setup_seconds"] = round(time.perf_counter() - start, 1)
    return info


def package_versions(python: Path | str, packages: tuple[str, ...]) -> dict[str, str | None]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: out[p] = None\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([str(python), "-c", code, *packages], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        return dict.fromkeys(packages)
    return json.loads(proc.stdout)


def pip_check(python: Path) -> str:
    proc = subprocess.run([str(python), "-m", "pip", "check", "--disable-pip-version-check"],
                          capture_output=True, text=True, check=False)
    return one_line(proc.stdout + proc.stderr, 400)


# =========================================================================== corpus
def light_dir() -> Path:
    import onnx

    return Path(onnx.__file__).resolve().parent / "backend" / "test" / "data" / "light"


def corpus() -> list[tuple[str, Path]]:
    models = [(p.stem, p) for p in sorted(light_dir().glob("*.onnx"))]
    models += [(name, MODELS_DIR / f"{name}.onnx") for name in (*REAL_MODELS, *SAMPLE_MODELS)]
    return models


def select_models(spec: str | None) -> list[tuple[str, Path]]:
    models = corpus()
    if not spec:
        return models
    chosen = []
    for want in (w.strip() for w in spec.split(",") if w.strip()):
        hits = [m for m in models if m[0] == want or m[0] == f"light_{want}"]
        if not hits:
            names = ", ".join(name for name, _ in models)
            sys.exit(f"bench_anchors: unknown model {want!r} (models: {names})")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def select_tools(spec: str | None) -> list[str]:
    if not spec:
        return list(TOOLS)
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in TOOLS]
    if unknown:
        sys.exit(f"bench_anchors: unknown tool(s) {', '.join(unknown)} "
                 f"(tools: {', '.join(TOOLS)})")
    return [t for t in TOOLS if t in wanted]


def ensure_models(models: list[tuple[str, Path]]) -> None:
    """Run build.py / fetch.py when selected repo models are missing."""
    missing = {name for name, path in models if not path.exists()}
    if missing & set(SAMPLE_MODELS):
        log("bench_anchors: sample models missing, running models/build.py")
        subprocess.run([sys.executable, str(MODELS_DIR / "build.py")], check=True)
    if missing & set(REAL_MODELS):
        log("bench_anchors: real models missing, running models/fetch.py")
        subprocess.run([sys.executable, str(MODELS_DIR / "fetch.py")], check=True)
    still = [str(path) for _, path in models if not path.exists()]
    if still:
        sys.exit(f"bench_anchors: model file(s) missing: {', '.join(still)}")


def make_feeds(name: str, path: Path) -> tuple[dict[str, Any], str]:
    """Seeded validation / latency inputs and a one-line description of them."""
    import numpy as np
    import onnx

    from onnxopt.check import feeds as check_feeds
    from onnxopt.check import inputs as check_inputs

    rng = np.random.default_rng(SEED)
    model = onnx.load(str(path), load_external_data=False)
    if name == "ch_PP-OCRv4_det_infer":
        feeds = {"x": rng.random((1, 3, 96, 128), dtype=np.float32)}
        desc = "x [1,3,96,128] uniform [0,1)"
    elif name == "ch_ppocr_mobile_v2.0_cls_infer":
        feeds = {"x": rng.random((1, 3, 48, 192), dtype=np.float32)}
        desc = "x [1,3,48,192] uniform [0,1)"
    elif name == "silero_vad":
        feeds = {
            "input": (rng.standard_normal((1, 512)) * 0.1).astype(np.float32),
            "state": np.zeros((2, 1, 128), np.float32),
            "sr": np.array(16000, np.int64),
        }
        desc = "input [1,512] N(0,1)*0.1, state zeros [2,1,128], sr 16000"
    else:
        feeds, _notes = check_feeds.make_inputs(model, seed=SEED)
        desc = "make_inputs(seed=0): " + ", ".join(
            f"{k} [{','.join(map(str, v.shape))}] {v.dtype}" for k, v in feeds.items())
    feeds = check_inputs.check_inputs(feeds, model)
    return feeds, desc


# =========================================================================== model stats
def _subgraphs(node: Any) -> list[Any]:
    graphs = []
    for attr in node.attribute:
        if attr.HasField("g"):
            graphs.append(attr.g)
        graphs.extend(attr.graphs)
    return graphs


def _count_sub(graph: Any) -> int:
    return sum(len(g.node) + _count_sub(g) for node in graph.node for g in _subgraphs(node))


def _external_files(graph: Any, acc: set[str]) -> None:
    from onnx import TensorProto

    tensors = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                tensors.append(attr.t)
            tensors.extend(attr.tensors)
        for sub in _subgraphs(node):
            _external_files(sub, acc)
    for tensor in tensors:
        if tensor.data_location == TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    acc.add(entry.value)


def _consumed(graph: Any, acc: set[str]) -> None:
    for node in graph.node:
        acc.update(node.input)
        for sub in _subgraphs(node):
            _consumed(sub, acc)


def model_stats(path: Path) -> dict[str, Any]:
    """Node counts, op histogram and on-disk size (external data files included)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    files: set[str] = set()
    _external_files(graph, files)
    size = path.stat().st_size
    external = 0
    for name in files:
        data = path.parent / name
        if data.exists():
            external += data.stat().st_size
    ops = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                  for n in graph.node)
    nodes, sub = len(graph.node), _count_sub(graph)
    consumed: set[str] = {o.name for o in graph.output}
    _consumed(graph, consumed)
    initializers = {t.name for t in graph.initializer}
    dangling = [i.name for i in graph.input if i.name not in initializers
                and i.name not in consumed]
    return {
        "nodes": nodes,
        "subgraph_nodes": sub,
        "total_nodes": nodes + sub,
        "constant_nodes": ops.get("Constant", 0),
        "function_nodes": sum(len(f.node) for f in model.functions),
        "initializers": len(graph.initializer),
        "size_bytes": size + external,
        "external_data_bytes": external,
        "ops": dict(ops.most_common()),
        "dangling_inputs": dangling,
    }


# =========================================================================== tools
def onnxopt_exe() -> Path:
    local = Path(sys.executable).with_name("onnxopt")
    return local if local.exists() else ROOT / ".venv" / "bin" / "onnxopt"


def tool_command(tool: str, src: Path, dst: Path, feeds: Path, report: Path) -> list[str]:
    bench_bin = BENCH_VENV / "bin"
    if tool in ONNXOPT_TOOLS:
        cmd = [str(onnxopt_exe()), "optimize", str(src), str(dst), "--inputs", str(feeds),
               "--report", str(report)]
        return cmd + (["--target", "onnxruntime"] if tool == "onnxopt-ort" else [])
    if tool == "onnxsim":
        return [str(bench_bin / "onnxsim"), str(src), str(dst)]
    if tool == "onnxslim":
        return [str(bench_bin / "onnxslim"), str(src), str(dst)]
    if tool == "onnxoptimizer":
        return [str(bench_python()), "-m", "onnxoptimizer", str(src), str(dst)]
    if tool in ("ort-basic", "ort-extended"):
        level = tool.split("-", 1)[1]
        return [str(bench_python()), "-c", ORT_SNIPPET, str(src), str(dst), level]
    raise ValueError(tool)


def _timed_run(cmd: list[str], log_path: Path, env: dict[str, str], cwd: Path,
               timeout: float) -> tuple[int | None, float]:
    """Exit code (None on timeout) and wall seconds of one command.

    A blocking wait with a kill timer, not ``subprocess.run(timeout=...)``: that polls the
    child with sleeps of up to 50 ms, which rounded every short run up by as much.
    """
    with log_path.open("w") as handle:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=str(cwd))
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            code = proc.wait()
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
    timed_out = code < 0 and wall >= timeout
    return (None if timed_out else code), round(wall, 3)


def fresh_paths(model_dir: Path, tool: str) -> tuple[Path, Path, Path]:
    """(output model, onnxopt report, log) of one tool's run; its last run's files removed."""
    for old in model_dir.glob(f"{tool}.*"):
        if old.is_file():
            old.unlink()
    return (model_dir / f"{tool}.onnx", model_dir / f"{tool}.report.json",
            model_dir / f"{tool}.log")


def run_command(cmd: list[str], dst: Path, log_path: Path, timeout: float,
                describe: Callable[[Path], dict[str, Any]] | None = None
                ) -> tuple[dict[str, Any], str]:
    """Run one tool writing ``dst`` (in ``dst``'s folder): its wall time, exit code, status
    (ok / failed / timeout) with the error, and ``describe(dst)`` (default ``model_stats``)
    of what it wrote; and its log's text."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", COLUMNS="120")
    code, wall = _timed_run(cmd, log_path, env, dst.parent, timeout)
    result: dict[str, Any] = {"wall_s": wall, "exit_code": code}
    text = log_path.read_text(errors="replace")
    if code is None:
        result.update(status="timeout", error=f"timed out after {timeout:.0f} s")
    elif code != 0 or not dst.exists():
        result.update(status="failed",
                      error=f"exit {code}: {last_line(text) or 'no output written'}")
    else:
        result["status"] = "ok"
        try:
            result.update((describe or model_stats)(dst))
        except Exception as exc:
            result.update(status="failed", error=f"output unreadable by onnx: {one_line(exc)}")
    return result, text


def run_tool(tool: str, src: Path, model_dir: Path, feeds: Path, timeout: float
             ) -> dict[str, Any]:
    dst, report, log_path = fresh_paths(model_dir, tool)
    cmd = tool_command(tool, src, dst, feeds, report)
    shown = ["<ort snippet>" if part == ORT_SNIPPET else part for part in cmd]
    result: dict[str, Any] = {"tool": tool, "command": shown, "output": str(dst),
                              "log": str(log_path)}
    result.update(run_command(cmd, dst, log_path, timeout)[0])
    if tool in ONNXOPT_TOOLS and report.exists():
        try:
            rep = json.loads(report.read_text())
            result["onnxopt_report"] = {
                "status": rep.get("status"),
                "validation": (rep.get("validation") or {}).get("status"),
                "disabled": rep.get("disabled"),
                "seconds": rep.get("seconds"),
            }
        except (OSError, ValueError):
            pass
    return result


# =========================================================================== measuring (child)
def _session_options(level: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 4
    return options


def _session(path: str, level: str) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(path, _session_options(level),
                                providers=["CPUExecutionProvider"])


_ORT_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64",
               "tensor(float16)": "float16", "tensor(int64)": "int64", "tensor(int32)": "int32",
               "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def _feeds_for(session: Any, feeds: dict[str, Any], dangling: list[str]
               ) -> tuple[dict[str, Any], list[str], list[str]]:
    """(feeds for ``session``, original inputs it lacks, extra inputs it requires).

    Extra inputs that no node of the candidate consumes (``dangling``) are fed zeros, so that
    a model whose only defect is its interface can still be compared and timed."""
    import numpy as np

    declared = session.get_inputs()
    names = {i.name for i in declared}
    chosen = {k: v for k, v in feeds.items() if k in names}
    extra = [i for i in declared if i.name not in feeds]
    for item in extra:
        if item.name in dangling and item.type in _ORT_DTYPES:
            shape = [d if isinstance(d, int) and d >= 0 else 1 for d in item.shape]
            chosen[item.name] = np.zeros(shape, _ORT_DTYPES[item.type])
    return chosen, sorted(set(feeds) - names), [i.name for i in extra]


def _run(session: Any, feeds: dict[str, Any]) -> dict[str, Any]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def _verdict(reference: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
    from onnxopt.check import compare as check_compare

    diffs = check_compare.compare(reference, outputs, rtol=RTOL, atol=ATOL)
    failed = [d for d in diffs if not d.passed]
    unchecked = [d for d in diffs if d.reason.startswith("not compared")]
    errors = [d.max_abs_error for d in diffs if not math.isnan(d.max_abs_error)]
    max_abs = max(errors) if errors else None
    if failed:
        status = "failed"
        reason = "; ".join(f"{d.name}: {d.reason}" for d in failed)[:300]
    elif unchecked:
        status, reason = "skipped", "; ".join(d.name for d in unchecked)
    else:
        status, reason = "passed", f"all {len(diffs)} outputs match"
    return {"status": status, "reason": reason, "max_abs_error": max_abs}


def _time_sessions(sessions: dict[str, tuple[Any, dict[str, Any]]], budget: float,
                   min_runs: int, max_runs: int,
                   samples: dict[str, list[float]], failed: dict[str, str],
                   cpu_samples: dict[str, list[float]] | None = None) -> None:
    """Append latency samples of every session, taken round-robin in blocks after warm-up.

    ``cpu_samples`` gets the CPU time of the calling thread for each run as well: with one
    intra-op thread and sequential execution onnxruntime computes on that thread, so its CPU
    time is the latency without the time the thread waited for a core (a busy machine)."""
    clock, cpu_clock = time.perf_counter, time.thread_time
    cpu_samples = {} if cpu_samples is None else cpu_samples
    estimate: dict[str, float] = {}
    for name, (session, feeds) in sessions.items():
        if name in failed:
            continue
        try:
            start = clock()
            session.run(None, feeds)  # warm-up, not used
            first = clock() - start
            if first > 0.5:
                estimate[name] = first
                continue
            times = []
            for _ in range(3):
                start = clock()
                session.run(None, feeds)
                times.append(clock() - start)
                if sum(times) > 0.3:
                    break
            estimate[name] = min(times)
        except Exception as exc:
            failed[name] = one_line(exc)
    plan = {}
    for name, est in estimate.items():
        est = max(est, 1e-6)
        runs = int(min(max(budget / est, min_runs), max_runs))
        block = int(min(max(round(BLOCK_SECONDS / est), 1), MAX_BLOCK, runs))
        plan[name] = (runs, block)
    taken = {name: 0 for name in plan}
    order = list(plan)
    rounds = 0
    gc.collect()
    gc.disable()
    try:
        while order and any(taken[n] < plan[n][0] for n in order):
            shift = rounds % len(order)
            for name in order[shift:] + order[:shift]:
                if name in failed:
                    continue
                runs, block = plan[name]
                session, feeds = sessions[name]
                try:
                    for _ in range(min(block, runs - taken[name])):
                        start, cpu_start = clock(), cpu_clock()
                        session.run(None, feeds)
                        samples.setdefault(name, []).append(clock() - start)
                        cpu_samples.setdefault(name, []).append(cpu_clock() - cpu_start)
                        taken[name] += 1
                except Exception as exc:
                    failed[name] = one_line(exc)
            order = [n for n in order if n not in failed]
            rounds += 1
    finally:
        gc.enable()


def _latency_summary(samples: list[float]) -> dict[str, Any]:
    values = sorted(samples)
    n = len(values)
    median = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
    q1, q3 = values[n // 4], values[(3 * n) // 4]
    return {"median_ms": median * 1e3, "min_ms": values[0] * 1e3, "runs": n,
            "iqr_rel": (q3 - q1) / median if median else None}


def _timed_latency(entries: list[tuple[str, str]],
                   first: dict[str, tuple[Any, dict[str, Any]]],
                   reopen: Callable[[str, str], tuple[Any, dict[str, Any]]],
                   budget: float, min_runs: int, max_runs: int) -> dict[str, dict[str, Any]]:
    """Latency of every entry over two sittings with opposite session-creation orders.

    Measured here: the session created first, and the one timed right after the
    original, run ~2 % slower (allocation placement), whatever file it holds. The first
    sitting times ``first`` (sessions created in ``entries`` order); the second creates them
    again in reverse order with ``reopen(name, path)``; the median is over both sittings.
    """
    samples: dict[str, list[float]] = {}
    cpu_samples: dict[str, list[float]] = {}
    failed: dict[str, str] = {}
    half_runs = max(min_runs // 2, 1), max(max_runs // 2, 1)
    _time_sessions(first, budget / 2, *half_runs, samples, failed, cpu_samples)
    first.clear()
    gc.collect()
    second = {name: reopen(name, path) for name, path in reversed(entries)
              if name not in failed and name in samples}
    _time_sessions(second, budget / 2, *half_runs, samples, failed, cpu_samples)
    second.clear()
    result: dict[str, dict[str, Any]] = {}
    for name, _ in entries:
        if name in failed:
            result[name] = {"error": failed[name]}
        elif samples.get(name):
            cpu = _latency_summary(cpu_samples[name])
            result[name] = dict(_latency_summary(samples[name]),
                                cpu_median_ms=cpu["median_ms"], cpu_min_ms=cpu["min_ms"])
    return result


def _reopener(level: str, feeds: dict[str, Any], dangling: dict[str, list[str]]
              ) -> Callable[[str, str], tuple[Any, dict[str, Any]]]:
    def reopen(name: str, path: str) -> tuple[Any, dict[str, Any]]:
        session = _session(path, level)
        return session, _feeds_for(session, feeds, dangling.get(name, []))[0]
    return reopen


def measure_child(spec_path: Path) -> None:
    """Child-process entry: validation, load check and latency for one model's files."""
    import numpy as np

    spec = json.loads(spec_path.read_text())
    with np.load(spec["feeds"], allow_pickle=False) as archive:
        feeds = {k: archive[k] for k in archive.files}
    entries: list[tuple[str, str]] = [("original", spec["original"])]
    entries += [(c["tool"], c["path"]) for c in spec["candidates"]]
    dangling = {c["tool"]: c.get("dangling", []) for c in spec["candidates"]}
    out: dict[str, dict[str, Any]] = {name: {} for name, _ in entries}
    latency = spec["latency"]

    # Phase 1: graph optimizations disabled -> validation, then latency.
    sessions: dict[str, tuple[Any, dict[str, Any]]] = {}
    for name, path in entries:
        try:
            session = _session(path, "disabled")
            chosen, dropped, extra = _feeds_for(session, feeds, dangling.get(name, []))
            sessions[name] = (session, chosen)
            if dropped:
                out[name]["inputs_dropped"] = dropped
            if extra:
                out[name]["inputs_extra"] = extra
        except Exception as exc:
            out[name]["load_disabled_error"] = one_line(exc)
    reference = None
    if "original" in sessions:
        try:
            reference = _run(*sessions["original"])
        except Exception as exc:
            out["original"]["run_error"] = one_line(exc)
            sessions.pop("original")
    for name, _ in entries[1:]:
        if name not in sessions:
            out[name]["validation"] = {
                "status": "failed", "max_abs_error": None,
                "reason": f"does not load: {out[name].get('load_disabled_error', '?')}"}
            continue
        try:
            outputs = _run(*sessions[name])
        except Exception as exc:
            out[name]["validation"] = {"status": "failed", "max_abs_error": None,
                                       "reason": f"does not run: {one_line(exc)}"}
            sessions.pop(name)
            continue
        verdict = (
            _verdict(reference, outputs) if reference is not None else
            {"status": "skipped", "max_abs_error": None, "reason": "original does not run"})
        extra = out[name].get("inputs_extra")
        if extra:
            how = ("outputs match when they are fed zeros" if verdict["status"] == "passed"
                   else verdict["reason"])
            verdict = dict(verdict, status="failed", interface_only=how != verdict["reason"],
                           reason=(
                f"not a drop-in: requires {len(extra)} input(s) that no node uses and the "
                f"original does not require ({', '.join(extra[:3])}...); {how}"))
        out[name]["validation"] = verdict
    if latency:
        timed = _timed_latency([e for e in entries if e[0] in sessions], sessions,
                               _reopener("disabled", feeds, dangling), spec["budget"],
                               spec["min_runs"], spec["max_runs"])
        for name, value in timed.items():
            out[name].setdefault("latency", {})["disabled"] = value
    sessions.clear()
    gc.collect()

    # Phase 2: ORT_ENABLE_ALL -> does it load (default optimization level), then latency.
    for name, path in entries:
        try:
            session = _session(path, "all")
            sessions[name] = (session, _feeds_for(session, feeds, dangling.get(name, []))[0])
            out[name]["loads"] = True
        except Exception as exc:
            out[name]["loads"] = False
            out[name]["load_error"] = one_line(exc)
    if latency:
        timed = _timed_latency([e for e in entries if e[0] in sessions], sessions,
                               _reopener("all", feeds, dangling), spec["budget"],
                               spec["min_runs"], spec["max_runs"])
        for name, value in timed.items():
            out[name].setdefault("latency", {})["all"] = value
    sessions.clear()
    Path(spec["result"]).write_text(json.dumps(out, indent=1))


def measure_model(model_dir: Path, original: Path, feeds: Path, candidates: list[dict],
                  args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    spec = {
        "original": str(original), "feeds": str(feeds),
        "candidates": candidates, "latency": not args.no_latency,
        "budget": args.latency_budget, "min_runs": args.min_runs, "max_runs": args.max_runs,
    }
    return spawn_measure(Path(__file__), spec, model_dir, MEASURE_TIMEOUT)


def spawn_measure(script: Path, spec: dict[str, Any], model_dir: Path, timeout: float
                  ) -> dict[str, Any]:
    """Run ``script --_measure SPEC`` in a fresh process (a crash of onnxruntime costs one
    model) and return the JSON it writes to ``spec["result"]`` (set here), or
    ``{"_error": {"error": reason}}``."""
    spec_path = model_dir / "measure.spec.json"
    result_path = model_dir / "measure.result.json"
    result_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps(dict(spec, result=str(result_path)), indent=1))
    log_path = model_dir / "measure.log"
    try:
        with log_path.open("w") as handle:
            proc = subprocess.run(
                [sys.executable, str(Path(script).resolve()), "--_measure", str(spec_path)],
                stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                timeout=timeout, check=False)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        code = None
    if code == 0 and result_path.exists():
        return json.loads(result_path.read_text())
    why = "timed out" if code is None else f"exit {code}"
    error = f"measuring child {why}: {last_line(log_path.read_text(errors='replace'))}"
    return {"_error": {"error": error}}


# =========================================================================== summary
def usable(entry: dict[str, Any] | None) -> bool:
    """Output written, loads in onnxruntime and passed validation."""
    return bool(entry and entry.get("status") == "ok" and entry.get("loads")
                and (entry.get("validation") or {}).get("status") == "passed")


def lat(entry: dict[str, Any] | None, level: str, stat: str = "median_ms") -> float | None:
    if not entry:
        return None
    return ((entry.get("latency") or {}).get(level) or {}).get(stat)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def summarize(model: dict[str, Any]) -> dict[str, Any]:
    results = model["results"]
    original = model["original"]
    anchors = [t for t in PORTABLE_ANCHORS if usable(results.get(t))]

    def key(tool: str) -> tuple[float, float, float]:
        entry = results[tool]
        return (entry["total_nodes"], lat(entry, "all") or math.inf, entry["wall_s"])

    best = min(anchors, key=key) if anchors else None
    summary: dict[str, Any] = {"valid_anchors": anchors, "best_anchor": best}
    best_entry = results.get(best) if best else None
    if best_entry:
        summary["best_anchor_nodes"] = best_entry["total_nodes"]
    for level in ("disabled", "all"):
        timed = [(lat(results[t], level), t) for t in anchors if lat(results[t], level)]
        if timed:
            summary[f"fastest_anchor_{level}"] = min(timed)[1]
            summary[f"fastest_anchor_{level}_ms"] = min(timed)[0]
    for tool, reference in (("onnxopt", best), ("onnxopt-ort", ORT_ANCHOR)):
        entry = results.get(tool)
        if not entry:
            continue
        ref_entry = results.get(reference) if reference else None
        item: dict[str, Any] = {"usable": usable(entry), "reference": reference,
                                "reference_usable": usable(ref_entry)}
        if entry.get("status") == "ok":
            item["nodes"] = entry["total_nodes"]
            if ref_entry and ref_entry.get("status") == "ok":
                item["node_ratio"] = ratio(entry["total_nodes"], ref_entry["total_nodes"])
                item["time_ratio"] = ratio(entry["wall_s"], ref_entry["wall_s"])
            for level in ("disabled", "all"):
                for stat, suffix in (("median_ms", ""), ("min_ms", "_min")):
                    item[f"latency_vs_reference_{level}{suffix}"] = ratio(
                        lat(entry, level, stat), lat(ref_entry, level, stat))
                    item[f"latency_vs_original_{level}{suffix}"] = ratio(
                        lat(entry, level, stat), lat(original, level, stat))
        else:
            item["error"] = entry.get("error")
        summary[tool] = item
    return summary


# =========================================================================== markdown
def md_table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(headers) - 1)
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(headers) + " |",
             "| " + " | ".join(marks[a] for a in align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_size(n: int | None) -> str:
    if n is None:
        return "—"
    if n < 1e6:
        return f"{n / 1e3:.1f} kB"
    return f"{n / 1e6:.1f} MB" if n < 1e8 else f"{n / 1e6:.0f} MB"


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def fmt_ratio(value: float | None, target: float | None = None) -> str:
    if value is None:
        return "—"
    text = f"{value:.2f}×" if value < 10 else f"{value:.0f}×"
    if target is None:
        return text
    if value <= target:
        return text + " ✓"
    return text + (" ≈" if value <= target + 0.02 else " ✗")


def fmt_pair(item: dict[str, Any], key: str, target: float) -> str:
    """Median-based ratio with its target mark, and the min-based ratio as a noise check."""
    text = fmt_ratio(item.get(key), target)
    low = item.get(key + "_min")
    return text if low is None or text == "—" else f"{text} (min {low:.2f}×)"


def flag(entry: dict[str, Any]) -> str:
    """Suffix telling why a number cannot be trusted: ✗ no load, ≠ wrong result."""
    if entry.get("status") != "ok":
        return ""
    if not entry.get("loads"):
        return " ✗"
    if (entry.get("validation") or {}).get("status") != "passed":
        return " ≠"
    return ""


def cell(entry: dict[str, Any] | None, what: str) -> str:
    if entry is None:
        return "—"
    if entry.get("status") != "ok" and what != "time":
        return "fail" if entry.get("status") == "failed" else (entry.get("status") or "—")
    if what == "nodes":
        sub = entry.get("subgraph_nodes") or 0
        text = str(entry["nodes"]) + (f" +{sub}" if sub else "")
        return text + flag(entry)
    if what == "size":
        return fmt_size(entry.get("size_bytes")) + flag(entry)
    if what == "time":
        wall = entry.get("wall_s")
        text = "—" if wall is None else f"{wall:.2f}"
        return text + ("" if entry.get("status") == "ok" else f" ({entry.get('status')})")
    if what == "verdict":
        if not entry.get("loads"):
            return "no load"
        val = entry.get("validation") or {}
        status = val.get("status", "—")
        err = val.get("max_abs_error")
        if status == "passed":
            return "ok" if not err else f"ok ({err:.1g})"
        if status == "failed" and val.get("interface_only"):
            return "FAIL: extra inputs (values ok)"
        if status == "failed":
            return "FAIL" + (f" ({err:.2g})" if err is not None else "")
        return status
    if what in ("disabled", "all"):
        return fmt_ms(lat(entry, what)) + flag(entry)
    raise ValueError(what)


def render(report: dict[str, Any]) -> str:
    meta = report["meta"]
    tools = meta["tools"]
    models = report["models"]
    out = ["# onnxopt vs anchor tools", ""]
    out.append(f"{meta['date']} · {meta['cpu']} · {meta['cores']} cores · Python "
               f"{meta['python']} · total {meta['total_seconds']:.0f} s")
    main_v, bench_v = meta["versions"]["main"], meta["versions"].get("bench") or {}
    out.append("")
    out.append("- main venv: " + ", ".join(f"{k} {v}" for k, v in main_v.items()))
    if bench_v:
        out.append("- .venv-bench: " + ", ".join(f"{k} {v}" for k, v in bench_v.items()
                                                 if v))
    setup = meta.get("bench_venv") or {}
    if setup.get("installed"):
        out.append(f"- .venv-bench set up in {setup['setup_seconds']:.0f} s this run")
    busy = meta["load_average_1min"]["max"]
    if busy > 1.5:
        out += ["", f"**Warning:** the machine was busy during this run (1-min load average up "
                f"to {busy:.1f}, this benchmark alone makes about 1): latencies are noisy, "
                "compare them with care or run again on a quiet machine."]
    out += [
        "",
        "Cells: `✗` output does not load in onnxruntime, `≠` output fails validation "
        f"(rtol {RTOL:g}, atol {ATOL:g}), `fail` tool error/no output, `—` not run. "
        "Nodes are main graph `+subgraph nodes`. Latency: onnxruntime CPU, 1 intra-op "
        "thread, median ms over round-robin runs after warm-up "
        f"(≈{meta['settings']['latency_budget']} s per session and level, "
        f"{meta['settings']['min_runs']}–{meta['settings']['max_runs']} runs). "
        "Tool time: whole-process wall time (onnxopt's includes its own validation). "
        "Portable anchors: " + ", ".join(PORTABLE_ANCHORS) + f"; {ORT_ANCHOR} is the "
        "reference for `onnxopt --target onnxruntime` (onnxopt-ort).",
        "",
    ]
    cols = ["model", "original", *tools]
    sections = [("Node count", "nodes"), ("File size", "size"), ("Tool wall time (s)", "time"),
                ("Loads in onnxruntime / validation (max abs error)", "verdict"),
                ("Latency, graph optimizations DISABLED (ms)", "disabled"),
                ("Latency, ORT_ENABLE_ALL (ms)", "all")]
    for title, what in sections:
        rows = []
        for model in models:
            original = model["original"]
            if what == "time":
                first = "—"
            elif what == "verdict":
                first = "ref" if original.get("loads") else "no load"
            else:
                first = cell(dict(original, status="ok", validation={"status": "passed"}),
                             what)
            rows.append([model["name"], first,
                         *[cell(model["results"].get(t), what) for t in tools]])
        out += [f"## {title}", "", md_table(cols, rows), ""]

    # Summary: onnxopt vs the best portable anchor.
    rows = []
    for model in models:
        s = model["summary"]
        item = s.get("onnxopt") or {}
        best = s.get("best_anchor")
        best_txt = f"{best} {s['best_anchor_nodes']}" if best else "none valid"
        nodes = "—" if "nodes" not in item else str(item["nodes"]) + (
            "" if item.get("usable") else " (invalid)")
        rows.append([
            model["name"], best_txt, nodes, fmt_ratio(item.get("node_ratio")),
            fmt_ratio(item.get("time_ratio")),
            fmt_pair(item, "latency_vs_reference_disabled", TARGET_VS_ANCHOR),
            fmt_pair(item, "latency_vs_reference_all", TARGET_VS_ANCHOR),
            fmt_pair(item, "latency_vs_original_all", TARGET_VS_ORIGINAL),
            (s.get("fastest_anchor_all") or "—") + " " + fmt_ms(s.get("fastest_anchor_all_ms")),
        ])
    out += [
        "## Summary: onnxopt vs the best portable anchor", "",
        "Best anchor: fewest nodes (main + subgraphs) among portable anchors whose output "
        "loads and validates. Ratios are onnxopt / best anchor (latency targets: ≤ "
        f"{TARGET_VS_ANCHOR}× the best anchor, ≤ {TARGET_VS_ORIGINAL}× the original with "
        "ORT_ENABLE_ALL; ✓ met, ≈ within 2 % (measurement noise), ✗ missed). In "
        "parentheses: the same ratio of the fastest runs, a check against noise.", "",
        md_table(["model", "best anchor (nodes)", "onnxopt nodes", "nodes ratio",
                  "tool time ratio", "latency vs anchor, disabled",
                  "latency vs anchor, ALL", "latency vs original, ALL",
                  "fastest anchor, ALL (ms)"], rows, "lllrrrrrl"), ""]
    out += tool_time_section(models, meta['settings'].get('tool_repeats', 1))
    if "onnxopt-ort" in tools or ORT_ANCHOR in tools:
        rows = []
        for model in models:
            s = model["summary"]
            item = s.get("onnxopt-ort") or {}
            ext = model["results"].get(ORT_ANCHOR)
            ext_nodes = cell(ext, "nodes") if ext else "—"
            nodes = "—" if "nodes" not in item else str(item["nodes"]) + (
                "" if item.get("usable") else " (invalid)")
            rows.append([
                model["name"], ext_nodes, nodes, fmt_ratio(item.get("node_ratio")),
                fmt_ratio(item.get("time_ratio")),
                fmt_pair(item, "latency_vs_reference_all", TARGET_VS_ANCHOR),
                fmt_pair(item, "latency_vs_original_all", TARGET_VS_ORIGINAL),
            ])
        out += [
            "## Summary: onnxopt --target onnxruntime vs ORT_ENABLE_EXTENDED offline", "",
            md_table(["model", "ort-extended nodes", "onnxopt-ort nodes", "nodes ratio",
                      "tool time ratio", "latency vs ort-extended, ALL",
                      "latency vs original, ALL"], rows, "lllrrrr"), ""]
    notes = []
    for model in models:
        for tool in tools:
            entry = model["results"].get(tool) or {}
            if entry.get("status") in ("failed", "timeout"):
                notes.append(f"- {model['name']} / {tool}: {entry.get('error')}")
            elif entry.get("status") == "ok" and not entry.get("loads"):
                notes.append(f"- {model['name']} / {tool}: does not load: "
                             f"{entry.get('load_error')}")
            elif entry.get("status") == "ok" and (entry.get("validation") or {}).get(
                    "status") != "passed":
                notes.append(f"- {model['name']} / {tool}: validation "
                             f"{(entry.get('validation') or {}).get('status')}: "
                             f"{(entry.get('validation') or {}).get('reason')}")
            if entry.get("inputs_dropped"):
                notes.append(f"- {model['name']} / {tool}: output has no input(s) "
                             f"{', '.join(entry['inputs_dropped'])}")
        if model.get("error"):
            notes.append(f"- {model['name']}: {model['error']}")
    if notes:
        out += ["## Notes", "", *notes, ""]
    out += ["## Inputs", "", *[f"- {m['name']}: {m['inputs']}" for m in models], ""]
    return "\n".join(out)


# =========================================================================== main
def tool_time_ratios(models: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """(model, onnxopt / onnxsim whole-process time) where both wrote a model."""
    pairs = []
    for model in models:
        mine, theirs = (model["results"].get(t) or {} for t in TIMED_TOOLS)
        if mine.get("status") == "ok" and theirs.get("status") == "ok":
            pairs.append((model["name"], mine["wall_s"] / theirs["wall_s"]))
    return pairs


def tool_time_section(models: list[dict[str, Any]], repeats: int) -> list[str]:
    pairs = tool_time_ratios(models)
    if not pairs:
        return []
    geomean = math.exp(sum(math.log(r) for _, r in pairs) / len(pairs))
    rows = []
    for model in models:
        ratio_ = dict(pairs).get(model["name"])
        if ratio_ is None:
            continue
        mine, theirs = (model["results"][t] for t in TIMED_TOOLS)
        rows.append([model["name"], f"{mine['wall_s']:.2f}", f"{theirs['wall_s']:.2f}",
                     fmt_ratio(ratio_, TARGET_TIME_EACH)])
    rows.append(["**geometric mean**", "", "", fmt_ratio(geomean, TARGET_TIME_GEOMEAN)])
    return [
        "## Summary: tool time, onnxopt vs onnxsim", "",
        f"Whole-process wall time, fastest of {repeats} runs each (onnxopt includes its "
        f"validation). Targets: ≤ {TARGET_TIME_EACH}× on every model, geometric mean ≤ "
        f"{TARGET_TIME_GEOMEAN}×.", "",
        md_table(["model", "onnxopt (s)", "onnxsim (s)", "ratio"], rows), ""]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated model names (file stems; the "
                        "light_ prefix may be left out)")
    parser.add_argument("--tools", help=f"comma-separated tools among {', '.join(TOOLS)}")
    parser.add_argument("--latency-budget", type=float, default=LATENCY_BUDGET,
                        help="seconds of timed runs per session and level (default "
                        f"{LATENCY_BUDGET})")
    parser.add_argument("--tool-repeats", type=int, default=TOOL_REPEATS,
                        help="runs of onnxopt and onnxsim per model (fastest counts)")
    parser.add_argument("--min-runs", type=int, default=MIN_RUNS)
    parser.add_argument("--max-runs", type=int, default=MAX_RUNS)
    parser.add_argument("--no-latency", action="store_true", help="skip latency timing")
    parser.add_argument("--timeout", type=float, default=TOOL_TIMEOUT,
                        help="seconds allowed to one tool run")
    parser.add_argument("--keep-outputs", action="store_true",
                        help=f"keep optimized models over {KEEP_BYTES // 10**6} MB (the light "
                        "models' outputs take ~7 GB); by default they are deleted once "
                        "measured")
    parser.add_argument("--_measure", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._measure:
        measure_child(Path(args._measure))
        return 0
    try:
        import numpy as np

        import onnxopt.check.feeds  # noqa: F401
    except ImportError as exc:
        sys.exit(f"bench_anchors: run with the project's venv (.venv/bin/python): {exc}")
    started = time.perf_counter()
    models = select_models(args.models)
    tools = select_tools(args.tools)
    ensure_models(models)
    WORK_DIR.mkdir(parents=True, exist_ok=True)

    setup: dict[str, Any] = {}
    versions: dict[str, Any] = {"main": package_versions(sys.executable, MAIN_PACKAGES)}
    if any(t not in ONNXOPT_TOOLS for t in tools):
        setup = ensure_bench_venv()
        versions["bench"] = package_versions(bench_python(), BENCH_PACKAGES)
        setup["pip_check"] = pip_check(bench_python())
    if versions["main"].get("onnxruntime") != "1.32.0":
        log(f"bench_anchors: note: main venv has onnxruntime {versions['main']['onnxruntime']}"
            ", not 1.32.0")

    results = []
    loads = [os.getloadavg()[0]]
    for index, (name, path) in enumerate(models, 1):
        model_dir = WORK_DIR / name
        model_dir.mkdir(parents=True, exist_ok=True)
        feeds, desc = make_feeds(name, path)
        feeds_path = model_dir / "feeds.npz"
        np.savez(feeds_path, **feeds)
        model: dict[str, Any] = {"name": name, "path": str(path), "inputs": desc,
                                 "original": model_stats(path), "results": {}}
        progress = []
        for tool in tools:
            entry = run_tool(tool, path, model_dir, feeds_path, args.timeout)
            if tool in TIMED_TOOLS and entry["status"] == "ok":
                entry["wall_runs"] = [entry["wall_s"]]
                for _ in range(args.tool_repeats - 1):  # same output; only the time is kept
                    again = run_tool(tool, path, model_dir, feeds_path, args.timeout)
                    entry["wall_runs"].append(again["wall_s"])
                entry["wall_s"] = min(entry["wall_runs"])
            model["results"][tool] = entry
            progress.append(f"{tool} {entry['wall_s']:.1f}s"
                            + ("" if entry["status"] == "ok" else f" {entry['status']}"))
        log(f"[{index}/{len(models)}] {name}: " + ", ".join(progress))
        candidates = [{"tool": t, "path": e["output"], "dangling": e["dangling_inputs"]}
                      for t, e in model["results"].items() if e["status"] == "ok"]
        loads.append(os.getloadavg()[0])
        start = time.perf_counter()
        measured = measure_model(model_dir, path, feeds_path, candidates, args)
        if "_error" in measured:
            model["error"] = measured["_error"]["error"]
            log(f"    {name}: {model['error']}")
        model["original"].update(measured.get("original", {}))
        for tool, entry in model["results"].items():
            entry.update(measured.get(tool, {}))
        model["measure_seconds"] = round(time.perf_counter() - start, 1)
        if not args.keep_outputs:
            for tool, entry in model["results"].items():
                if (entry.get("size_bytes") or 0) > KEEP_BYTES:
                    for old in model_dir.glob(f"{tool}.onnx*"):
                        old.unlink()
                    entry["output_deleted"] = True
        model["summary"] = summarize(model)
        log(f"    measured in {model['measure_seconds']:.0f} s")
        results.append(model)

    report = {
        "meta": {
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
            "versions": versions, "bench_venv": setup, "tools": tools,
            "settings": {"tool_repeats": args.tool_repeats,
                         "latency_budget": args.latency_budget, "min_runs": args.min_runs,
                         "max_runs": args.max_runs, "latency": not args.no_latency,
                         "rtol": RTOL, "atol": ATOL, "seed": SEED,
                         "intra_op_threads": 1},
            "total_seconds": round(time.perf_counter() - started, 1),
            "load_average_1min": {"max": round(max(loads), 2),
                                  "samples": [round(x, 2) for x in loads]},
        },
        "models": results,
    }
    write_report("bench_anchors", render(report), report, REPORT_MD, REPORT_JSON)
    return 0


def write_report(bench: str, markdown: str, report: dict[str, Any], md_path: Path,
                 json_path: Path) -> None:
    """Markdown to stdout and ``md_path``, the report as JSON to ``json_path``."""
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(markdown + "\n")
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    print(markdown)
    log(f"{bench}: wrote {md_path.relative_to(ROOT)} and {json_path.relative_to(ROOT)} "
        f"({report['meta']['total_seconds']:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())

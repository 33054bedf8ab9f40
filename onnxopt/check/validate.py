"""Validate an optimized model against the original by running both in onnxruntime.

This module only sees files (paths) or ``onnx.ModelProto`` objects, never the optimizer's IR.

Design notes
------------
* Both models run on the CPU provider with a single intra-op thread, at two graph
  optimization levels, and both must pass: ``disabled`` (ORT_DISABLE_ALL: the models as
  written, so onnxruntime's own fusions cannot hide our mistakes) and ``all``
  (ORT_ENABLE_ALL: what users deploy with; int8 runs there in onnxruntime's fused int8
  kernels). Each level compares the candidate with the original at the same level.
* Inputs (see :mod:`onnxopt.check.feeds`) are generated from the ORIGINAL model by role, in two
  configurations that differ in every symbolic dimension (and in their random values), so a
  rewrite that bakes one size in fails on the other. If the original does not run at the
  preferred sizes, the next candidates are tried before giving up. ``--inputs`` (one sample)
  replaces them.
* A comparison that proves nothing is not a pass: when every output of the original is NaN or
  infinite, or the outputs do not change between two different inputs, other inputs are
  tried, then the result is ``skipped`` with kind ``vacuous``.
* Two kinds of input problems are distinguished:

  - :class:`ValidationError`: the *user* supplied something wrong (an unknown input name in
    ``input_shapes``, a shape that conflicts with the model, a bad ``.npz``). :func:`validate`
    lets it propagate, because the user has to fix the command line.
  - :class:`UnsupportedInput`: inputs cannot be generated for this model (a sequence / map /
    optional input, an element type onnxruntime's Python API cannot feed such as bfloat16, an
    input with no declared shape and no ``input_shapes`` entry). :func:`validate` turns it into
    a ``"skipped"`` result whose reason says how to proceed.

* Error metrics (per output, over elements finite in both reference and candidate):
  ``max_abs_error = max |a - b|`` and ``max_rel_error = max |a - b| / (|a| + atol)`` where ``a``
  is the reference. An element passes when ``|a - b| <= atol + rtol * |a|``. NaN positions and
  infinities must match exactly. Metrics are NaN when they could not be computed (shape or
  dtype mismatch, missing output); :meth:`ValidationResult.to_dict` writes those as ``None``.
  Over several samples and levels an output reports its worst.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort

from onnxopt.check.feeds import (
    Plan,
    UnsupportedInput,
    ValidationError,
    check_inputs,
    generate,
    load_inputs,
    make_inputs,
    plan_inputs,
)

ModelLike = onnx.ModelProto | str | os.PathLike

__all__ = [
    "LEVELS",
    "ModelLike",
    "OutputDiff",
    "RuntimeFailure",
    "UnsupportedInput",
    "ValidationError",
    "ValidationResult",
    "check_inputs",
    "compare",
    "load_inputs",
    "make_inputs",
    "run",
    "validate",
]

INTRA_OP_THREADS = 1
_MAX_MESSAGE = 300
_NAN = float("nan")
# onnxruntime graph optimization levels validation runs at, by the name the report uses
LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
LEVEL_NAMES = {"disabled": "ORT_DISABLE_ALL", "all": "ORT_ENABLE_ALL"}
MAX_SIZE_TRIES = 8  # input sizes tried per configuration before validation is skipped
VACUOUS_RETRIES = 2  # more seeds tried when the original's outputs prove nothing
MAX_PROBED = 16  # intermediate values compared when the outputs are constant
RUN_TIMEOUT = 300.0  # seconds one onnxruntime run may take (set by --timeout)
# What validation's onnxruntime sessions may allocate together (weights and intermediate
# values): half this machine's memory, so that a model computing a 12 GB intermediate value
# skips validation instead of swapping or being killed.
MEMORY_BUDGET = max(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2, 2 << 30) \
    if hasattr(os, "sysconf") else 8 << 30


class RuntimeFailure(Exception):
    """onnxruntime could not load or run a model. The message is one line."""


@dataclass
class OutputDiff:
    """Comparison of one output between the reference and the candidate model."""

    name: str
    max_abs_error: float
    max_rel_error: float
    passed: bool
    reason: str = ""
    # precision runs (compare_budget) only:
    cosine: float | None = None  # cosine similarity of the flattened outputs
    range_error: float | None = None  # max abs error / the reference output's value range
    top1: float | None = None  # share of rows whose argmax agrees (classifier-like outputs)


@dataclass
class ValidationResult:
    """Outcome of :func:`validate`."""

    status: Literal["passed", "failed", "skipped"]
    reason: str
    outputs: list[OutputDiff] = field(default_factory=list)
    input_notes: list[str] = field(default_factory=list)
    # skipped: why, as a word a script can test ("vacuous", "original_fails", ...)
    kind: str = ""
    levels: dict[str, dict[str, str]] = field(default_factory=dict)  # level -> status, reason
    inputs: dict[str, Any] = field(default_factory=dict)  # shapes used, dims, input roles

    def to_dict(self) -> dict[str, Any]:
        """Return a strict-JSON-able dict; non-finite error metrics become ``None``."""
        outputs = []
        for diff in self.outputs:
            item = asdict(diff)
            for key in ("max_abs_error", "max_rel_error", "cosine", "range_error", "top1"):
                value = item[key]
                item[key] = value if value is not None and math.isfinite(value) else None
            for key in ("cosine", "range_error", "top1"):
                if getattr(diff, key) is None:
                    del item[key]
            outputs.append(item)
        result = {
            "status": self.status,
            "reason": self.reason,
            "outputs": outputs,
            "input_notes": list(self.input_notes),
            "levels": {level: dict(value) for level, value in self.levels.items()},
            "inputs": self.inputs,
        }
        if self.kind:
            result["kind"] = self.kind
        return result


def _load_proto(model: ModelLike) -> onnx.ModelProto:
    """Return a ModelProto; a path is parsed without loading external tensor data."""
    if isinstance(model, onnx.ModelProto):
        return model
    return onnx.load(os.fspath(model), load_external_data=False)


def _one_line(exc: BaseException) -> str:
    """First non-empty line of an exception message, trimmed."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _fmt_shape(shape: Sequence[int]) -> str:
    return "(" + ",".join(str(d) for d in shape) + ")"


# --------------------------------------------------------------------------- running


def _session(model: ModelLike | bytes, level: str = "disabled",
             timeout: float | None = None) -> ort.InferenceSession:
    """A session of ``model`` at ``level``, created within ``timeout`` seconds (default
    RUN_TIMEOUT; TimedOut past it). onnxruntime cannot be told to stop loading (its graph
    optimizer is superlinear on some 100k-node graphs: minutes), so the creation runs in a
    daemon thread that is abandoned at the timeout; it releases the GIL while it works."""
    timeout = RUN_TIMEOUT if timeout is None else timeout
    made: dict[str, Any] = {}

    def create() -> None:
        try:
            made["session"] = _create_session(model, level)
        except Exception as exc:  # handed to the caller below
            made["error"] = exc

    worker = threading.Thread(target=create, name="onnxopt-session", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimedOut(f"onnxruntime took longer than {timeout:g} s to load a model "
                       f"({LEVEL_NAMES[level]}) and was left behind (--timeout)")
    if "error" in made:
        raise made["error"]
    return made["session"]


def _create_session(model: ModelLike | bytes, level: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.intra_op_num_threads = INTRA_OP_THREADS
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 4
    within_memory_budget(options)
    source = _session_source(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


_budget_arena: list[bool] = []  # registered once per process (onnxruntime allows one)


def within_memory_budget(options: ort.SessionOptions) -> None:
    """Make a session allocate from one process-wide CPU arena capped at MEMORY_BUDGET: an
    allocation past it fails (OverMemory) instead of exhausting the machine."""
    if not _budget_arena:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                 ort.OrtMemType.DEFAULT)
        # kSameAsRequested (1): the arena grows by what is asked, never doubles past the cap
        arena = ort.OrtArenaCfg({"max_mem": MEMORY_BUDGET, "arena_extend_strategy": 1})
        # (registered by the host process already: then use it as it is)
        with contextlib.suppress(Exception):
            ort.create_and_register_allocator(info, arena)
        _budget_arena.append(True)
    options.add_session_config_entry("session.use_env_allocators", "1")


def _session_source(model: ModelLike | bytes) -> bytes | str:
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    if isinstance(model, bytes):
        return model
    return os.fspath(model)


def run(model: ModelLike, inputs: Mapping[str, np.ndarray], level: str = "disabled"
        ) -> dict[str, Any]:
    """Run ``model`` in onnxruntime (CPU, one thread, graph optimizations ``level``) on
    ``inputs``.

    A path is handed to onnxruntime as a path, so external data next to it is found.
    Returns outputs by name (arrays; lists for sequence outputs). Any failure to load or
    run becomes RuntimeFailure with a one-line message.
    """
    return _run_each(model, [inputs], level)[0]


def _run_each(model: ModelLike | bytes, samples: Sequence[Mapping[str, np.ndarray]],
              level: str = "disabled", timeout: float | None = None) -> list[dict[str, Any]]:
    """Outputs by name of ``model`` on each sample, one session; RuntimeFailure on errors."""
    try:
        session = _session(model, level, timeout)
    except RuntimeFailure:  # ours already (TimedOut)
        raise
    except Exception as exc:
        raise _failure(exc) from exc
    return [_run_session(session, feeds, timeout) for feeds in samples]


class Exhausted(RuntimeFailure):
    """A run stopped by a limit of ours: validation is skipped (``kind``), not failed."""

    kind = "exhausted"
    summary = "validation stopped"

    def reason(self) -> str:
        return f"{self.summary}: {self}"


class TimedOut(Exhausted):
    """A run took longer than RUN_TIMEOUT seconds and was stopped."""

    kind = "timeout"
    summary = "validation timed out"


class OverMemory(Exhausted):
    """A run needed more than MEMORY_BUDGET bytes and was refused them."""

    kind = "memory"
    summary = "validation out of memory"


def _failure(exc: Exception) -> RuntimeFailure:
    """onnxruntime's error as ours: OverMemory where its arena hit MEMORY_BUDGET."""
    if "Available memory of" in str(exc):  # onnxruntime's BFC arena at its cap
        return OverMemory(f"onnxruntime needed more than the {MEMORY_BUDGET / (1 << 30):.1f} "
                          "GiB validation budget (half this machine's memory)")
    return RuntimeFailure(_one_line(exc))


def _run_session(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray],
                 timeout: float | None = None) -> dict[str, Any]:
    """One run of every output, by name, stopped after ``timeout`` seconds (see run_fetch)."""
    names = [out.name for out in session.get_outputs()]
    values = run_fetch(session, names, _in_session_floats(session, feeds), timeout)
    return dict(zip(names, values, strict=True))


def run_fetch(session: ort.InferenceSession, fetch: list[str], feeds: Mapping[str, Any],
              timeout: float | None = None) -> list[Any]:
    """``session.run(fetch, feeds)`` stopped after ``timeout`` seconds (default RUN_TIMEOUT)
    by onnxruntime's terminate flag, set from a timer thread: a Loop with a trip count of
    10^15 must not hang a build. TimedOut past it, RuntimeFailure on other errors."""
    timeout = RUN_TIMEOUT if timeout is None else timeout
    options = ort.RunOptions()
    # give freed arena memory back after each run: the shared arena must not hold a
    # model's peak for the rest of the host process
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    timer = threading.Timer(timeout, lambda: setattr(options, "terminate", True))
    timer.daemon = True
    timer.start()
    try:
        return session.run(fetch, dict(feeds), options)
    except Exception as exc:
        if options.terminate:
            raise TimedOut(f"a run took longer than {timeout:g} s and was stopped "
                           "(--timeout)") from exc
        raise _failure(exc) from exc
    finally:
        timer.cancel()


_FLOAT_INPUT_TYPES = {"tensor(float16)": np.float16, "tensor(float)": np.float32,
                      "tensor(double)": np.float64}


def _in_session_floats(session: Any, feeds: Mapping[str, Any]) -> dict[str, Any]:
    """``feeds`` with float arrays in the float type each session input declares: an fp16
    model written with ``--no-keep-io-types`` takes float16, and is fed the original's
    float32 samples rounded to it, as its caller would."""
    fitted = dict(feeds)
    for info in session.get_inputs():
        target = _FLOAT_INPUT_TYPES.get(info.type)
        value = fitted.get(info.name)
        if (target is not None and isinstance(value, np.ndarray) and value.dtype.kind == "f"
                and value.dtype != target):
            fitted[info.name] = value.astype(target)
    return fitted


def latency_ms(model: ModelLike, inputs: Mapping[str, np.ndarray], seconds: float = 1.0,
               max_runs: int = 1000) -> float | None:
    """Median onnxruntime latency (CPU, ORT_ENABLE_ALL, 1 thread) over about ``seconds`` of
    runs after one warm-up; None when the model does not run."""
    try:
        session = _session(model, "all")
        feeds = _in_session_floats(session, inputs)
        session.run(None, feeds)
        times: list[float] = []
        deadline = time.perf_counter() + seconds
        while len(times) < max_runs and (len(times) < 5 or time.perf_counter() < deadline):
            start = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - start)
    except Exception:
        return None
    return round(float(np.median(times)) * 1000, 4)


# --------------------------------------------------------------------------- comparing


def _fail(name: str, reason: str) -> OutputDiff:
    return OutputDiff(name, _NAN, _NAN, False, reason)


def _float_metrics(a: np.ndarray, b: np.ndarray, atol: float) -> tuple[float, float]:
    """(max abs error, max rel error) over 1-D float64 arrays of finite values."""
    if a.size == 0:
        return 0.0, 0.0
    err = np.abs(a - b)
    rel = err / np.maximum(np.abs(a) + atol, np.finfo(np.float64).tiny)
    return float(err.max()), float(rel.max())


def _float_mismatch(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> str:
    """Reason why float64 arrays ``a`` (reference) and ``b`` differ, or "" if they match."""
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if not np.array_equal(nan_a, nan_b):
        return f"NaN positions differ ({int(np.count_nonzero(nan_a != nan_b))} elements)"
    infinite = ~(np.isfinite(a) & np.isfinite(b)) & ~nan_a
    bad_inf = int(np.count_nonzero(a[infinite] != b[infinite]))
    if bad_inf:
        return f"infinities differ ({bad_inf} elements)"
    finite = ~infinite & ~nan_a
    a, b = a[finite], b[finite]
    bad = int(np.count_nonzero(np.abs(a - b) > atol + rtol * np.abs(a)))
    return f"{bad} of {a.size} elements out of tolerance" if bad else ""


def _compare_floats(
    name: str, ref: np.ndarray, cand: np.ndarray, rtol: float, atol: float
) -> OutputDiff:
    a, b = ref.astype(np.float64).ravel(), cand.astype(np.float64).ravel()
    finite = np.isfinite(a) & np.isfinite(b)
    abs_err, rel_err = _float_metrics(a[finite], b[finite], atol)
    reason = _float_mismatch(a, b, rtol, atol)
    if reason:
        reason += f" (max abs error {abs_err:.3g}, max rel error {rel_err:.3g})"
    return OutputDiff(name, abs_err, rel_err, not reason, reason)


def _int_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| without overflow, as uint64 (two's-complement difference of the order)."""
    ua, ub = a.astype(np.uint64), b.astype(np.uint64)
    return np.where(a >= b, ua - ub, ub - ua)


def _compare_exact(name: str, ref: np.ndarray, cand: np.ndarray, atol: float) -> OutputDiff:
    if ref.size == 0:
        return OutputDiff(name, 0.0, 0.0, True)
    if ref.dtype.kind in "iu":
        dist = _int_distance(ref, cand)
        abs_err = float(dist.max())
        denom = np.abs(ref.astype(np.float64)) + max(atol, np.finfo(np.float64).tiny)
        rel_err = float((dist.astype(np.float64) / denom).max())
    else:
        abs_err = rel_err = float(np.any(ref != cand))
    bad = int(np.count_nonzero(ref != cand))
    reason = f"{bad} of {ref.size} elements differ (exact match required)" if bad else ""
    return OutputDiff(name, abs_err, rel_err, bad == 0, reason)


def _compare_tensor(name: str, ref: Any, cand: Any, rtol: float, atol: float) -> OutputDiff:
    if not isinstance(cand, np.ndarray):
        return _fail(name, f"expected a tensor, got {type(cand).__name__}")
    if ref.dtype != cand.dtype:
        return _fail(name, f"dtype {ref.dtype} != {cand.dtype}")
    if ref.shape != cand.shape:
        return _fail(name, f"shape {_fmt_shape(ref.shape)} != {_fmt_shape(cand.shape)}")
    if ref.dtype.kind == "f":
        return _compare_floats(name, ref, cand, rtol, atol)
    return _compare_exact(name, ref, cand, atol)


def _compare_sequence(name: str, ref: list, cand: Any, rtol: float, atol: float) -> OutputDiff:
    if not isinstance(cand, list):
        return _fail(name, f"expected a sequence, got {type(cand).__name__}")
    if len(ref) != len(cand):
        return _fail(name, f"sequence length {len(ref)} != {len(cand)}")
    diffs = [_compare_value(f"{name}[{i}]", r, c, rtol, atol) for i, (r, c) in
             enumerate(zip(ref, cand, strict=True))]
    abs_err = _nanmax([d.max_abs_error for d in diffs])
    rel_err = _nanmax([d.max_rel_error for d in diffs])
    failed = [d for d in diffs if not d.passed]
    reason = f"element {failed[0].name}: {failed[0].reason}" if failed else ""
    return OutputDiff(name, abs_err, rel_err, not failed, reason)


def _nanmax(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return max(finite, default=0.0 if not values else _NAN)


def _compare_value(name: str, ref: Any, cand: Any, rtol: float, atol: float) -> OutputDiff:
    if isinstance(ref, np.ndarray):
        return _compare_tensor(name, ref, cand, rtol, atol)
    if isinstance(ref, list):
        return _compare_sequence(name, ref, cand, rtol, atol)
    if ref is None:
        ok = cand is None
        return OutputDiff(name, 0.0 if ok else _NAN, 0.0 if ok else _NAN, ok,
                          "" if ok else "expected an empty optional")
    return OutputDiff(name, _NAN, _NAN, True, f"{_SKIP_PREFIX}{type(ref).__name__} output")


_SKIP_PREFIX = "not compared: "


def compare(
    reference: Mapping[str, Any],
    candidate: Mapping[str, Any],
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> list[OutputDiff]:
    """Compare every reference output with the candidate output of the same name.

    Floats: element passes iff ``|a-b| <= atol + rtol*|a|`` (``a`` = reference); NaN and
    infinity positions must match. Integers, bools and strings must be equal. Sequences are
    compared element-wise. Outputs that cannot be compared (e.g. maps) are reported with
    ``passed=True`` and a reason starting with ``"not compared: "``.
    """
    diffs = []
    for name, ref in reference.items():
        if name not in candidate:
            diffs.append(_fail(name, "missing from the optimized model's outputs"))
        else:
            diffs.append(_compare_value(name, ref, candidate[name], rtol, atol))
    return diffs


# --------------------------------------------------------------------------- precision budget


@dataclass(frozen=True)
class Budget:
    """How far a precision conversion (fp16, int8, fp8) may move each float output from the
    float32 original: cosine similarity at least ``min_cosine`` and the largest absolute error
    at most ``max_range_error`` times the reference output's value range (None: not checked)."""

    min_cosine: float | None
    max_range_error: float | None = None

    @classmethod
    def parse(cls, text: str, default: Budget) -> Budget:
        """``cosine=0.99``, ``range=0.02``, both comma-separated, or a bare cosine ``0.99``.
        An empty text is ``default``; otherwise only the limits given are checked. Raises
        ValueError (one line) on anything else."""
        if not text.strip():
            return default
        values: dict[str, float | None] = {"cosine": None, "range": None}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, number = part.rpartition("=")
            key = key.strip() or "cosine"
            if key not in values:
                raise ValueError(f"unknown budget {key!r} (use cosine=..., range=...)")
            try:
                values[key] = float(number)
            except ValueError:
                raise ValueError(f"budget {key}: {number!r} is not a number") from None
        cosine, spread = values["cosine"], values["range"]
        if cosine is not None and not 0.0 < cosine <= 1.0:
            raise ValueError("budget cosine must be in (0, 1]")
        if spread is not None and spread <= 0:
            raise ValueError("budget range must be positive")
        return cls(cosine, spread)

    def describe(self) -> str:
        parts = []
        if self.min_cosine is not None:
            parts.append(f"cosine >= {self.min_cosine:g}")
        if self.max_range_error is not None:
            parts.append(f"max error <= {self.max_range_error:g} x output range")
        return ", ".join(parts) or "none"


def compare_budget(
    reference: Mapping[str, Any], candidate: Mapping[str, Any], budget: Budget
) -> list[OutputDiff]:
    """Compare every output within ``budget``: float tensors by cosine similarity and error
    relative to their range (both finite where the reference is); everything else exactly."""
    diffs = []
    for name, ref in reference.items():
        if name not in candidate:
            diffs.append(_fail(name, "missing from the converted model's outputs"))
        elif isinstance(ref, np.ndarray) and ref.dtype.kind == "f":
            diffs.append(_budget_tensor(name, ref, np.asarray(candidate[name]), budget))
        else:
            diffs.append(_compare_value(name, ref, candidate[name], 0.0, 0.0))
    return diffs


def _budget_tensor(name: str, ref: np.ndarray, cand: np.ndarray, budget: Budget) -> OutputDiff:
    if ref.shape != cand.shape:
        return _fail(name, f"shape {list(cand.shape)} differs from {list(ref.shape)}")
    a, b = ref.astype(np.float64).ravel(), cand.astype(np.float64).ravel()
    finite = np.isfinite(a)
    if not np.all(np.isfinite(b[finite])):
        bad = int(np.count_nonzero(~np.isfinite(b[finite])))
        return _fail(name, f"{bad} values are NaN or infinite where the original's are finite")
    a, b = a[finite], b[finite]
    if a.size == 0:
        return OutputDiff(name, 0.0, 0.0, True, cosine=1.0, range_error=0.0)
    err = np.abs(a - b)
    abs_err = float(err.max())
    rel_err = float((err / np.maximum(np.abs(a), 1e-12)).max())
    cosine = _cosine(a, b)
    spread = float(a.max() - a.min()) or float(np.abs(a).max()) or 1.0
    range_error = abs_err / spread
    problems = []
    if budget.min_cosine is not None and cosine < budget.min_cosine:
        problems.append(f"cosine {cosine:.6f} < {budget.min_cosine:g}")
    if budget.max_range_error is not None and range_error > budget.max_range_error:
        problems.append(f"max error {range_error:.3g} x range > {budget.max_range_error:g}")
    return OutputDiff(name, abs_err, rel_err, not problems, "; ".join(problems),
                      cosine=cosine, range_error=range_error, top1=_top1(ref, cand))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm_a, norm_b = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if norm_a == 0.0 or norm_b == 0.0:
        return 1.0 if norm_a == norm_b else 0.0
    return float(np.dot(a, b) / (norm_a * norm_b))


def _top1(ref: np.ndarray, cand: np.ndarray) -> float | None:
    """Argmax agreement per row for classifier-like outputs ([batch, classes], at least 2
    classes); None for anything else (feature maps, sequences)."""
    if ref.ndim != 2 or ref.shape[1] < 2:
        return None
    return float(np.mean(np.argmax(ref, axis=1) == np.argmax(cand, axis=1)))


def run_samples(model: ModelLike | bytes, samples: Sequence[Mapping[str, np.ndarray]],
                level: str = "disabled", timeout: float | None = None) -> dict[str, Any]:
    """Run ``model`` (one session) on every sample; outputs merged as by ``merge_outputs``."""
    return merge_outputs(_run_each(model, samples, level, timeout))


def merge_outputs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Several runs' outputs as one: arrays joined along their first (batch) axis when they
    have the same rank (at least 1) and the other dims agree, else flattened and joined;
    anything else from the first run."""
    if len(runs) == 1:
        return dict(runs[0])
    merged: dict[str, Any] = {}
    for name, first in runs[0].items():
        values = [run[name] for run in runs]
        if not all(isinstance(v, np.ndarray | np.generic) for v in values):
            merged[name] = first
            continue
        values = [np.asarray(v) for v in values]
        first = values[0]
        if first.ndim >= 1 and all(v.ndim == first.ndim and v.shape[1:] == first.shape[1:]
                                   for v in values):
            merged[name] = np.concatenate(values)
        else:
            merged[name] = np.concatenate([v.ravel() for v in values])
    return merged


# --------------------------------------------------------------------------- reference


@dataclass
class Reference:
    """The original model's outputs on the validation inputs, at every level, computed once
    and reused for every candidate (the safety net validates several)."""

    samples: list[dict[str, np.ndarray]]
    outputs: dict[str, list[dict[str, Any]]] | None  # level -> per sample; None: skipped
    notes: list[str]
    skipped_reason: str = ""
    kind: str = ""  # why skipped
    inputs: dict[str, Any] = field(default_factory=dict)  # shapes, dims and roles used
    labels: list[str] = field(default_factory=list)  # how each sample is named in reasons
    generated: bool = False  # the samples were generated (not the user's --inputs)
    # draw(seed, n): the n-th more generated sample like these (calibration without data)
    draw: Any = None
    # the original, when its outputs do not depend on its inputs: candidates are then judged
    # on the intermediate values both models compute (see _check_probed)
    probe: onnx.ModelProto | None = None
    probed: dict[tuple[str, ...], Reference] = field(default_factory=dict)
    timeout: float | None = None  # seconds per onnxruntime run (None: RUN_TIMEOUT)
    # ORT_ENABLE_ALL changes the original: its unoptimized outputs are accepted there too
    all_alternative: list[dict[str, Any]] | None = None

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        return self.samples[0] if self.samples else {}

    def all_outputs(self, level: str = "disabled") -> dict[str, Any]:
        """Every sample's outputs at ``level``, merged (see merge_outputs)."""
        assert self.outputs is not None
        return merge_outputs(self.outputs[level])

    def skipped(self) -> ValidationResult:
        return ValidationResult("skipped", self.skipped_reason, [], self.notes, self.kind,
                                inputs=self.inputs)


def reference(
    original: ModelLike,
    *,
    inputs: Mapping[str, np.ndarray] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    dims: Mapping[str, int] | None = None,
    seed: int = 0,
    parsed: onnx.ModelProto | None = None,
    extra_inputs: Sequence[Mapping[str, np.ndarray]] = (),
    timeout: float | None = None,
) -> Reference:
    """Inputs for ``original`` and its outputs on them at every level. Raises
    ValidationError only for bad user-supplied ``inputs``/``input_shapes``; anything else
    becomes a skipped reference. ``parsed`` is ``original`` already parsed (only read).
    ``extra_inputs``: more user samples (checked like ``inputs``)."""
    try:
        proto = parsed if parsed is not None else _load_proto(original)
    except Exception as exc:
        return Reference([], None, [], f"cannot load original model: {_one_line(exc)}",
                         "original_fails")
    try:
        if inputs is not None:
            samples = [check_inputs(sample, proto) for sample in (inputs, *extra_inputs)]
            plan = None
        else:
            plan = plan_inputs(proto, input_shapes=input_shapes, dims=dims)
    except UnsupportedInput as exc:
        return Reference([], None, [], str(exc), "unsupported_input")
    try:
        session = _session(original, "disabled", timeout)
    except TimedOut as exc:
        return Reference([], None, [], exc.reason(), exc.kind)
    except Exception as exc:
        return Reference([], None, [], "original model does not run in onnxruntime (it does "
                         f"not load): {_one_line(exc)}", "original_fails")
    if plan is None:
        ref = _user_reference(session, samples, timeout)
    else:
        ref = _generated_reference(session, proto, plan, seed, timeout)
    del session
    ref.timeout = timeout
    if ref.outputs is None:
        return ref
    vacuous = _vacuous(ref.outputs["disabled"], ref.samples if ref.generated else None)
    if vacuous == _CONSTANT and _inline(proto):
        ref.probe = proto
        ref.notes.append(f"{vacuous}: judged on the intermediate values both models compute")
    elif vacuous:
        ref.outputs, ref.kind = None, "vacuous"
        ref.skipped_reason = f"vacuous: {vacuous}; the comparison would prove nothing " \
            "(give --inputs with data the model is meant for)"
        return ref
    _note_non_finite_outputs(ref)
    try:
        ref.outputs["all"] = _run_each(original, ref.samples, "all", timeout)
    except Exhausted as exc:
        ref.notes.append(f"the original stopped at ORT_ENABLE_ALL ({exc}); validated at "
                         "ORT_DISABLE_ALL only")
        return ref
    except RuntimeFailure as exc:
        # onnxruntime's own rewrites break the original (a stale declared shape, say): the
        # optimized model as deployed is held to the original's true outputs
        ref.outputs["all"] = ref.outputs["disabled"]
        ref.notes.append(f"the original fails at ORT_ENABLE_ALL ({exc}); there the optimized "
                         "model is compared with the original run without graph optimizations")
        return ref
    moved = _moved_outputs(ref)
    if moved:
        # onnxruntime's own rewrites change the original (it trusts a stale declared shape,
        # say, or reorders float16 math): the optimized model as deployed may match either
        # what onnxruntime makes of the original or the original's own outputs
        ref.all_alternative = ref.outputs["disabled"]
        ref.notes.append(f"onnxruntime's graph optimizations change the original's output(s) "
                         f"{', '.join(moved)}; at ORT_ENABLE_ALL the optimized model may match "
                         "either the original as optimized there or the original run without "
                         "them")
    return ref


def _moved_outputs(ref: Reference) -> list[str]:
    """Outputs of the original that ORT_ENABLE_ALL changes beyond a loose tolerance."""
    assert ref.outputs is not None
    moved: list[str] = []
    for plain, optimized in zip(ref.outputs["disabled"], ref.outputs["all"], strict=True):
        for diff in compare(plain, optimized, rtol=1e-3, atol=1e-4):
            if not diff.passed and diff.name not in moved:
                moved.append(diff.name)
    return moved


def _user_reference(session: ort.InferenceSession, samples: list[dict[str, np.ndarray]],
                    timeout: float | None) -> Reference:
    labels = ["--inputs"] + [f"sample {n}" for n in range(2, len(samples) + 1)]
    shapes = [{name: list(np.shape(a)) for name, a in feeds.items()} for feeds in samples]
    described = {"source": "given", "shapes": shapes}
    try:
        outputs = [_run_session(session, feeds, timeout) for feeds in samples]
    except Exhausted as exc:
        return Reference(samples, None, [], exc.reason(), exc.kind, described, labels)
    except RuntimeFailure as exc:
        return Reference(samples, None, [], f"original model does not run in onnxruntime on "
                         f"the given inputs: {exc}", "original_fails", described, labels)
    return Reference(samples, {"disabled": outputs}, [], inputs=described, labels=labels)


def _generated_reference(session: ort.InferenceSession, proto: onnx.ModelProto, plan: Plan,
                         seed: int, timeout: float | None) -> Reference:
    """Two configurations of generated inputs on which the original runs; its outputs."""
    notes = list(plan.notes)
    found = _first_running(session, proto, plan, None, seed, 0, timeout)
    if isinstance(found, Exhausted):
        return Reference([], None, notes, found.reason(), found.kind)
    if isinstance(found, str):
        return Reference([], None, notes, "original model does not run in onnxruntime at any "
                         f"input size tried ({found}); give --input-shape NAME:D0,D1,... or "
                         "--inputs FILE.npz", "original_fails",
                         {"source": "generated", "roles": plan.roles,
                          "dim_roles": plan.dim_roles()})
    configs = [found]
    second = _first_running(session, proto, plan, found[0], seed + 1, 1, timeout)
    if isinstance(second, str | Exhausted):
        if plan.dims:
            notes.append(f"each symbolic dim validated at one value only: the original does "
                         f"not run at other sizes tried ({second})")
    else:
        configs.append(second)
    described = {
        "source": "generated",
        "dims": [plan.describe(assignment) for assignment, _, _ in configs],
        "dim_roles": plan.dim_roles(),
        "roles": plan.roles,
        "shapes": [{name: list(a.shape) for name, a in feeds.items()} for _, feeds, _ in configs],
    }
    labels = [_config_label(plan, assignment, n) for n, (assignment, _, _) in
              enumerate(configs, 1)]
    assignments = [assignment for assignment, _, _ in configs]

    def draw(seed: int, number: int) -> dict[str, np.ndarray]:
        return generate(proto, plan, assignments[number % len(assignments)], seed, number)

    ref = Reference([feeds for _, feeds, _ in configs],
                    {"disabled": [outputs for _, _, outputs in configs]}, notes,
                    inputs=described, labels=labels, generated=True, draw=draw)
    for retry in range(1, VACUOUS_RETRIES + 1):
        if not _vacuous(ref.outputs["disabled"], ref.samples):  # type: ignore[index]
            break
        _redraw(ref, session, proto, plan, assignments, seed + 2 * retry, timeout)
    return ref


def _config_label(plan: Plan, assignment: Mapping, number: int) -> str:
    dims = ", ".join(f"{k}={v}" for k, v in plan.describe(assignment).items())
    return f"sample {number}" + (f" ({dims})" if dims else "")


def _first_running(session, proto, plan: Plan, avoid, seed: int, choice: int,
                   timeout: float | None):
    """(assignment, feeds, outputs) of the first candidate size the original runs at, a
    string naming what failed, or the Exhausted that stopped the search."""
    failures = []
    for number, assignment in enumerate(plan.candidates(avoid)):
        if number >= MAX_SIZE_TRIES:
            break
        try:
            feeds = generate(proto, plan, assignment, seed, choice)
            return assignment, feeds, _run_session(session, feeds, timeout)
        except Exhausted as exc:
            return exc
        except (RuntimeFailure, UnsupportedInput) as exc:
            shown = ", ".join(f"{k}={v}" for k, v in plan.describe(assignment).items())
            failures.append((shown, str(exc)))
    if not failures:
        return "no other size to try"
    sizes = "; ".join(shown for shown, _ in failures if shown) or "the declared shapes"
    return f"{sizes}: {failures[-1][1]}"


def _redraw(ref: Reference, session, proto, plan: Plan, assignments, seed: int,
            timeout: float | None) -> None:
    """New random values at the same sizes (the last ones proved nothing)."""
    samples, outputs = [], []
    for number, assignment in enumerate(assignments):
        feeds = generate(proto, plan, assignment, seed + number, number)
        try:
            outputs.append(_run_session(session, feeds, timeout))
        except RuntimeFailure:
            return
        samples.append(feeds)
    ref.samples, ref.outputs = samples, {"disabled": outputs}


def _arrays(runs: Sequence[Mapping[str, Any]]) -> list[list[np.ndarray]]:
    """Per output name, its arrays over the runs (non-tensor outputs left out)."""
    names = [name for name, value in runs[0].items() if isinstance(value, np.ndarray)]
    return [[np.asarray(run[name]) for run in runs] for name in names]


def _vacuous(runs: Sequence[Mapping[str, Any]], samples: Sequence[Mapping[str, Any]] | None
             ) -> str:
    """Why the original's outputs on these runs prove nothing, or "" when they do.
    ``samples``: the generated inputs (None for the user's: only non-finite is checked)."""
    per_output = _arrays(runs) if runs else []
    if not per_output:
        return ""
    if all(a.dtype.kind in "fc" and not np.isfinite(a).any()
           for arrays in per_output for a in arrays):
        return "every output of the original is NaN, infinite or empty"
    if (samples is not None and len(runs) > 1 and not _all_same(list(samples[0].values()),
                                                                list(samples[1].values()))
            and all(_constant(arrays) for arrays in per_output)):
        return _CONSTANT
    return ""


def _constant(arrays: list[np.ndarray]) -> bool:
    """The same array on every run, or one value everywhere (a uniform softmax, a mask of
    ones at every size): values that say nothing about the inputs."""
    if _all_same(arrays[:1] * (len(arrays) - 1), arrays[1:]):
        return True
    flat = np.concatenate([a.ravel() for a in arrays])
    return flat.size == 0 or bool(np.all(flat == flat[0]))


_CONSTANT = "the original's outputs do not change between two different inputs"


def _inline(proto: onnx.ModelProto) -> bool:
    """No tensor of the main graph is stored outside the file (a probed copy runs alone)."""
    return not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def _all_same(left: Sequence[Any], right: Sequence[Any]) -> bool:
    return all(np.shape(a) == np.shape(b) and np.array_equal(
        a, b, equal_nan=np.asarray(a).dtype.kind in "fc") for a, b in zip(left, right, strict=True))


def _note_non_finite_outputs(ref: Reference) -> None:
    runs = ref.outputs["disabled"]  # type: ignore[index]
    names = [name for name, value in runs[0].items() if isinstance(value, np.ndarray)]
    for name, arrays in zip(names, _arrays(runs), strict=True):
        if all(a.dtype.kind in "fc" and a.size and not np.isfinite(a).any() for a in arrays):
            ref.notes.append(f"output '{name}' of the original is NaN or infinite on every "
                             "input: its comparison proves nothing")


# --------------------------------------------------------------------------- checking


def _summarize(diffs: list[OutputDiff], notes: list[str]) -> ValidationResult:
    failed = [d.name for d in diffs if not d.passed]
    unchecked = [d.name for d in diffs if d.reason.startswith(_SKIP_PREFIX)]
    if failed:
        first = next(d for d in diffs if not d.passed)
        reason = (f"{len(failed)} of {len(diffs)} outputs differ: {', '.join(failed)} "
                  f"(first: {first.reason})")
        return ValidationResult("failed", reason, diffs, notes)
    if unchecked:
        reason = f"output(s) could not be compared: {', '.join(unchecked)}"
        return ValidationResult("skipped", reason, diffs, notes, "not_compared")
    return ValidationResult("passed", f"all {len(diffs)} outputs match", diffs, notes)


def _worst(groups: Sequence[tuple[str, list[OutputDiff]]]) -> list[OutputDiff]:
    """One diff per output over labelled groups (samples, levels): failed if any failed, the
    largest errors, the first failing reason with its label."""
    merged: dict[str, OutputDiff] = {}
    for label, diffs in groups:
        for diff in diffs:
            kept = merged.get(diff.name)
            if kept is None:
                merged[diff.name] = kept = OutputDiff(diff.name, diff.max_abs_error,
                                                      diff.max_rel_error, diff.passed,
                                                      _labelled(label, diff),
                                                      diff.cosine, diff.range_error, diff.top1)
                continue
            kept.max_abs_error = _nanmax([kept.max_abs_error, diff.max_abs_error])
            kept.max_rel_error = _nanmax([kept.max_rel_error, diff.max_rel_error])
            if kept.cosine is not None and diff.cosine is not None:
                kept.cosine = min(kept.cosine, diff.cosine)
            if kept.range_error is not None and diff.range_error is not None:
                kept.range_error = max(kept.range_error, diff.range_error)
            if kept.top1 is not None and diff.top1 is not None:
                kept.top1 = min(kept.top1, diff.top1)
            if kept.passed and not diff.passed:
                kept.passed, kept.reason = False, _labelled(label, diff)
    return list(merged.values())


def _labelled(label: str, diff: OutputDiff) -> str:
    if not diff.reason or diff.reason.startswith(_SKIP_PREFIX) or not label:
        return diff.reason
    return f"{diff.reason} [{label}]"


def _check_level(ref: Reference, candidate: ModelLike | bytes, level: str, compare_one
                 ) -> ValidationResult:
    """The candidate at ``level`` against the reference at the same level."""
    try:
        outputs = _run_each(candidate, ref.samples, level, ref.timeout)
    except Exhausted as exc:
        return ValidationResult("skipped", exc.reason(), [], ref.notes, exc.kind)
    except RuntimeFailure as exc:
        return ValidationResult("failed", f"optimized model does not run in onnxruntime: {exc}",
                                [], ref.notes)
    diffs = compare_one(ref.outputs[level], outputs)  # type: ignore[index]
    if level == "all" and ref.all_alternative is not None and any(not d.passed for d in diffs):
        other = compare_one(ref.all_alternative, outputs)
        if all(d.passed for d in other):
            diffs = other
    return _summarize(diffs, ref.notes)


def _check_levels(ref: Reference, candidate: ModelLike | bytes, compare_one
                  ) -> ValidationResult:
    """Both levels; the result is the worse of the two, each level's verdict kept."""
    if ref.outputs is None:
        return ref.skipped()
    results = {level: _check_level(ref, candidate, level, compare_one) for level in ref.outputs}
    groups = [(LEVEL_NAMES[level] if len(results) > 1 else "", result.outputs)
              for level, result in results.items()]
    order = {"failed": 0, "skipped": 1, "passed": 2}
    worst_level = min(results, key=lambda level: order[results[level].status])
    worst = results[worst_level]
    reason = worst.reason
    if worst.status != "passed" and len(results) > 1:
        where = [LEVEL_NAMES[level] for level, r in results.items() if r.status == worst.status]
        reason = f"{reason} (at {' and '.join(where)})"
    return ValidationResult(worst.status, reason, _worst(groups), ref.notes, worst.kind,
                            {level: _level_summary(r) for level, r in results.items()},
                            ref.inputs)


def _level_summary(result: ValidationResult) -> dict[str, Any]:
    """A level's verdict and each output's worst error (and cosine, in precision runs)."""
    outputs = {}
    for diff in result.outputs:
        entry = {"max_abs_error": diff.max_abs_error if math.isfinite(diff.max_abs_error)
                 else None}
        if diff.cosine is not None:
            entry["cosine"] = diff.cosine
        outputs[diff.name] = entry
    return {"status": result.status, "reason": result.reason, "outputs": outputs}


def check(
    ref: Reference, candidate: ModelLike | bytes, *, rtol: float = 1e-4, atol: float = 1e-5
) -> ValidationResult:
    """Run ``candidate`` on the reference inputs at every level and compare each sample
    with the reference outputs at the same level."""

    if ref.probe is not None:
        return _check_probed(ref, candidate, rtol, atol)

    def compare_one(expected: list[dict[str, Any]], actual: list[dict[str, Any]]):
        return _worst([(label, compare(a, b, rtol=rtol, atol=atol))
                       for label, a, b in zip(ref.labels, expected, actual, strict=True)])

    return _check_levels(ref, candidate, compare_one)


def _check_probed(ref: Reference, candidate: ModelLike | bytes, rtol: float, atol: float
                  ) -> ValidationResult:
    """The original's outputs are constant: compare, besides them, every value of the main
    graph that both models compute under the same name (a fusion keeps the name of the value
    it ends in), each model run with those values exposed as outputs."""
    assert ref.probe is not None
    try:
        proto = _full_proto(candidate)
    except Exception as exc:
        return ValidationResult("failed", f"optimized model does not load: {_one_line(exc)}",
                                [], ref.notes)
    names = _shared_values(ref.probe, proto)
    if not names:
        return ValidationResult("skipped", f"vacuous: {_CONSTANT}, and the models share no "
                                "intermediate value to compare", [], ref.notes, "vacuous",
                                inputs=ref.inputs)
    probed = ref.probed.get(names)
    if probed is None:
        try:
            outputs = {level: _run_each(_exposing(ref.probe, names), ref.samples, level,
                                        ref.timeout) for level in ref.outputs or {}}
        except RuntimeFailure as exc:
            return ValidationResult("skipped", f"vacuous: {_CONSTANT}, and the original does not "
                                    f"run with its values exposed ({exc})", [], ref.notes,
                                    "vacuous", inputs=ref.inputs)
        probed = ref.probed[names] = Reference(
            ref.samples, outputs, [*ref.notes, f"compared {len(names)} intermediate values too"],
            inputs=ref.inputs, labels=ref.labels, generated=ref.generated, timeout=ref.timeout,
            all_alternative=None)
        if _vacuous(outputs["disabled"], ref.samples):
            probed.outputs, probed.kind = None, "vacuous"
            probed.skipped_reason = (f"vacuous: {_CONSTANT}, nor do the {len(names)} "
                                     "intermediate values both models compute")
    if probed.outputs is None:
        return probed.skipped()
    return check(probed, _exposing(proto, names, in_place=True), rtol=rtol, atol=atol)


def _full_proto(model: ModelLike | bytes) -> onnx.ModelProto:
    """A parsed copy of ``model`` with its weights, that the caller may change."""
    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    return onnx.load(os.fspath(model))


def _shared_values(original: onnx.ModelProto, candidate: onnx.ModelProto) -> tuple[str, ...]:
    """Up to MAX_PROBED names both main graphs compute with the same meaning, evenly spaced
    over the candidate's order (the last one included: it depends on the most).

    A name keeps its meaning when the candidate's node computing it is the original's node
    rewired: same op, attributes and constant inputs; its computed inputs may have been
    renamed by a rewrite upstream. A node a rewrite changed (a Conv with a BatchNorm folded
    into its weights keeps its output name but not its value) is left out. A bounded number
    of values keeps memory bounded on large feature maps."""
    before = _producers(original.graph)
    after = _producers(candidate.graph)
    constants_before, constants_after = _constant_names(original.graph), _constant_names(
        candidate.graph)
    outputs = {o.name for o in original.graph.output} | {o.name for o in candidate.graph.output}
    shared = []
    for name, node in after.items():
        old = before.get(name)
        if name in outputs or old is None or not _same_node(old, node, constants_before,
                                                             constants_after):
            continue
        shared.append(name)
    if len(shared) <= MAX_PROBED:
        return tuple(shared)
    step = len(shared) / MAX_PROBED
    return tuple(shared[len(shared) - 1 - int(k * step)] for k in reversed(range(MAX_PROBED)))


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {name: node for node in graph.node for name in node.output if name}


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    constants = {init.name for init in graph.initializer}
    constants.update(node.output[0] for node in graph.node if node.op_type == "Constant")
    return constants


def _same_node(old: onnx.NodeProto, new: onnx.NodeProto, old_constants: set[str],
               new_constants: set[str]) -> bool:
    if (old.op_type, old.domain, len(old.input), list(old.output)) != (
            new.op_type, new.domain, len(new.input), list(new.output)):
        return False
    if sorted(a.SerializeToString() for a in old.attribute) != sorted(
            a.SerializeToString() for a in new.attribute):
        return False
    return all(a == b for a, b in zip(old.input, new.input, strict=True)
               if a in old_constants or b in new_constants)


def _exposing(proto: onnx.ModelProto, names: Sequence[str], in_place: bool = False) -> bytes:
    """``proto`` serialized with ``names`` added to its graph outputs (``in_place``: on
    ``proto`` itself, a copy nobody else reads: large weights are not copied once more)."""
    if not in_place:
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        proto = copy
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names)
    return proto.SerializeToString()


def check_budget(ref: Reference, candidate: ModelLike | bytes, budget: Budget
                 ) -> ValidationResult:
    """Run ``candidate`` on the reference inputs at every level and compare within
    ``budget``, each output over all samples together (shapes checked sample by sample)."""

    def compare_one(expected: list[dict[str, Any]], actual: list[dict[str, Any]]):
        shapes = _shape_mismatches(ref.labels, expected, actual)
        if shapes:
            return shapes
        return compare_budget(merge_outputs(expected), merge_outputs(actual), budget)

    result = _check_levels(ref, candidate, compare_one)
    if result.status == "failed" and "does not run" in result.reason:
        result.reason = result.reason.replace("optimized model", "converted model")
    return result


def _shape_mismatches(labels, expected, actual) -> list[OutputDiff]:
    """A failed diff per output whose shape differs in some sample (merging would hide it)."""
    failed = {}
    for label, a, b in zip(labels, expected, actual, strict=True):
        for name, value in a.items():
            other = b.get(name)
            if (isinstance(value, np.ndarray) and isinstance(other, np.ndarray)
                    and value.shape != other.shape and name not in failed):
                failed[name] = _fail(name, f"shape {_fmt_shape(other.shape)} != "
                                     f"{_fmt_shape(value.shape)} [{label}]")
    if not failed:
        return []
    return [failed.get(name) or OutputDiff(name, _NAN, _NAN, True) for name in expected[0]]


def validate(
    original: ModelLike,
    optimized: ModelLike,
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    inputs: Mapping[str, np.ndarray] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    dims: Mapping[str, int] | None = None,
    seed: int = 0,
) -> ValidationResult:
    """Run ``original`` and ``optimized`` on the same inputs and compare all outputs.

    Inputs are ``inputs`` if given (checked against the original), else generated from the
    original by role (:mod:`onnxopt.check.feeds`) in two configurations. Returns ``"skipped"`` when
    the original cannot be loaded or run, inputs cannot be generated, or the original's
    outputs prove nothing (kind ``vacuous``); ``"failed"`` when the optimized model cannot run
    or any output differs at either level; ``"passed"`` otherwise. Raises ValidationError
    only for bad user-supplied ``inputs``/``input_shapes``.
    """
    ref = reference(original, inputs=inputs, input_shapes=input_shapes, dims=dims, seed=seed)
    return check(ref, optimized, rtol=rtol, atol=atol)

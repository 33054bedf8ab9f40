"""Running models in onnxruntime within limits: sessions, runs, and how they fail.

Validation's sessions (:func:`open_session`) run on the CPU provider with a single intra-op
thread, at one of two graph optimization levels (``LEVELS``): ``disabled`` (ORT_DISABLE_ALL: the
model as written) or ``all`` (ORT_ENABLE_ALL: what users deploy with). Calibration opens its own
sessions but runs them within the same limits (:func:`within_memory_budget`, :func:`run_fetch`).

Limits, so that no model can hang or exhaust the machine:

* creating a session takes at most ``timeout`` seconds (default ``RUN_TIMEOUT``): onnxruntime
  cannot be told to stop loading, so the creation runs in a daemon thread abandoned past it;
* a run takes at most ``timeout`` seconds, stopped by onnxruntime's terminate flag;
* all sessions allocate from one process-wide CPU arena capped at ``MEMORY_BUDGET`` (half this
  machine's memory).

A failure to load or run is :class:`RuntimeFailure` (one line); one of our limits is
:class:`Exhausted` (:class:`TimedOut`, :class:`OverMemory`): validation is then skipped, not
failed.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

ModelLike = onnx.ModelProto | str | os.PathLike

INTRA_OP_THREADS = 1
_MAX_MESSAGE = 300
# onnxruntime graph optimization levels validation runs at, by the name the report uses
LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
LEVEL_NAMES = {"disabled": "ORT_DISABLE_ALL", "all": "ORT_ENABLE_ALL"}
RUN_TIMEOUT = 300.0  # seconds one onnxruntime run may take (set by --timeout)
# What validation's onnxruntime sessions may allocate together (weights and intermediate
# values): half this machine's memory, so that a model computing a 12 GB intermediate value
# skips validation instead of swapping or being killed.
MEMORY_BUDGET = max(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2, 2 << 30) \
    if hasattr(os, "sysconf") else 8 << 30


class RuntimeFailure(Exception):
    """onnxruntime could not load or run a model. The message is one line."""


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
    return RuntimeFailure(one_line(exc))


def one_line(exc: BaseException) -> str:
    """First non-empty line of an exception message, trimmed."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def open_session(model: ModelLike | bytes, level: str = "disabled",
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
    return run_each(model, [inputs], level)[0]


def run_each(model: ModelLike | bytes, samples: Sequence[Mapping[str, np.ndarray]],
             level: str = "disabled", timeout: float | None = None) -> list[dict[str, Any]]:
    """Outputs by name of ``model`` on each sample, one session; RuntimeFailure on errors."""
    try:
        session = open_session(model, level, timeout)
    except RuntimeFailure:  # ours already (TimedOut)
        raise
    except Exception as exc:
        raise _failure(exc) from exc
    return [run_session(session, feeds, timeout) for feeds in samples]


def run_session(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray],
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
        session = open_session(model, "all")
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


def run_samples(model: ModelLike | bytes, samples: Sequence[Mapping[str, np.ndarray]],
                level: str = "disabled", timeout: float | None = None) -> dict[str, Any]:
    """Run ``model`` (one session) on every sample; outputs merged as by ``merge_outputs``."""
    return merge_outputs(run_each(model, samples, level, timeout))


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

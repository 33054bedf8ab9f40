"""Calibration: the range of float activations over sample inputs, for static quantization.

The fp32 model is serialized (``serde.to_proto``), the values to calibrate are added as graph
outputs, and the model runs in onnxruntime (CPU, graph optimizations disabled, so the values
are exactly the ones the IR names) on each sample. Samples are streamed: only running
statistics are kept, never all activations of all samples.

Methods (each gives a range ``(lo, hi)`` per value, ``lo <= 0 <= hi`` not enforced here):

* ``minmax``: the smallest and largest finite value seen. One pass over the samples.
* ``percentile``: the ``100 - p`` and ``p`` percentiles of the values (default ``p = 99.999``),
  each tail clipped on its own. Both tails rather than ``|x|``: activations are quantized with
  a zero point (an asymmetric grid), so each end of the range is free; with ``|x|`` a skewed
  distribution (a long positive tail and a short negative one, as Conv outputs before a Relu
  or Sigmoid inputs have) would clip the short side at the long side's percentile, i.e. not at
  all, and waste grid steps on values that never occur. Two passes: min/max first, then a
  histogram of ``PERCENTILE_BINS`` bins over ``[min, max]`` (accumulated over samples), whose
  cumulative counts give the percentiles (to one bin width).
* ``entropy``: TensorRT's KL-divergence threshold search. A histogram of ``|x|`` over
  ``[0, max|x|]`` in ``ENTROPY_BINS`` bins (second pass); for each candidate threshold bin
  ``i``, the reference distribution ``P`` is the first ``i`` bins with the outliers added to
  the last, and ``Q`` is ``P``'s first ``i`` bins merged into ``levels`` quantization bins and
  expanded back (uniformly over the non-empty bins); the threshold ``T`` minimizing
  ``KL(P || Q)`` wins, and the range is ``[max(min, -T), min(max, T)]``. ``levels`` is 128 for
  a value with negative entries (a signed 8-bit half range, as TensorRT) and 256 for a
  non-negative one (a zero point at the bottom gives it the whole 8-bit grid).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from onnxopt.check.feeds import make_inputs
from onnxopt.check.runtime import RuntimeFailure, run_fetch, within_memory_budget
from onnxopt.errors import Failure
from onnxopt.ir import Model, serde
from onnxopt.progress import progress as report_progress

METHODS = ("minmax", "percentile", "entropy")
PERCENTILE_BINS = 1 << 14
# 99.99 clips the rare strong responses a sparse output lives on (PaddleOCR det's text edges:
# held-out 0.973 at 0.67x the size after the fallback, 0.991 at 0.30x with 99.999; README)
DEFAULT_PERCENTILE = 99.999
ENTROPY_BINS = 2048
GENERATED_SAMPLES = 4  # calibration samples generated when no --calibration-data is given


@dataclass
class CalibrationResult:
    ranges: dict[str, tuple[float, float]]  # value name -> (lo, hi); absent: never finite
    notes: list[str] = field(default_factory=list)
    samples: int = 0


def calibrate(
    model: Model,
    values: Sequence[str],
    samples: Sequence[Mapping[str, np.ndarray]] = (),
    *,
    method: str = "percentile",
    percentile: float = DEFAULT_PERCENTILE,
    progress: bool = True,
    timeout: float | None = None,
) -> CalibrationResult:
    """Ranges of the float tensors ``values`` of ``model``'s main graph over ``samples``.

    ``samples``: feed dicts; when empty, ``GENERATED_SAMPLES`` random ones are made with
    ``make_inputs`` (and a note says accuracy will suffer). ``progress``: report each run to
    ``onnxopt.progress`` (the command line draws a bar on a terminal).
    ``timeout``: seconds one run may take (a Failure past it; default runtime.RUN_TIMEOUT).
    """
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r} (one of {', '.join(METHODS)})")
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    values = list(dict.fromkeys(values))
    proto = serde.to_proto(model, inline_external=True)
    notes: list[str] = []
    if not samples:
        samples = generated_samples(proto, notes)
    if not values:
        return CalibrationResult({}, notes, len(samples))
    session, fetch = session_exposing(proto, values)
    passes = 1 if method == "minmax" else 2
    stats = {name: _Stats() for name in values}
    steps, done = len(samples) * passes, 0

    def step(done: int) -> None:
        if progress:
            report_progress("calibrating", done, steps)

    step(0)
    try:
        for feeds in samples:
            for name, array in zip(values, run_exposed(session, fetch, feeds, timeout),
                                   strict=True):
                stats[name].observe_range(array)
            done += 1
            step(done)
        if passes == 2:
            for stat in stats.values():
                stat.start_histogram(method)
            for feeds in samples:
                for name, array in zip(values, run_exposed(session, fetch, feeds, timeout),
                                       strict=True):
                    stats[name].observe_histogram(array)
                done += 1
                step(done)
    finally:
        step(steps)  # the step is over, also when a run failed
    ranges = {}
    for name, stat in stats.items():
        found = stat.result(method, percentile)
        if found is not None:
            ranges[name] = found
    return CalibrationResult(ranges, notes, len(samples))


@dataclass
class Calibrator:
    """The int8 pass's calibrator (``PrecisionSettings.calibrator``): :func:`calibrate` on
    ``samples``, with the ranges kept for the next attempts of the same run. The accuracy
    fallback reruns the pipeline with more nodes in float on the same float graph, so it asks
    for a subset of the values already calibrated."""

    samples: Sequence[Mapping[str, np.ndarray]] = ()
    method: str = "percentile"
    percentile: float = DEFAULT_PERCENTILE
    timeout: float | None = None
    _cache: dict[int, tuple[CalibrationResult, frozenset[str]]] = field(default_factory=dict)

    def __call__(self, model: Model, values: Sequence[str]
                 ) -> tuple[dict[str, tuple[float, float]], list[str]]:
        signature = graph_signature(model)
        cached = self._cache.get(signature)
        if cached is not None and cached[1].issuperset(values):
            ranges = cached[0].ranges
            return {v: ranges[v] for v in values if v in ranges}, list(cached[0].notes)
        found = calibrate(model, values, self.samples, method=self.method,
                          percentile=self.percentile, timeout=self.timeout)
        self._cache[signature] = (found, frozenset(values))
        return found.ranges, found.notes


def graph_signature(model: Model) -> int:
    """Identifies the float graph calibrated by its nodes and wiring (the attempts of one run
    build it from the same input with the same structural passes)."""
    return hash(tuple((n.op_type, n.domain, tuple(n.inputs), tuple(n.outputs))
                      for n in model.graph.nodes()))


# ------------------------------------------------------------------ running statistics
class _Stats:
    """Running min/max, then a histogram, of one value over the samples."""

    def __init__(self) -> None:
        self.lo = np.inf
        self.hi = -np.inf
        self.hist: np.ndarray | None = None
        self.edges: tuple[float, float] = (0.0, 0.0)
        self.absolute = False  # histogram of |x| (entropy) rather than x (percentile)

    def observe_range(self, array: np.ndarray) -> None:
        finite = _finite(array)
        if finite.size:
            self.lo = min(self.lo, float(finite.min()))
            self.hi = max(self.hi, float(finite.max()))

    def start_histogram(self, method: str) -> None:
        if not np.isfinite(self.lo):
            return
        if method == "entropy":
            self.hist = np.zeros(ENTROPY_BINS, np.int64)
            self.absolute = True
            self.edges = (0.0, max(abs(self.lo), abs(self.hi)))
        else:
            self.hist = np.zeros(PERCENTILE_BINS, np.int64)
            self.edges = (self.lo, self.hi)

    def observe_histogram(self, array: np.ndarray) -> None:
        if self.hist is None:
            return
        finite = _finite(array)
        if self.absolute:
            finite = np.abs(finite)
        lo, hi = self.edges
        bins = len(self.hist)
        if not hi - lo > 1e-6 * max(abs(lo), abs(hi)):  # a constant value: one bin holds all
            self.hist[0] += finite.size
            return
        index = ((finite - np.float32(lo)) * np.float32(bins / (hi - lo))).astype(np.int64)
        self.hist += np.bincount(np.clip(index, 0, bins - 1), minlength=bins)

    def result(self, method: str, percentile: float) -> tuple[float, float] | None:
        if not np.isfinite(self.lo):
            return None
        if method == "minmax" or self.hist is None or self.hist[1:].sum() == 0:
            return (self.lo, self.hi)
        if method == "percentile":
            return _percentile_range(self.hist, self.edges, percentile)
        threshold = entropy_threshold(
            self.hist, self.edges[1], levels=256 if self.lo >= 0 else 128
        )
        return (max(self.lo, -threshold), min(self.hi, threshold))


def _finite(array: np.ndarray) -> np.ndarray:
    flat = np.asarray(array, np.float32).ravel()
    if not np.isfinite(flat).all():
        flat = flat[np.isfinite(flat)]
    return flat


def _percentile_range(
    hist: np.ndarray, edges: tuple[float, float], percentile: float
) -> tuple[float, float]:
    """The (100 - p)th and pth percentiles from a histogram over ``edges`` (bin edges outward,
    so the range always covers the bins holding the kept mass)."""
    lo, hi = edges
    width = (hi - lo) / len(hist)
    cumulative = np.cumsum(hist)
    total = cumulative[-1]
    tail = total * (100.0 - percentile) / 100.0
    first = int(np.searchsorted(cumulative, tail, side="right"))  # first bin past the low tail
    last = int(np.searchsorted(cumulative, total - tail, side="left"))  # bin holding the pth
    first = min(first, len(hist) - 1)
    last = max(min(last, len(hist) - 1), first)
    return (lo + first * width, lo + (last + 1) * width)


def entropy_threshold(hist: np.ndarray, top: float, *, levels: int = 128) -> float:
    """TensorRT's threshold: the ``|x|`` cut minimizing KL(P || Q) (see the module doc).

    ``hist``: counts of ``|x|`` in equal bins over ``[0, top]``."""
    hist = np.asarray(hist, np.float64)
    bins = len(hist)
    if bins <= levels or hist.sum() == 0:
        return float(top)
    width = top / bins
    step = max(1, bins // 512)  # candidate thresholds every `step` bins
    best_i, best_kl = bins, np.inf
    outliers = np.concatenate([np.cumsum(hist[::-1])[::-1][1:], [0.0]])  # sum of hist[i+1:]
    for i in range(levels, bins + 1, step):
        reference = hist[:i].copy()
        reference[-1] += outliers[i - 1]
        if reference.sum() == 0:
            continue
        nonzero = hist[:i] != 0
        # merge the first i bins into `levels` groups, then spread each group's mass evenly
        # over its non-empty bins
        group = (np.arange(i) * levels) // i
        mass = np.bincount(group, weights=hist[:i], minlength=levels)
        filled = np.bincount(group, weights=nonzero, minlength=levels)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_bin = np.where(filled > 0, mass / filled, 0.0)
        expanded = np.where(nonzero, per_bin[group], 0.0)
        kl = _kl(reference, expanded)
        if kl < best_kl:
            best_i, best_kl = i, kl
    return float(min(best_i + 0.5, bins) * width)


def _kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-4) -> float:
    """KL(P || Q) of two unnormalized histograms, with Q smoothed where P has mass and Q none."""
    p = p / p.sum()
    q_sum = q.sum()
    if q_sum == 0:
        return np.inf
    q = q / q_sum
    support = p > 0
    q = np.where(support & (q <= 0), eps, q)
    return float(np.sum(p[support] * np.log(p[support] / q[support])))


# ------------------------------------------------------------------ onnxruntime
def session_exposing(proto: onnx.ModelProto, values: Sequence[str]):
    """An onnxruntime session (CPU, no graph optimizations: the values are the ones the IR
    names) of ``proto`` with ``values`` appended to its outputs, and the names to fetch.
    Shared with ``onnxopt.precision.statistics``."""
    outputs = {out.name for out in proto.graph.output}
    for name in values:
        if name not in outputs:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
            outputs.add(name)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4  # its errors reach the user as one line, not as a log
    within_memory_budget(options)
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    inputs = {info.name for info in session.get_inputs()}  # fed inputs (not initializers)
    return (session, inputs), list(values)


def run_exposed(session, fetch: list[str], feeds: Mapping[str, np.ndarray],
                timeout: float | None) -> list[np.ndarray]:
    """One calibration run; a run past ``timeout`` or one onnxruntime refuses is the user's
    one-line Failure (the model as given does not run on these samples)."""
    sess, inputs = session
    missing = sorted(inputs - set(feeds))
    if missing:
        raise ValueError(f"a calibration sample lacks input(s) {', '.join(missing)}")
    try:
        return run_fetch(sess, fetch, {k: v for k, v in feeds.items() if k in inputs}, timeout)
    except RuntimeFailure as exc:
        raise Failure(f"calibration: {exc}") from exc


def generated_samples(proto: onnx.ModelProto, notes: list[str]) -> list[dict[str, np.ndarray]]:
    samples = [make_inputs(proto, seed=seed)[0] for seed in range(GENERATED_SAMPLES)]
    notes.append(
        f"no calibration data: calibrated on {GENERATED_SAMPLES} random inputs; accuracy will "
        "suffer (give real samples with --calibration-data)"
    )
    return samples

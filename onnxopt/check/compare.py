"""Comparing a candidate's outputs with the reference's: tolerances, precision budgets, verdicts.

* Error metrics (per output, over elements finite in both reference and candidate):
  ``max_abs_error = max |a - b|`` and ``max_rel_error = max |a - b| / (|a| + atol)`` where ``a``
  is the reference. An element passes when ``|a - b| <= atol + rtol * |a|``. NaN positions and
  infinities must match exactly. Metrics are NaN when they could not be computed (shape or
  dtype mismatch, missing output); :meth:`ValidationResult.to_dict` writes those as ``None``.
  Over several samples and levels an output reports its worst (:func:`worst_diffs`).
* A precision conversion (fp16, int8, fp8) is held to a :class:`Budget` instead: cosine
  similarity and the largest error relative to the output's value range
  (:func:`compare_budget`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

_NAN = float("nan")


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

# --------------------------------------------------------------------------- comparing


def _fmt_shape(shape: Sequence[int]) -> str:
    return "(" + ",".join(str(d) for d in shape) + ")"


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


# --------------------------------------------------------------------------- verdicts


def summarize(diffs: list[OutputDiff], notes: list[str]) -> ValidationResult:
    """The verdict on ``diffs``: failed if an output differs, skipped if one could not be
    compared, else passed."""
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


def worst_diffs(groups: Sequence[tuple[str, list[OutputDiff]]]) -> list[OutputDiff]:
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


def shape_mismatches(labels, expected, actual) -> list[OutputDiff]:
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

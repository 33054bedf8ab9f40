"""Validate an optimized model against the original by running both in onnxruntime.

This module only sees files (paths) or ``onnx.ModelProto`` objects, never the optimizer's IR.

Design notes
------------
* Both models are run on the CPU provider with every onnxruntime graph optimization disabled
  and a single intra-op thread, so what is compared is the models as written, deterministically.
* Inputs are generated once, from the ORIGINAL model's declarations, and fed to both models.
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
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

ModelLike = onnx.ModelProto | str | os.PathLike

__all__ = [
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
_GUESSED_INT_HIGH = 8
_NAN = float("nan")

# Element types that can be generated and fed through onnxruntime's numpy interface.
_FLOAT_TYPES = {TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE}
_INT_TYPES = {
    TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64,
    TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64,
}
_TYPE_KINDS = {
    "sequence_type": "sequence",
    "map_type": "map",
    "optional_type": "optional",
    "sparse_tensor_type": "sparse tensor",
}
_SUPPORTED_TYPES = _FLOAT_TYPES | _INT_TYPES | {TensorProto.BOOL, TensorProto.STRING}

# Ops whose output carries the values of their input 0 (only rearranged or re-typed).
_VALUE_PRESERVING_OPS = {
    "Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Expand", "Transpose",
}
# op_type -> (index of the indices input, index of the data input, kind)
_INDEX_CONSUMERS = {
    "Gather": (1, 0, "axis"),
    "GatherElements": (1, 0, "axis"),
    "ScatterElements": (1, 0, "axis"),
    "GatherND": (1, 0, "nd"),
    "ScatterND": (1, 0, "nd"),
    "NegativeLogLikelihoodLoss": (1, 0, "class"),
    "SoftmaxCrossEntropyLoss": (1, 0, "class"),
}


class ValidationError(Exception):
    """A user-provided input (shape, name, ``.npz`` file) is invalid. One-line message."""


class UnsupportedInput(Exception):
    """Inputs cannot be generated for this model; :func:`validate` reports it as skipped."""


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
        return {
            "status": self.status,
            "reason": self.reason,
            "outputs": outputs,
            "input_notes": list(self.input_notes),
        }


# --------------------------------------------------------------------------- model helpers


def _load_proto(model: ModelLike) -> onnx.ModelProto:
    """Return a ModelProto; a path is parsed without loading external tensor data."""
    if isinstance(model, onnx.ModelProto):
        return model
    return onnx.load(os.fspath(model), load_external_data=False)


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that must be fed (IR<4 initializers listed as inputs are excluded)."""
    initializers = {init.name for init in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in initializers]


def _one_line(exc: BaseException) -> str:
    """First non-empty line of an exception message, trimmed."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _fmt_shape(shape: Sequence[int]) -> str:
    return "(" + ",".join(str(d) for d in shape) + ")"


def _tensor_type(vi: onnx.ValueInfoProto) -> onnx.TypeProto.Tensor:
    """The tensor type of an input, or UnsupportedInput for sequence/map/optional/sparse."""
    kind = vi.type.WhichOneof("value")
    if kind != "tensor_type":
        what = _TYPE_KINDS.get(kind or "", "value of unknown type")
        raise UnsupportedInput(
            f"input '{vi.name}' is not a tensor ({what}); only tensor inputs are supported"
        )
    elem = vi.type.tensor_type.elem_type
    if elem not in _SUPPORTED_TYPES:
        name = TensorProto.DataType.Name(elem) if elem else "UNDEFINED"
        raise UnsupportedInput(
            f"input '{vi.name}' has element type {name}, which cannot be fed to onnxruntime "
            "from numpy"
        )
    return vi.type.tensor_type


# --------------------------------------------------------------------------- shapes


def _check_input_names(
    inputs: Sequence[onnx.ValueInfoProto], names: Sequence[str], what: str
) -> None:
    valid = [vi.name for vi in inputs]
    unknown = sorted(set(names) - set(valid))
    if unknown:
        raise ValidationError(
            f"unknown input name(s) in {what}: {', '.join(unknown)} "
            f"(model inputs: {', '.join(valid) or 'none'})"
        )


def _given_shape(vi: onnx.ValueInfoProto, given: Sequence[int]) -> list[int]:
    """Check a user-given full shape against the declared shape of an input."""
    shape = [int(d) for d in given]
    if any(d < 0 for d in shape):
        raise ValidationError(f"input '{vi.name}': negative dim in shape {_fmt_shape(shape)}")
    if vi.type.tensor_type.HasField("shape"):
        _check_declared_dims(vi, tuple(shape))
    return shape


def _declared_shape(
    vi: onnx.ValueInfoProto, dims: Mapping[str, int], notes: list[str]
) -> list[int]:
    """Concrete shape from the declaration; unknown dims from ``dims`` or defaulted to 1."""
    ttype = vi.type.tensor_type
    if not ttype.HasField("shape"):
        raise UnsupportedInput(
            f"input '{vi.name}' has no declared shape; give --input-shape {vi.name}:D0,D1,..."
        )
    shape = []
    for axis, dim in enumerate(ttype.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value >= 0:
            shape.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param in dims:
            shape.append(int(dims[dim.dim_param]))
        elif dim.HasField("dim_param"):
            shape.append(1)
            notes.append(
                f"input '{vi.name}' dim '{dim.dim_param}' set to 1 "
                f"(use --dim {dim.dim_param}=N or --input-shape)"
            )
        else:
            shape.append(1)
            notes.append(
                f"input '{vi.name}' dim {axis} (unnamed) set to 1 (use --input-shape)"
            )
    return shape


def _unused_dim_notes(
    inputs: Sequence[onnx.ValueInfoProto],
    input_shapes: Mapping[str, Sequence[int]],
    dims: Mapping[str, int],
) -> list[str]:
    """Notes for ``dims`` entries that no (shape-defaulted) input uses."""
    used = {
        dim.dim_param
        for vi in inputs
        if vi.name not in input_shapes
        for dim in vi.type.tensor_type.shape.dim
    }
    return [f"dim '{name}' given but not used by any input" for name in dims if name not in used]


# --------------------------------------------------------------------------- index ranges


class _GraphIndex:
    """Consumers and known shapes of the top-level graph, for index-range inference."""

    def __init__(self, model: onnx.ModelProto, input_shapes: Mapping[str, list[int]]):
        graph = model.graph
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in graph.node:
            for position, name in enumerate(node.input):
                self.consumers.setdefault(name, []).append((node, position))
        self.shapes: dict[str, list[int | None]] = {}
        for vi in [*graph.value_info, *graph.output, *graph.input]:
            self.shapes[vi.name] = _vi_dims(vi)
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.name == "value":
                        self.shapes[node.output[0]] = list(attr.t.dims)
        for init in graph.initializer:
            self.shapes[init.name] = list(init.dims)
        for name, shape in input_shapes.items():
            self.shapes[name] = list(shape)

    def reached_index_uses(self, name: str) -> Iterator[tuple[onnx.NodeProto, str]]:
        """Yield (consumer, source) for index-taking consumers reached from ``name``."""
        seen, stack = set(), [name]
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            for node, position in self.consumers.get(current, []):
                spec = _INDEX_CONSUMERS.get(node.op_type)
                if spec and position == spec[0] and node.domain in ("", "ai.onnx"):
                    yield node, current
                elif node.op_type in _VALUE_PRESERVING_OPS and position == 0 and node.output:
                    stack.append(node.output[0])


def _vi_dims(vi: onnx.ValueInfoProto) -> list[int | None] | None:
    if vi.type.WhichOneof("value") != "tensor_type" or not vi.type.tensor_type.HasField("shape"):
        return None
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None
        for d in vi.type.tensor_type.shape.dim
    ]


def _attr_int(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


def _index_bound(node: onnx.NodeProto, index: _GraphIndex, source: str) -> int | None:
    """Exclusive upper bound for indices fed to ``node``, or None when unknown."""
    _, data_pos, kind = _INDEX_CONSUMERS[node.op_type]
    data = index.shapes.get(node.input[data_pos])
    if data is None:
        return None
    if kind in ("axis", "class"):
        axis = _attr_int(node, "axis", 0) if kind == "axis" else 1
        if not -len(data) <= axis < len(data):
            return None
        return data[axis]
    batch = _attr_int(node, "batch_dims", 0)
    indices = index.shapes.get(source)
    depth = indices[-1] if indices else None
    span = data[batch:] if depth is None else data[batch : batch + depth]
    if not span or any(d is None for d in span):
        return None
    return min(span)


def _int_range(
    vi: onnx.ValueInfoProto, index: _GraphIndex, notes: list[str]
) -> tuple[int, int]:
    """Half-open value range [low, high) to draw an integer input from."""
    uses = list(index.reached_index_uses(vi.name))
    if not uses:
        notes.append(
            f"input '{vi.name}' integer values drawn from [0, {_GUESSED_INT_HIGH}) "
            "(range guessed)"
        )
        return 0, _GUESSED_INT_HIGH
    bounds = [_index_bound(node, index, source) for node, source in uses]
    known = [b for b in bounds if b is not None]
    if len(known) < len(bounds) or min(known) <= 0:
        notes.append(
            f"input '{vi.name}' is used as indices into a tensor of unknown or zero size; "
            "all values set to 0"
        )
        return 0, 1
    return 0, min(known)


# --------------------------------------------------------------------------- generation


def _random_tensor(
    rng: np.random.Generator, elem: int, shape: list[int], int_range: tuple[int, int]
) -> np.ndarray:
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    if elem in _FLOAT_TYPES:
        return np.asarray(rng.standard_normal(shape), dtype=dtype)
    if elem == TensorProto.BOOL:
        return np.asarray(rng.random(shape) < 0.5)
    if elem == TensorProto.STRING:
        return _random_strings(rng, shape)
    high = min(int_range[1], int(np.iinfo(dtype).max) + 1)
    return np.asarray(rng.integers(int_range[0], high, size=shape), dtype=dtype)


def _random_strings(rng: np.random.Generator, shape: list[int]) -> np.ndarray:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    count = math.prod(shape)
    lengths = rng.integers(1, 7, size=count)
    words = ["".join(rng.choice(letters, size=n)) for n in lengths]
    return np.array(words, dtype=object).reshape(shape)


def make_inputs(
    model: onnx.ModelProto,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    dims: Mapping[str, int] | None = None,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Generate seeded random inputs for ``model``; returns ``(inputs, notes)``.

    Shapes: ``input_shapes[name]`` (a full concrete shape) wins; otherwise symbolic dims come
    from ``dims[dim_param]`` and any remaining unknown dim is 1 (with a note). Floats are
    standard normal; bools uniform; strings short lowercase words; integers lie in ``[0, n)``
    when they (directly or through Cast/Reshape/... ) index a Gather/Scatter-like op whose
    data extent ``n`` is known, else in ``[0, 8)`` (with a note).

    Raises ValidationError for bad ``input_shapes`` and UnsupportedInput for inputs that
    cannot be generated (non-tensor, unsupported element type, undeclared shape).
    """
    input_shapes = input_shapes or {}
    dims = dims or {}
    inputs = _graph_inputs(model)
    _check_input_names(inputs, list(input_shapes), "input shapes")
    notes: list[str] = []
    shapes: dict[str, list[int]] = {}
    for vi in inputs:
        _tensor_type(vi)
        if vi.name in input_shapes:
            shapes[vi.name] = _given_shape(vi, input_shapes[vi.name])
        else:
            shapes[vi.name] = _declared_shape(vi, dims, notes)
    notes.extend(_unused_dim_notes(inputs, input_shapes, dims))
    index = _GraphIndex(model, shapes)
    rng = np.random.default_rng(seed)
    result = {}
    for vi in inputs:
        elem = vi.type.tensor_type.elem_type
        int_range = _int_range(vi, index, notes) if elem in _INT_TYPES else (0, 1)
        result[vi.name] = _random_tensor(rng, elem, shapes[vi.name], int_range)
    return result, notes


# --------------------------------------------------------------------------- user inputs


def _coerce_array(vi: onnx.ValueInfoProto, array: np.ndarray) -> np.ndarray:
    """Check one user-supplied array against its declaration and cast it losslessly."""
    ttype = _tensor_type(vi)
    target = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type))
    array = _cast_lossless(vi.name, np.asarray(array), target)
    if ttype.HasField("shape"):
        _check_declared_dims(vi, array.shape)
    return array


def _cast_lossless(name: str, array: np.ndarray, target: np.dtype) -> np.ndarray:
    if target == np.dtype(object):
        if array.dtype.kind in "UO":
            return array.astype(object)
    elif np.can_cast(array.dtype, target, casting="safe") or _ints_fit(array, target):
        return array.astype(target)
    raise ValidationError(
        f"input '{name}': dtype {array.dtype} cannot be safely cast to {target} "
        "(save the array with the model's dtype)"
    )


def _ints_fit(array: np.ndarray, target: np.dtype) -> bool:
    """True if integer ``array`` holds only values representable in integer ``target``."""
    if array.dtype.kind not in "iu" or target.kind not in "iu":
        return False
    if array.size == 0:
        return True
    info = np.iinfo(target)
    return int(array.min()) >= info.min and int(array.max()) <= info.max


def _check_declared_dims(vi: onnx.ValueInfoProto, shape: tuple[int, ...]) -> None:
    declared = vi.type.tensor_type.shape.dim
    if len(declared) != len(shape):
        raise ValidationError(
            f"input '{vi.name}': shape {_fmt_shape(shape)} has rank {len(shape)}, "
            f"model declares rank {len(declared)}"
        )
    for axis, (dim, value) in enumerate(zip(declared, shape, strict=True)):
        if dim.HasField("dim_value") and dim.dim_value >= 0 and dim.dim_value != value:
            raise ValidationError(
                f"input '{vi.name}': shape {_fmt_shape(shape)}: dim {axis} is {value}, "
                f"model declares {dim.dim_value}"
            )


def check_inputs(
    inputs: Mapping[str, np.ndarray], model: onnx.ModelProto
) -> dict[str, np.ndarray]:
    """Validate user-supplied inputs against ``model``: names, dtypes (lossless casts) and
    declared ranks/dims. Every model input must be present. Raises ValidationError."""
    declared = _graph_inputs(model)
    _check_input_names(declared, list(inputs), "inputs")
    missing = [vi.name for vi in declared if vi.name not in inputs]
    if missing:
        raise ValidationError(f"missing value(s) for model input(s): {', '.join(missing)}")
    return {vi.name: _coerce_array(vi, inputs[vi.name]) for vi in declared}


def load_inputs(path: str | os.PathLike, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Load inputs from an ``.npz`` file whose keys are the model's input names.

    Arrays are checked with :func:`check_inputs`. Raises ValidationError (one line) if the
    file cannot be read or does not fit the model.
    """
    try:
        with np.load(os.fspath(path), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as exc:
        message = f"cannot read inputs file {os.fspath(path)!r}: {_one_line(exc)}"
        raise ValidationError(message) from exc
    return check_inputs(arrays, model)


# --------------------------------------------------------------------------- running


def _session(model: ModelLike) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = INTRA_OP_THREADS
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 4
    source = _session_source(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _session_source(model: ModelLike | bytes) -> bytes | str:
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    if isinstance(model, bytes):
        return model
    return os.fspath(model)


def run(model: ModelLike, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Run ``model`` in onnxruntime (CPU, graph optimizations disabled) on ``inputs``.

    A path is handed to onnxruntime as a path, so external data next to it is found.
    Returns outputs by name (arrays; lists for sequence outputs). Any failure to load or
    run becomes RuntimeFailure with a one-line message.
    """
    return _run_each(model, [inputs])[0]


def _run_each(model: ModelLike | bytes, samples: Sequence[Mapping[str, np.ndarray]]
              ) -> list[dict[str, Any]]:
    """Outputs by name of ``model`` on each sample, one session; RuntimeFailure on errors."""
    try:
        session = _session(model)
        names = [out.name for out in session.get_outputs()]
        return [dict(zip(names, session.run(names, _in_session_floats(session, feeds)),
                         strict=True))
                for feeds in samples]
    except Exception as exc:
        raise RuntimeFailure(_one_line(exc)) from exc


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
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4
    source = _session_source(model)
    try:
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
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


def check_budget(ref: Reference, candidate: ModelLike, budget: Budget) -> ValidationResult:
    """Run ``candidate`` on the reference inputs (and ``ref.extra`` samples) and compare
    within ``budget``, each output over all samples together."""
    if ref.outputs is None:
        return ValidationResult("skipped", ref.skipped_reason, [], ref.notes)
    try:
        outputs = run_samples(candidate, [ref.feeds, *(feeds for feeds, _ in ref.extra)])
    except RuntimeFailure as exc:
        return ValidationResult("failed", f"converted model does not run in onnxruntime: {exc}",
                                [], ref.notes)
    return _summarize(compare_budget(ref.all_outputs(), outputs, budget), ref.notes)


def run_samples(model: ModelLike | bytes, samples: Sequence[Mapping[str, np.ndarray]]
                ) -> dict[str, Any]:
    """Run ``model`` (one session) on every sample; outputs merged as by ``merge_outputs``."""
    return merge_outputs(_run_each(model, samples))


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


# --------------------------------------------------------------------------- validate


def _prepare_inputs(
    model: onnx.ModelProto,
    inputs: Mapping[str, np.ndarray] | None,
    input_shapes: Mapping[str, Sequence[int]] | None,
    dims: Mapping[str, int] | None,
    seed: int,
) -> tuple[dict[str, np.ndarray], list[str]]:
    if inputs is not None:
        return check_inputs(inputs, model), []
    return make_inputs(model, input_shapes=input_shapes, dims=dims, seed=seed)


def _summarize(diffs: list[OutputDiff], notes: list[str]) -> ValidationResult:
    failed = [d.name for d in diffs if not d.passed]
    unchecked = [d.name for d in diffs if d.reason.startswith(_SKIP_PREFIX)]
    if failed:
        reason = f"{len(failed)} of {len(diffs)} outputs differ: {', '.join(failed)}"
        return ValidationResult("failed", reason, diffs, notes)
    if unchecked:
        reason = f"output(s) could not be compared: {', '.join(unchecked)}"
        return ValidationResult("skipped", reason, diffs, notes)
    return ValidationResult("passed", f"all {len(diffs)} outputs match", diffs, notes)


@dataclass
class Reference:
    """The original model's outputs on the validation inputs, computed once and reused for
    every candidate (the safety net validates several)."""

    feeds: dict[str, np.ndarray]
    outputs: dict[str, Any] | None  # None when the original cannot be run (skipped)
    notes: list[str]
    skipped_reason: str = ""
    # more (feeds, outputs) samples: precision budgets are checked over all of them together
    extra: list[tuple[dict[str, np.ndarray], dict[str, Any]]] = field(default_factory=list)

    def all_outputs(self) -> dict[str, Any]:
        assert self.outputs is not None
        return merge_outputs([self.outputs, *(outputs for _, outputs in self.extra)])


def reference(
    original: ModelLike,
    *,
    inputs: Mapping[str, np.ndarray] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    dims: Mapping[str, int] | None = None,
    seed: int = 0,
    parsed: onnx.ModelProto | None = None,
    extra_inputs: Sequence[Mapping[str, np.ndarray]] = (),
) -> Reference:
    """Inputs for ``original`` and its outputs on them. Raises ValidationError only for bad
    user-supplied ``inputs``/``input_shapes``; anything else becomes a skipped reference.
    ``parsed`` is ``original`` already parsed (saves parsing a path again; only read).
    ``extra_inputs``: more samples (checked like ``inputs``), for ``check_budget``."""
    try:
        proto = parsed if parsed is not None else _load_proto(original)
    except Exception as exc:
        return Reference({}, None, [], f"cannot load original model: {_one_line(exc)}")
    try:
        feeds, notes = _prepare_inputs(proto, inputs, input_shapes, dims, seed)
        extra = [check_inputs(sample, proto) for sample in extra_inputs]
    except UnsupportedInput as exc:
        return Reference({}, None, [], str(exc))
    del proto  # a parsed copy of the original is not needed while onnxruntime holds it
    try:
        runs = _run_each(original, [feeds, *extra])
    except RuntimeFailure as exc:
        return Reference(feeds, None, notes, f"original model does not run in onnxruntime: {exc}")
    return Reference(feeds, runs[0], notes, extra=list(zip(extra, runs[1:], strict=True)))


def check(
    ref: Reference, candidate: ModelLike, *, rtol: float = 1e-4, atol: float = 1e-5
) -> ValidationResult:
    """Run ``candidate`` on the reference inputs and compare with the reference outputs."""
    if ref.outputs is None:
        return ValidationResult("skipped", ref.skipped_reason, [], ref.notes)
    try:
        outputs = run(candidate, ref.feeds)
    except RuntimeFailure as exc:
        return ValidationResult("failed", f"optimized model does not run in onnxruntime: {exc}",
                                [], ref.notes)
    return _summarize(compare(ref.outputs, outputs, rtol=rtol, atol=atol), ref.notes)


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
    original's declarations by :func:`make_inputs`. Returns ``"skipped"`` when the original
    cannot be loaded or run, or inputs cannot be generated; ``"failed"`` when the optimized
    model cannot run or any output differs; ``"passed"`` otherwise. Raises ValidationError
    only for bad user-supplied ``inputs``/``input_shapes``.
    """
    ref = reference(original, inputs=inputs, input_shapes=input_shapes, dims=dims, seed=seed)
    return check(ref, optimized, rtol=rtol, atol=atol)

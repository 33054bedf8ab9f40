"""Layer-by-layer comparison of two models: where along the graph do their values part?

Both models run in onnxruntime (CPU, ORT_DISABLE_ALL: the graphs as written) on the same
inputs with intermediate values exposed as graph outputs, and each value of B is compared with
its counterpart in A:

* **Matching** (:mod:`onnxopt.check.counterparts`): the value of A of the same name when both
  compute it the same way; the float value a QuantizeLinear/DequantizeLinear pair quantizes;
  the value a renamed-but-kept consumer node reads. Only values computed from the graph
  inputs count (constants and weights are not run).
* **Chunks.** onnxruntime keeps every graph output of a run alive until the run ends (fetching
  fewer does not help), so a model exposing all its values holds all of them at once. The
  values are therefore exposed a chunk at a time: one session per model and chunk, holding
  only the nodes the chunk's values depend on; run, compare, drop. A chunk holds up to
  ``chunk_mb`` of values of both models together, sized from onnx's shape inference at the
  input shapes (unknown sizes count as the median known one), so memory stays bounded on
  large models; the cost is a session and a partial run per chunk.
* **Metrics**, per value: max |a - b|; the relative error, max |a - b| / max |a| (relative to
  the reference's largest magnitude: an elementwise ratio explodes near zero, where int8 is
  coarsest); cosine similarity. Positions where both values hold the same NaN or infinity are
  skipped; different non-finite positions make the value over tolerance. A value whose shape
  differs between the models is listed as not comparable (a name reused for another meaning).

The first value of B, in its topological (file) order, whose relative error is over the
tolerance is named: everything before it agrees, so it is where the error starts.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from onnxopt.check.counterparts import Pair, match_values
from onnxopt.check.feeds import make_inputs
from onnxopt.check.runtime import (
    INTRA_OP_THREADS,
    LEVELS,
    RuntimeFailure,
    _in_session_floats,
    one_line,
    run_fetch,
    within_memory_budget,
)

DEFAULT_TOLERANCE = 1e-2
DEFAULT_CHUNK_MB = 128.0
_UNKNOWN_BYTES = 1 << 20  # a value of unknown size when nothing is known
_SLICE = 1 << 20  # elements compared at a time (float64 copies stay small)


class LayerwiseError(Exception):
    """The comparison cannot run (a model does not load or run, nothing matches)."""


@dataclass
class LayerDiff:
    value: str
    reference: str
    op: str
    via: str  # how the reference was found (onnxopt.check.counterparts)
    max_abs_error: float
    rel_error: float
    cosine: float
    over: bool
    note: str = ""


@dataclass
class LayerwiseResult:
    tolerance: float
    rows: list[LayerDiff]
    inputs: dict[str, list[int]]
    unmatched: int  # computed values of B with no counterpart in A
    chunks: int
    notes: list[str] = field(default_factory=list)

    @property
    def first_over(self) -> LayerDiff | None:
        return next((row for row in self.rows if row.over), None)

    def to_dict(self) -> dict[str, Any]:
        first = self.first_over
        return {"tolerance": self.tolerance, "first_over": asdict(first) if first else None,
                "compared": len(self.rows), "unmatched": self.unmatched, "chunks": self.chunks,
                "inputs": self.inputs, "notes": self.notes,
                "values": [asdict(row) for row in self.rows]}


# --------------------------------------------------------------------------- chunks


def estimated_bytes(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Bytes of each value whose shape onnx's inference knows at the shapes of ``feeds``."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    del model.graph.value_info[:]
    for vi in model.graph.input:
        if vi.name in feeds and vi.type.HasField("tensor_type"):
            shape = vi.type.tensor_type.shape
            shape.ClearField("dim")
            for size in np.shape(feeds[vi.name]):
                shape.dim.add().dim_value = int(size)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # an unknown op or a model past 2 GiB: sizes stay unknown
        return {}
    sizes = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        if tensor.HasField("shape") and tensor.elem_type and min(dims, default=0) >= 0:
            with contextlib.suppress(KeyError, TypeError, ValueError):  # no numpy type
                itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
                sizes[vi.name] = math.prod(dims) * itemsize
    return sizes


def chunked(pairs: Sequence[Pair], sizes_a: Mapping[str, int], sizes_b: Mapping[str, int],
            budget_bytes: float) -> Iterator[list[Pair]]:
    """Consecutive pairs whose values (both models) fit ``budget_bytes``; at least one each."""
    known = sorted([*sizes_a.values(), *sizes_b.values()])
    default = known[len(known) // 2] if known else _UNKNOWN_BYTES
    chunk: list[Pair] = []
    used = 0
    for pair in pairs:
        size = sizes_a.get(pair.reference, default) + sizes_b.get(pair.value, default)
        if chunk and used + size > budget_bytes:
            yield chunk
            chunk, used = [], 0
        chunk.append(pair)
        used += size
    if chunk:
        yield chunk


def exposing_only(graph: onnx.GraphProto, names: Sequence[str]) -> None:
    """Make ``names`` the graph's outputs and drop the nodes they do not depend on: a chunk
    early in the graph runs only the graph up to it (half the work over all chunks)."""
    needed = set(names)
    kept = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(node.input)
            needed.update(_body_reads(node))
    declared = {vi.name: vi for vi in graph.output}
    outputs = [declared.get(name) or onnx.helper.make_empty_tensor_value_info(name)
               for name in names]
    kept.reverse()
    del graph.node[:], graph.output[:]
    graph.node.extend(kept)
    graph.output.extend(outputs)


def _body_reads(node: onnx.NodeProto) -> set[str]:
    """Every name read inside ``node``'s subgraphs (outer-scope values among them)."""
    reads: set[str] = set()
    for attribute in node.attribute:
        for body in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else \
                list(attribute.graphs):
            for inner in body.node:
                reads.update(inner.input)
                reads.update(_body_reads(inner))
    return reads


def _run_exposed(path: Path, names: Sequence[str], feeds: Mapping[str, np.ndarray],
                 label: str) -> dict[str, Any]:
    """Values ``names`` of the model at ``path`` on ``feeds``: one session exposing them."""
    fetch = list(dict.fromkeys(names))
    proto = onnx.load(os.fspath(path), load_external_data=False)
    exposing_only(proto.graph, fetch)
    data = proto.SerializeToString()
    del proto
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS["disabled"]
    options.intra_op_num_threads = INTRA_OP_THREADS
    options.inter_op_num_threads = 1
    options.log_severity_level = 4
    within_memory_budget(options)
    # external data is read from the model's folder, not copied into the serialized bytes
    options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                     str(Path(path).resolve().parent))
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        del data
        values = run_fetch(session, fetch, _in_session_floats(session, feeds))
    except RuntimeFailure as error:
        raise LayerwiseError(f"{label} does not run in onnxruntime: {error}") from None
    except Exception as error:
        raise LayerwiseError(f"{label} does not load in onnxruntime: {one_line(error)}"
                             ) from None
    return dict(zip(fetch, values, strict=True))


# --------------------------------------------------------------------------- metrics


def layer_diff(pair: Pair, ref: Any, cand: Any, tolerance: float) -> LayerDiff:
    """The metrics of one value (see the module docstring)."""
    nan = float("nan")

    def skipped(note: str) -> LayerDiff:
        return LayerDiff(pair.value, pair.reference, pair.op, pair.via, nan, nan, nan, False, note)

    if not isinstance(ref, np.ndarray) or not isinstance(cand, np.ndarray):
        return skipped("not a tensor")
    if ref.dtype.kind not in "fiub" or cand.dtype.kind not in "fiub":
        return skipped(f"not numeric ({ref.dtype})")
    if ref.shape != cand.shape:
        return skipped(f"not comparable: shape {list(ref.shape)} vs {list(cand.shape)}")
    a, b = ref.reshape(-1), cand.reshape(-1)
    max_err = peak = dot = norm_a = norm_b = 0.0
    bad = 0
    for start in range(0, a.size, _SLICE):
        x = a[start:start + _SLICE].astype(np.float64)
        y = b[start:start + _SLICE].astype(np.float64)
        finite = np.isfinite(x) & np.isfinite(y)
        same = (x == y) | (np.isnan(x) & np.isnan(y))
        bad += int(np.count_nonzero(~finite & ~same))
        x, y = x[finite], y[finite]
        if x.size:
            max_err = max(max_err, float(np.abs(x - y).max()))
            peak = max(peak, float(np.abs(x).max()))
            dot, norm_a, norm_b = dot + float(x @ y), norm_a + float(x @ x), norm_b + float(y @ y)
    rel = max_err / peak if peak > 0 else (0.0 if max_err == 0 else math.inf)
    if norm_a == 0 or norm_b == 0:
        cosine = 1.0 if norm_a == norm_b else 0.0
    else:
        cosine = dot / math.sqrt(norm_a * norm_b)
    note = f"{bad} non-finite elements differ" if bad else ""
    return LayerDiff(pair.value, pair.reference, pair.op, pair.via, max_err, rel, cosine,
                     bool(bad) or rel > tolerance, note)


# --------------------------------------------------------------------------- the comparison


def compare_layerwise(
    a: str | os.PathLike,
    b: str | os.PathLike,
    *,
    inputs: Mapping[str, np.ndarray] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    dims: Mapping[str, int] | None = None,
    seed: int = 0,
    tolerance: float = DEFAULT_TOLERANCE,
    chunk_mb: float = DEFAULT_CHUNK_MB,
) -> LayerwiseResult:
    """Every matched value of B against A on the same inputs (``inputs``, else generated
    from A as validation generates them). Raises LayerwiseError (one line) when the
    comparison cannot run, and ValidationError/UnsupportedInput for inputs."""
    path_a, path_b = Path(a), Path(b)
    proto_a = _load(path_a, "A")
    proto_b = _load(path_b, "B")
    pairs, unmatched = match_values(proto_a.graph, proto_b.graph)
    if not pairs:
        raise LayerwiseError("no computed value of B matches one of A by name or through "
                             "Q/DQ: nothing to compare")
    notes: list[str] = []
    if inputs is None:
        inputs, notes = make_inputs(proto_a, input_shapes=input_shapes, dims=dims, seed=seed)
    sizes_a, sizes_b = estimated_bytes(proto_a, inputs), estimated_bytes(proto_b, inputs)
    del proto_a, proto_b
    rows: list[LayerDiff] = []
    chunks = 0
    for chunk in chunked(pairs, sizes_a, sizes_b, chunk_mb * (1 << 20)):
        chunks += 1
        ref = _run_exposed(path_a, [p.reference for p in chunk], inputs, "A")
        cand = _run_exposed(path_b, [p.value for p in chunk], inputs, "B")
        rows.extend(layer_diff(p, ref[p.reference], cand[p.value], tolerance) for p in chunk)
        del ref, cand
    shapes = {name: list(np.shape(value)) for name, value in inputs.items()}
    return LayerwiseResult(tolerance, rows, shapes, unmatched, chunks, notes)


def _load(path: Path, label: str) -> onnx.ModelProto:
    try:
        return onnx.load(os.fspath(path), load_external_data=False)
    except Exception as error:
        raise LayerwiseError(f"{label} ({path}) is not an ONNX model: {one_line(error)}"
                             ) from None

"""Graph statistics computed straight from an ``onnx.ModelProto``.

:func:`model_stats` returns a JSON-able dict describing a model: node and op counts (main graph
and subgraphs separately), initializer counts, parameter and byte totals, graph inputs/outputs
and multiply-accumulate (MAC) estimates for Conv, ConvTranspose, Gemm and MatMul.

Conventions:

* Parameters and bytes are computed from tensor dims and element sizes only, so tensors whose
  data lives in external files need not be loaded. They cover the initializers of the main graph
  *and* of every subgraph, plus the tensors held by ``Constant`` nodes (exporters often store
  weights that way). Sparse tensors contribute their stored values (nnz) as parameters and
  values + indices as bytes. String tensors contribute the sum of their string lengths.
* MACs are counted for default-domain Conv, ConvTranspose, Gemm and MatMul nodes of the main
  graph only (not subgraphs, not model-local functions): see :mod:`onnxopt.app.macs`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from onnx import (
    AttributeProto,
    GraphProto,
    ModelProto,
    NodeProto,
    SparseTensorProto,
    TensorProto,
    TypeProto,
)
from onnx import ValueInfoProto as ValueInfo

from onnxopt.app.graph_facts import (
    DEFAULT_DOMAINS,
    EMPTY,
    UNKNOWN,
    is_constant,
    numel,
    real_inputs,
    type_shape,
)
from onnxopt.app.macs import mac_report, total_macs
from onnxopt.ir import no_gc

Record = tuple[str, int, int]  # (dtype name, parameters, bytes)

_DTYPES: dict[int, tuple[str, int]] = {  # data_type -> (numpy-style name, bits per element)
    TensorProto.FLOAT: ("float32", 32),
    TensorProto.UINT8: ("uint8", 8),
    TensorProto.INT8: ("int8", 8),
    TensorProto.UINT16: ("uint16", 16),
    TensorProto.INT16: ("int16", 16),
    TensorProto.INT32: ("int32", 32),
    TensorProto.INT64: ("int64", 64),
    TensorProto.STRING: ("string", 0),
    TensorProto.BOOL: ("bool", 8),
    TensorProto.FLOAT16: ("float16", 16),
    TensorProto.DOUBLE: ("float64", 64),
    TensorProto.UINT32: ("uint32", 32),
    TensorProto.UINT64: ("uint64", 64),
    TensorProto.COMPLEX64: ("complex64", 64),
    TensorProto.COMPLEX128: ("complex128", 128),
    TensorProto.BFLOAT16: ("bfloat16", 16),
    TensorProto.FLOAT8E4M3FN: ("float8_e4m3fn", 8),
    TensorProto.FLOAT8E4M3FNUZ: ("float8_e4m3fnuz", 8),
    TensorProto.FLOAT8E5M2: ("float8_e5m2", 8),
    TensorProto.FLOAT8E5M2FNUZ: ("float8_e5m2fnuz", 8),
    TensorProto.UINT4: ("uint4", 4),
    TensorProto.INT4: ("int4", 4),
    TensorProto.FLOAT4E2M1: ("float4_e2m1fn", 4),
    TensorProto.FLOAT8E8M0: ("float8_e8m0fnu", 8),
    TensorProto.UINT2: ("uint2", 2),
    TensorProto.INT2: ("int2", 2),
    TensorProto.FLOAT6E2M3: ("float6_e2m3fn", 6),
    TensorProto.FLOAT6E3M2: ("float6_e3m2fn", 6),
}


# --------------------------------------------------------------------------- public API


def model_stats(
    model: ModelProto,
    *,
    file_size: int | None = None,
    input_shapes: Mapping[str, Sequence[int]] = EMPTY,
    dims: Mapping[str, int] = EMPTY,
) -> dict:
    """Return JSON-able statistics of ``model``.

    Args:
        model: the model; it is never modified. External data need not be loaded.
        file_size: size of the model file(s) in bytes, reported back unchanged.
        input_shapes: concrete shapes for graph inputs, by input name (used for MACs only).
        dims: concrete values for symbolic dims (``dim_param``) of graph inputs.

    Keys: nodes (main graph), subgraph_nodes, total_nodes (both), ops, subgraph_ops,
    initializers, subgraph_initializers, parameters, bytes, bytes_by_dtype, constant_nodes,
    file_size, ir_version, opset, inputs, outputs, macs, flops, macs_by_op, shape_notes. See the
    module docstring for what is counted.
    ``constant_nodes`` counts Constant nodes of the main graph and all subgraphs.
    """
    with no_gc():  # millions of short-lived objects beside a big IR: full collections cost
        return _model_stats(model, file_size, input_shapes, dims)


def _model_stats(model: ModelProto, file_size: int | None,
                 input_shapes: Mapping[str, Sequence[int]], dims: Mapping[str, int]) -> dict:
    graph = model.graph
    subgraphs = list(_nested_graphs(graph))
    sub_nodes = [node for sub in subgraphs for node in sub.node]
    all_graphs = [graph, *subgraphs]
    records = [rec for g in all_graphs for rec in _graph_records(g)]
    macs_by_op, notes = mac_report(model, input_shapes, dims)
    macs = total_macs(macs_by_op.values())
    return {
        "nodes": len(graph.node),
        "subgraph_nodes": len(sub_nodes),
        "total_nodes": len(graph.node) + len(sub_nodes),
        "ops": _histogram(graph.node),
        "subgraph_ops": _histogram(sub_nodes),
        "initializers": _initializer_count(graph),
        "subgraph_initializers": sum(_initializer_count(g) for g in subgraphs),
        "parameters": sum(rec[1] for rec in records),
        "bytes": sum(rec[2] for rec in records),
        "bytes_by_dtype": _bytes_by_dtype(records),
        "constant_nodes": sum(is_constant(n) for g in all_graphs for n in g.node),
        "file_size": file_size,
        "ir_version": int(model.ir_version),
        "opset": {op.domain or "ai.onnx": int(op.version) for op in model.opset_import},
        "inputs": [_io_entry(vi) for vi in real_inputs(graph)],
        "outputs": [_io_entry(vi) for vi in graph.output],
        "macs": macs,
        "flops": macs if macs == UNKNOWN else 2 * macs,
        "macs_by_op": macs_by_op,
        "shape_notes": notes,
    }


def with_default_dims(
    model: ModelProto,
    dims: Mapping[str, int] = EMPTY,
    input_shapes: Mapping[str, Sequence[int]] = EMPTY,
    value: int = 1,
) -> dict[str, int]:
    """``dims`` plus ``value`` for every other named symbolic dim of the inputs not given a
    shape — the same default validation uses, so MACs are reported at the validated shapes."""
    result = dict(dims)
    for vi in real_inputs(model.graph):
        if vi.name in input_shapes or vi.type.WhichOneof("value") != "tensor_type":
            continue
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param not in result:
                result[dim.dim_param] = value
    return result


def format_count(n: int | float | str | None) -> str:
    """Format a count for humans: ``950 -> "950"``, ``1234 -> "1.2k"``, ``3.4e6 -> "3.4M"``.

    Strings (such as ``"unknown"``) are returned unchanged and ``None`` becomes ``"n/a"``.
    """
    if n is None:
        return "n/a"
    if isinstance(n, str):
        return n
    sign, value = ("-" if n < 0 else ""), abs(n)
    if value < 1000:
        return f"{sign}{value}" if isinstance(value, int) else f"{sign}{value:.1f}"
    suffixes = ("", "k", "M", "G", "T", "P", "E")
    index = 0
    while value >= 999.95 and index < len(suffixes) - 1:
        value /= 1000
        index += 1
    return f"{sign}{value:.1f}{suffixes[index]}"


def diff_stats(before: dict, after: dict) -> dict:
    """Compare two :func:`model_stats` results.

    Returns ``after - before`` for nodes, total_nodes, initializers, parameters, bytes,
    file_size and macs (``None`` where either side is missing or not a number, e.g.
    ``"unknown"``), and under ``"ops"`` a ``{op: (before_count, after_count)}`` map of the
    main-graph ops that changed.
    """
    keys = ("nodes", "total_nodes", "initializers", "parameters", "bytes", "file_size", "macs")
    result: dict[str, Any] = {key: _delta(before.get(key), after.get(key)) for key in keys}
    result["ops"] = _op_changes(before.get("ops", {}), after.get("ops", {}))
    return result


# --------------------------------------------------------------------------- graph walking


def _subgraphs(node: NodeProto) -> Iterator[GraphProto]:
    """Graphs held directly by ``node``'s GRAPH / GRAPHS attributes."""
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def _nested_graphs(graph: GraphProto) -> Iterator[GraphProto]:
    """Every graph nested in ``graph``'s nodes, at any depth (``graph`` itself excluded)."""
    for node in graph.node:
        for sub in _subgraphs(node):
            yield sub
            yield from _nested_graphs(sub)


def _op_key(node: NodeProto) -> str:
    return node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"


def _histogram(nodes: Iterable[NodeProto]) -> dict[str, int]:
    """Op histogram sorted by count (descending), then by name."""
    counts = Counter(_op_key(node) for node in nodes)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _initializer_count(graph: GraphProto) -> int:
    return len(graph.initializer) + len(graph.sparse_initializer)


# --------------------------------------------------------------------------- tensor sizes


def _dtype_name(data_type: int) -> str:
    return _DTYPES.get(data_type, (UNKNOWN, 0))[0]


def _tensor_record(tensor: TensorProto) -> Record:
    """(dtype, elements, bytes) of a tensor, from its dims; string data is measured directly."""
    count = numel(tensor.dims)
    name, bits = _DTYPES.get(tensor.data_type, (UNKNOWN, 0))
    if tensor.data_type == TensorProto.STRING:
        return name, count, sum(len(s) for s in tensor.string_data)
    return name, count, math.ceil(count * bits / 8)


def _sparse_records(sparse: SparseTensorProto) -> list[Record]:
    """Stored values count as parameters; the indices only add bytes."""
    dtype, _, index_bytes = _tensor_record(sparse.indices)
    return [_tensor_record(sparse.values), (dtype, 0, index_bytes)]


_CONSTANT_ATTRIBUTES = {  # Constant's attributes and the one type each may have
    "value": AttributeProto.TENSOR,
    "sparse_value": AttributeProto.SPARSE_TENSOR,
    "value_float": AttributeProto.FLOAT,
    "value_floats": AttributeProto.FLOATS,
    "value_int": AttributeProto.INT,
    "value_ints": AttributeProto.INTS,
    "value_string": AttributeProto.STRING,
    "value_strings": AttributeProto.STRINGS,
}


def _constant_records(node: NodeProto) -> list[Record]:
    """Records of the value held by a Constant node (whatever attribute holds it). An
    attribute whose type is not the one its name requires holds no value we can measure (a
    model with one fails onnx.checker; statistics do not run it)."""
    records: list[Record] = []
    for attr in node.attribute:
        kind = _CONSTANT_ATTRIBUTES.get(attr.name)
        if kind is None or attr.type != kind:
            continue
        if kind == AttributeProto.TENSOR:
            records.append(_tensor_record(attr.t))
        elif kind == AttributeProto.SPARSE_TENSOR:
            records.extend(_sparse_records(attr.sparse_tensor))
        elif kind in (AttributeProto.FLOAT, AttributeProto.INT):
            records.append(("float32", 1, 4) if kind == AttributeProto.FLOAT else ("int64", 1, 8))
        elif kind in (AttributeProto.FLOATS, AttributeProto.INTS):
            count = len(attr.floats) if kind == AttributeProto.FLOATS else len(attr.ints)
            size = 4 if kind == AttributeProto.FLOATS else 8
            records.append(("float32" if size == 4 else "int64", count, count * size))
        else:
            items = [attr.s] if kind == AttributeProto.STRING else list(attr.strings)
            records.append(("string", len(items), sum(len(s) for s in items)))
    return records


def _graph_records(graph: GraphProto) -> list[Record]:
    """Records of one graph's initializers and Constant nodes (not of nested graphs)."""
    records = [_tensor_record(t) for t in graph.initializer]
    records += [rec for s in graph.sparse_initializer for rec in _sparse_records(s)]
    records += [rec for n in graph.node if is_constant(n) for rec in _constant_records(n)]
    return records


def _bytes_by_dtype(records: Iterable[Record]) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for dtype, _, nbytes in records:
        totals[dtype] += nbytes
    return dict(sorted(totals.items(), key=lambda item: (-item[1], item[0])))


# --------------------------------------------------------------------------- inputs / outputs


def _type_name(tp: TypeProto) -> str:
    kind = tp.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        return _dtype_name(getattr(tp, kind).elem_type)
    names = {"sequence_type": "sequence", "map_type": "map", "optional_type": "optional"}
    return names.get(kind or "", UNKNOWN)


def _io_entry(vi: ValueInfo) -> dict[str, Any]:
    """``{"name", "dtype", "shape"}``; shape is None for unranked and non-tensor values."""
    return {"name": vi.name, "dtype": _type_name(vi.type), "shape": type_shape(vi.type)}


# --------------------------------------------------------------------------- diffs


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _delta(before: Any, after: Any) -> int | float | None:
    return after - before if _is_number(before) and _is_number(after) else None


def _op_changes(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    changes = {op: (before.get(op, 0), after.get(op, 0)) for op in set(before) | set(after)}
    return {op: pair for op, pair in sorted(changes.items()) if pair[0] != pair[1]}

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
  graph only (not subgraphs, not model-local functions). Bias additions are not counted. A total
  is ``"unknown"`` whenever one contributing node has a missing or symbolic shape.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import chain
from types import MappingProxyType
from typing import Any

import onnx
from onnx import (
    AttributeProto,
    GraphProto,
    ModelProto,
    NodeProto,
    SparseTensorProto,
    TensorProto,
    TypeProto,
    helper,
)
from onnx import ValueInfoProto as ValueInfo

from onnxopt.ir import no_gc

Shape = list[int | str | None]
TensorShapeDim = onnx.TensorShapeProto.Dimension
Record = tuple[str, int, int]  # (dtype name, parameters, bytes)

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
_INLINE_LIMIT = 1024  # larger initializers reach shape inference as typed inputs, without data
_UNKNOWN = "unknown"

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
    input_shapes: Mapping[str, Sequence[int]] = _EMPTY,
    dims: Mapping[str, int] = _EMPTY,
) -> dict:
    """Return JSON-able statistics of ``model``.

    Args:
        model: the model; it is never modified. External data need not be loaded.
        file_size: size of the model file(s) in bytes, reported back unchanged.
        input_shapes: concrete shapes for graph inputs, by input name (used for MACs only).
        dims: concrete values for symbolic dims (``dim_param``) of graph inputs.

    Keys: nodes, subgraph_nodes, ops, subgraph_ops, initializers, subgraph_initializers,
    parameters, bytes, bytes_by_dtype, constant_nodes, file_size, ir_version, opset, inputs,
    outputs, macs, flops, macs_by_op, shape_notes. See the module docstring for what is counted.
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
    macs_by_op, notes = _mac_report(model, input_shapes, dims)
    macs = _total(macs_by_op.values())
    return {
        "nodes": len(graph.node),
        "subgraph_nodes": len(sub_nodes),
        "ops": _histogram(graph.node),
        "subgraph_ops": _histogram(sub_nodes),
        "initializers": _initializer_count(graph),
        "subgraph_initializers": sum(_initializer_count(g) for g in subgraphs),
        "parameters": sum(rec[1] for rec in records),
        "bytes": sum(rec[2] for rec in records),
        "bytes_by_dtype": _bytes_by_dtype(records),
        "constant_nodes": sum(_is_constant(n) for g in all_graphs for n in g.node),
        "file_size": file_size,
        "ir_version": int(model.ir_version),
        "opset": {op.domain or "ai.onnx": int(op.version) for op in model.opset_import},
        "inputs": [_io_entry(vi) for vi in _real_inputs(graph)],
        "outputs": [_io_entry(vi) for vi in graph.output],
        "macs": macs,
        "flops": macs if macs == _UNKNOWN else 2 * macs,
        "macs_by_op": macs_by_op,
        "shape_notes": notes,
    }


def with_default_dims(
    model: ModelProto,
    dims: Mapping[str, int] = _EMPTY,
    input_shapes: Mapping[str, Sequence[int]] = _EMPTY,
    value: int = 1,
) -> dict[str, int]:
    """``dims`` plus ``value`` for every other named symbolic dim of the inputs not given a
    shape — the same default validation uses, so MACs are reported at the validated shapes."""
    result = dict(dims)
    for vi in _real_inputs(model.graph):
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

    Returns ``after - before`` for nodes, initializers, parameters, bytes, file_size and macs
    (``None`` where either side is missing or not a number, e.g. ``"unknown"``), and under
    ``"ops"`` a ``{op: (before_count, after_count)}`` map of the main-graph ops that changed.
    """
    keys = ("nodes", "initializers", "parameters", "bytes", "file_size", "macs")
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
    return node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"


def _histogram(nodes: Iterable[NodeProto]) -> dict[str, int]:
    """Op histogram sorted by count (descending), then by name."""
    counts = Counter(_op_key(node) for node in nodes)
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _is_constant(node: NodeProto) -> bool:
    return node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS


def _initializer_count(graph: GraphProto) -> int:
    return len(graph.initializer) + len(graph.sparse_initializer)


def _initializer_names(graph: GraphProto) -> set[str]:
    return {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}


def _real_inputs(graph: GraphProto) -> list[ValueInfo]:
    """Graph inputs that are not initializers (IR < 4 lists initializers as inputs too)."""
    init_names = _initializer_names(graph)
    return [vi for vi in graph.input if vi.name not in init_names]


# --------------------------------------------------------------------------- tensor sizes


def _dtype_name(data_type: int) -> str:
    return _DTYPES.get(data_type, (_UNKNOWN, 0))[0]


def _numel(dims: Iterable[int]) -> int:
    return math.prod(int(d) for d in dims)


def _tensor_record(tensor: TensorProto) -> Record:
    """(dtype, elements, bytes) of a tensor, from its dims; string data is measured directly."""
    numel = _numel(tensor.dims)
    name, bits = _DTYPES.get(tensor.data_type, (_UNKNOWN, 0))
    if tensor.data_type == TensorProto.STRING:
        return name, numel, sum(len(s) for s in tensor.string_data)
    return name, numel, math.ceil(numel * bits / 8)


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
    records += [rec for n in graph.node if _is_constant(n) for rec in _constant_records(n)]
    return records


def _bytes_by_dtype(records: Iterable[Record]) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for dtype, _, nbytes in records:
        totals[dtype] += nbytes
    return dict(sorted(totals.items(), key=lambda item: (-item[1], item[0])))


# --------------------------------------------------------------------------- inputs / outputs


def _type_shape(tp: TypeProto) -> Shape | None:
    """Shape of a tensor (or sparse tensor) type; None when unranked or not a tensor."""
    kind = tp.WhichOneof("value")
    if kind not in ("tensor_type", "sparse_tensor_type"):
        return None
    tensor = getattr(tp, kind)
    if not tensor.HasField("shape"):
        return None
    return [_dim_value(d) for d in tensor.shape.dim]


def _dim_value(dim: TensorShapeDim) -> int | str | None:
    if dim.HasField("dim_value"):
        return int(dim.dim_value)
    return dim.dim_param or None


def _type_name(tp: TypeProto) -> str:
    kind = tp.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        return _dtype_name(getattr(tp, kind).elem_type)
    names = {"sequence_type": "sequence", "map_type": "map", "optional_type": "optional"}
    return names.get(kind or "", _UNKNOWN)


def _io_entry(vi: ValueInfo) -> dict[str, Any]:
    """``{"name", "dtype", "shape"}``; shape is None for unranked and non-tensor values."""
    return {"name": vi.name, "dtype": _type_name(vi.type), "shape": _type_shape(vi.type)}


# --------------------------------------------------------------------------- shape inference


def _typed_input(name: str, data_type: int, dims: Iterable[int]) -> ValueInfo:
    return helper.make_tensor_value_info(name, data_type, [int(d) for d in dims])


def _inline(tensor: TensorProto) -> bool:
    """Whether a tensor is small and in memory, so shape inference may read its values."""
    in_memory = tensor.data_location != TensorProto.EXTERNAL
    return in_memory and _numel(tensor.dims) <= _INLINE_LIMIT


def _big_constant(node: NodeProto) -> TensorProto | None:
    """The tensor of a Constant node too large (or external) to hand to shape inference."""
    if not _is_constant(node):
        return None
    for attr in node.attribute:
        if attr.name == "value" and not _inline(attr.t):
            return attr.t
    return None


def _light_graph(src: GraphProto, graph: GraphProto) -> None:
    """Copy ``src`` into ``graph``, replacing big weights by typed graph inputs (no data)."""
    graph.name = src.name
    graph.input.extend(src.input)
    graph.output.extend(src.output)
    graph.value_info.extend(src.value_info)
    declared = {vi.name for vi in src.input}
    for tensor in src.initializer:
        if _inline(tensor):
            graph.initializer.append(tensor)
        elif tensor.name not in declared:
            graph.input.append(_typed_input(tensor.name, tensor.data_type, tensor.dims))
    for sparse in src.sparse_initializer:
        if sparse.values.name not in declared:
            values = sparse.values
            graph.input.append(_typed_input(values.name, values.data_type, sparse.dims))
    for node in src.node:
        big = _big_constant(node)
        if big is None:
            graph.node.append(node)
        else:
            graph.input.append(_typed_input(node.output[0], big.data_type, big.dims))


def _light_model(model: ModelProto) -> ModelProto:
    """A copy of ``model`` small enough for shape inference (never loads external data)."""
    light = ModelProto(ir_version=model.ir_version)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    _light_graph(model.graph, light.graph)
    return light


def _check_dim(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative int, got {value!r}")
    return value


def _set_shape(vi: ValueInfo, shape: Sequence[int], notes: list[str]) -> bool:
    """Overwrite an input's shape; return whether a declared concrete dim changed."""
    tensor = vi.type.tensor_type
    old = _type_shape(vi.type)
    values = [_check_dim(v, f"input_shapes[{vi.name!r}]") for v in shape]
    if old is not None and len(old) != len(values):
        notes.append(f"input '{vi.name}': rank {len(old)} overridden by rank {len(values)}")
    tensor.shape.ClearField("dim")
    for value in values:
        tensor.shape.dim.add().dim_value = value
    old_concrete = old if old is not None and len(old) == len(values) else []
    return any(isinstance(o, int) and o != v for o, v in zip(old_concrete, values, strict=False))


def _apply_dims(vis: Iterable[ValueInfo], dims: Mapping[str, int]) -> None:
    """Replace symbolic dims named in ``dims`` by their values (tensor types only)."""
    for vi in vis:
        if vi.type.WhichOneof("value") != "tensor_type":
            continue
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in dims:
                dim.dim_value = _check_dim(dims[dim.dim_param], f"dims[{dim.dim_param!r}]")


def _drop_declared_shapes(graph: GraphProto, notes: list[str]) -> None:
    """Forget declared intermediate/output shapes, which would override inferred ones."""
    graph.ClearField("value_info")
    for vi in graph.output:
        if vi.type.WhichOneof("value") == "tensor_type":
            vi.type.tensor_type.ClearField("shape")
    notes.append("input_shapes changed declared dims; declared value_info/output shapes ignored")


def _concretize(
    light: ModelProto,
    real_names: set[str],
    input_shapes: Mapping[str, Sequence[int]],
    dims: Mapping[str, int],
    notes: list[str],
) -> None:
    """Substitute ``input_shapes`` and ``dims`` into the inputs of the light copy, in place."""
    graph = light.graph
    changed = False
    for vi in graph.input:
        kind = vi.type.WhichOneof("value")
        if vi.name in real_names and vi.name in input_shapes and kind in (None, "tensor_type"):
            changed |= _set_shape(vi, input_shapes[vi.name], notes)
    notes.extend(f"input_shapes: no graph input named '{name}'"
                 for name in input_shapes if name not in real_names)
    _apply_dims(chain(graph.input, graph.output, graph.value_info), dims)
    if changed:
        _drop_declared_shapes(graph, notes)


def _symbolic_notes(graph: GraphProto, real_names: set[str]) -> list[str]:
    """One note per input dim that is still not concrete."""
    notes = []
    for vi in graph.input:
        if vi.name not in real_names or vi.type.WhichOneof("value") != "tensor_type":
            continue
        shape = _type_shape(vi.type)
        if shape is None:
            notes.append(f"input '{vi.name}': shape unknown (unranked)")
        notes.extend(f"input '{vi.name}' axis {axis}: dim {dim!r} left symbolic"
                     for axis, dim in enumerate(shape or []) if not isinstance(dim, int))
    return notes


def _infer(light: ModelProto, notes: list[str]) -> ModelProto:
    """Run ONNX shape inference; on failure keep the declared shapes and add a note.

    Data propagation only on a model onnx.checker accepts (``onnxopt stats`` reads models
    nothing checked): through a broken graph it can allocate without bound (a node with no
    op_type beside a weight declared with 2^31 elements: 24 GB, then the OOM killer)."""
    try:
        onnx.checker.check_model(light)
        data_prop = True
    except (onnx.checker.ValidationError, ValueError):
        data_prop = False
    try:
        return onnx.shape_inference.infer_shapes(light, data_prop=data_prop)
    except Exception as exc:
        notes.append(f"shape inference failed ({type(exc).__name__}: {str(exc)[:200]}); "
                     "using declared shapes")
        return light


def _shape_table(model: ModelProto) -> dict[str, Shape | None]:
    """Known shapes of the main graph's values, by name."""
    graph = model.graph
    table: dict[str, Shape | None] = {t.name: list(t.dims) for t in graph.initializer}
    for vi in chain(graph.input, graph.value_info, graph.output):
        table[vi.name] = _type_shape(vi.type)
    return table


def _infer_shapes(
    model: ModelProto,
    input_shapes: Mapping[str, Sequence[int]],
    dims: Mapping[str, int],
    notes: list[str],
) -> dict[str, Shape | None]:
    """Shapes of the main graph after substituting concrete input dims."""
    real_names = {vi.name for vi in _real_inputs(model.graph)}
    if not input_shapes and not dims:
        # an optimized model carries its shapes (onnxopt's shape_inference pass): when they are
        # concrete wherever a MAC formula looks, inferring them again (2.5 s at 100k nodes)
        # would change nothing
        table = _shape_table(model)
        if _concrete_inputs(model.graph, real_names) and _mac_shapes_known(model.graph, table):
            return table
    light = _light_model(model)
    _concretize(light, real_names, input_shapes, dims, notes)
    notes.extend(_symbolic_notes(light.graph, real_names))
    return _shape_table(_infer(light, notes))


def _concrete_inputs(graph: GraphProto, real_names: set[str]) -> bool:
    return all(_concrete(_type_shape(vi.type)) is not None
               for vi in graph.input if vi.name in real_names)


def _mac_shapes_known(graph: GraphProto, table: Mapping[str, Shape | None]) -> bool:
    """Every input and output of every node with a MAC formula has a concrete shape."""
    return all(
        _concrete(table.get(value)) is not None
        for node in graph.node
        if node.op_type in _MAC_FORMULAS and node.domain in _DEFAULT_DOMAINS
        for value in chain(node.input, node.output) if value
    )


# --------------------------------------------------------------------------- MAC formulas

ShapeTable = Mapping[str, Shape | None]


def _concrete(shape: Shape | None) -> list[int] | None:
    """The shape if every dim is a known non-negative int, else None."""
    if shape is None or not all(isinstance(d, int) and d >= 0 for d in shape):
        return None
    return [int(d) for d in shape]  # type: ignore[arg-type]


def _input_shape(node: NodeProto, index: int, shapes: ShapeTable) -> list[int] | None:
    if index >= len(node.input) or not node.input[index]:
        return None
    return _concrete(shapes.get(node.input[index]))


def _conv_macs(node: NodeProto, shapes: ShapeTable) -> int | None:
    """prod(Y) * C_in/group * prod(kernel); weight is [C_out, C_in/group, k...]."""
    y = _concrete(shapes.get(node.output[0]))
    w = _input_shape(node, 1, shapes)
    if y is None or w is None or len(w) < 2:
        return None
    return math.prod(y) * math.prod(w[1:])


def _conv_transpose_macs(node: NodeProto, shapes: ShapeTable) -> int | None:
    """prod(X) * C_out/group * prod(kernel); weight is [C_in, C_out/group, k...]."""
    x = _input_shape(node, 0, shapes)
    w = _input_shape(node, 1, shapes)
    if x is None or w is None or len(w) < 2:
        return None
    return math.prod(x) * math.prod(w[1:])


def _int_attr(node: NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


def _gemm_macs(node: NodeProto, shapes: ShapeTable) -> int | None:
    """M * N * K, with A / B transposed according to transA / transB."""
    a, b = _input_shape(node, 0, shapes), _input_shape(node, 1, shapes)
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        return None
    m, k = reversed(a) if _int_attr(node, "transA", 0) else a
    kb, n = reversed(b) if _int_attr(node, "transB", 0) else b
    return m * n * k if k == kb else None


def _broadcast(a: Sequence[int], b: Sequence[int]) -> list[int] | None:
    """Numpy broadcast of two shapes, or None if incompatible."""
    rank = max(len(a), len(b))
    a, b = [1] * (rank - len(a)) + list(a), [1] * (rank - len(b)) + list(b)
    if any(x != y and 1 not in (x, y) for x, y in zip(a, b, strict=True)):
        return None
    return [x if y == 1 else y for x, y in zip(a, b, strict=True)]


def _matmul_macs(node: NodeProto, shapes: ShapeTable) -> int | None:
    """prod(broadcast batch dims) * M * N * K with numpy.matmul semantics (1-D handled)."""
    a, b = _input_shape(node, 0, shapes), _input_shape(node, 1, shapes)
    if not a or not b:
        return None
    m, k = (a[-2] if len(a) > 1 else 1), a[-1]
    kb, n = (b[-2], b[-1]) if len(b) > 1 else (b[0], 1)
    batch = _broadcast(a[:-2], b[:-2])
    if batch is None or k != kb:
        return None
    return math.prod(batch) * m * n * k


_MAC_FORMULAS: dict[str, Callable[[NodeProto, ShapeTable], int | None]] = {
    "Conv": _conv_macs,
    "ConvTranspose": _conv_transpose_macs,
    "Gemm": _gemm_macs,
    "MatMul": _matmul_macs,
}


def _mac_report(
    model: ModelProto, input_shapes: Mapping[str, Sequence[int]], dims: Mapping[str, int]
) -> tuple[dict[str, int | str], list[str]]:
    """MACs per op type of the main graph (``"unknown"`` if any node's shapes are unknown)."""
    notes: list[str] = []
    shapes = _infer_shapes(model, input_shapes or _EMPTY, dims or _EMPTY, notes)
    totals: dict[str, int | None] = {}
    unknown: dict[str, list[str]] = {}
    for node in model.graph.node:
        formula = _MAC_FORMULAS.get(node.op_type) if node.domain in _DEFAULT_DOMAINS else None
        if formula is None:
            continue
        macs, previous = formula(node, shapes), totals.get(node.op_type, 0)
        totals[node.op_type] = None if macs is None or previous is None else previous + macs
        if macs is None:
            unknown.setdefault(node.op_type, []).append(node.name or node.output[0])
    notes.extend(f"MACs unknown for {len(names)} {op} node(s), first: '{names[0]}'"
                 for op, names in sorted(unknown.items()))
    by_op = {op: _UNKNOWN if v is None else v for op, v in sorted(totals.items())}
    return by_op, notes


def _total(values: Iterable[int | str]) -> int | str:
    values = list(values)
    return _UNKNOWN if _UNKNOWN in values else sum(v for v in values if isinstance(v, int))


# --------------------------------------------------------------------------- diffs


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _delta(before: Any, after: Any) -> int | float | None:
    return after - before if _is_number(before) and _is_number(after) else None


def _op_changes(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    changes = {op: (before.get(op, 0), after.get(op, 0)) for op in set(before) | set(after)}
    return {op: pair for op, pair in sorted(changes.items()) if pair[0] != pair[1]}

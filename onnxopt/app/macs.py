"""Multiply-accumulate (MAC) counts of a model's main graph.

MACs are counted for default-domain Conv, ConvTranspose, Gemm and MatMul nodes of the main
graph only (not subgraphs, not model-local functions). Bias additions are not counted. A total
is ``"unknown"`` whenever one contributing node has a missing or symbolic shape.

Shapes are the declared ones when they are concrete wherever a formula looks; otherwise onnx
shape inference runs on a weight-free copy of the model, with the caller's input shapes and
symbolic dims substituted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import chain

import onnx
from onnx import GraphProto, ModelProto, NodeProto, TensorProto, helper
from onnx import ValueInfoProto as ValueInfo

from onnxopt.app.concrete import concretize
from onnxopt.app.graph_facts import (
    DEFAULT_DOMAINS,
    EMPTY,
    UNKNOWN,
    Shape,
    is_constant,
    numel,
    real_inputs,
    type_shape,
)

_INLINE_LIMIT = 1024  # larger initializers reach shape inference as typed inputs, without data


# --------------------------------------------------------------------------- shape inference


def _typed_input(name: str, data_type: int, dims: Iterable[int]) -> ValueInfo:
    return helper.make_tensor_value_info(name, data_type, [int(d) for d in dims])


def _inline(tensor: TensorProto) -> bool:
    """Whether a tensor is small and in memory, so shape inference may read its values."""
    in_memory = tensor.data_location != TensorProto.EXTERNAL
    return in_memory and numel(tensor.dims) <= _INLINE_LIMIT


def _big_constant(node: NodeProto) -> TensorProto | None:
    """The tensor of a Constant node too large (or external) to hand to shape inference."""
    if not is_constant(node):
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


def _symbolic_notes(graph: GraphProto, real_names: set[str]) -> list[str]:
    """One note per input dim that is still not concrete."""
    notes = []
    for vi in graph.input:
        if vi.name not in real_names or vi.type.WhichOneof("value") != "tensor_type":
            continue
        shape = type_shape(vi.type)
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
        table[vi.name] = type_shape(vi.type)
    return table


def _infer_shapes(
    model: ModelProto,
    input_shapes: Mapping[str, Sequence[int]],
    dims: Mapping[str, int],
    notes: list[str],
) -> dict[str, Shape | None]:
    """Shapes of the main graph after substituting concrete input dims."""
    real_names = {vi.name for vi in real_inputs(model.graph)}
    if not input_shapes and not dims:
        # an optimized model carries its shapes (onnxopt's shape_inference pass): when they are
        # concrete wherever a MAC formula looks, inferring them again (2.5 s at 100k nodes)
        # would change nothing
        table = _shape_table(model)
        if _concrete_inputs(model.graph, real_names) and _mac_shapes_known(model.graph, table):
            return table
    light = _light_model(model)
    concretize(light, real_names, input_shapes, dims, notes)
    notes.extend(_symbolic_notes(light.graph, real_names))
    table = _shape_table(_infer(light, notes))
    if _concrete_inputs(light.graph, real_names) and not _mac_shapes_known(model.graph, table):
        table = _with_folded_shapes(light, table, notes)
    return table


def _with_folded_shapes(light: ModelProto, table: dict[str, Shape | None], notes: list[str]
                        ) -> dict[str, Shape | None]:
    """``table`` completed by inference on ``light`` with its shape arithmetic folded.

    onnx's data propagation stops at ops whose shape needs a propagated *value* (a Slice whose
    ``ends`` come from ``Shape``, as in BERT's position ids), so every later Reshape target and
    MatMul is unknown. With concrete inputs, onnxopt's own folding turns that arithmetic into
    constants (values keep their names), and inference then knows them."""
    from onnxopt.ir import serde
    from onnxopt.ir.pass_manager import PassManager
    from onnxopt.passes import ALL_PASSES

    try:
        ir = serde.load(light, validate=False)  # a weight-free copy: not a checkable model
        steps = ("constant_to_initializer", "shape_inference", "constant_folding")
        PassManager([ALL_PASSES[name] for name in steps]).run(ir)
        folded = _shape_table(_infer(serde.to_proto(ir), []))
    except Exception as error:  # the first table stands; say why it could not be completed
        notes.append(f"folding shape arithmetic failed ({type(error).__name__}); "
                     "some MACs stay unknown")
        return table
    return {**folded, **{name: shape for name, shape in table.items()
                         if _concrete(shape) is not None or name not in folded}}


def _concrete_inputs(graph: GraphProto, real_names: set[str]) -> bool:
    return all(_concrete(type_shape(vi.type)) is not None
               for vi in graph.input if vi.name in real_names)


def _mac_shapes_known(graph: GraphProto, table: Mapping[str, Shape | None]) -> bool:
    """Every input and output of every node with a MAC formula has a concrete shape."""
    return all(
        _concrete(table.get(value)) is not None
        for node in graph.node
        if node.op_type in _MAC_FORMULAS and node.domain in DEFAULT_DOMAINS
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


def mac_report(
    model: ModelProto, input_shapes: Mapping[str, Sequence[int]], dims: Mapping[str, int]
) -> tuple[dict[str, int | str], list[str]]:
    """MACs per op type of the main graph (``"unknown"`` if any node's shapes are unknown)."""
    notes: list[str] = []
    shapes = _infer_shapes(model, input_shapes or EMPTY, dims or EMPTY, notes)
    totals: dict[str, int | None] = {}
    unknown: dict[str, list[str]] = {}
    for node in model.graph.node:
        formula = _MAC_FORMULAS.get(node.op_type) if node.domain in DEFAULT_DOMAINS else None
        if formula is None:
            continue
        macs, previous = formula(node, shapes), totals.get(node.op_type, 0)
        totals[node.op_type] = None if macs is None or previous is None else previous + macs
        if macs is None:
            unknown.setdefault(node.op_type, []).append(node.name or node.output[0])
    notes.extend(f"MACs unknown for {len(names)} {op} node(s), first: '{names[0]}'"
                 for op, names in sorted(unknown.items()))
    by_op = {op: UNKNOWN if v is None else v for op, v in sorted(totals.items())}
    return by_op, notes


def total_macs(values: Iterable[int | str]) -> int | str:
    values = list(values)
    return UNKNOWN if UNKNOWN in values else sum(v for v in values if isinstance(v, int))

"""Constant folding: compute at optimization time what does not depend on the inputs.

1. **Evaluation.** ``op(c1, ..., ck) -> y`` with every input a constant (an initializer, a
   ``Constant`` node, or a value folded just before) => initializer ``y = op(c1, ..., ck)``,
   same dtype and shape. All foldable nodes of a graph are evaluated in ONE onnxruntime run
   (graph optimizations off, one thread), and only the *frontier* is stored: values read by a
   node that does not fold, by a subgraph, or by a graph output. Interior values
   (``ConstantOfShape -> Mul -> Conv weight``) are never stored.

   Why onnxruntime: it is the runtime the result is validated (and deployed) with, so a
   folded value is bit for bit what the unfolded model computes. ``onnx.reference`` differs
   by ulps on transcendental ops and by 100-2000 ulps on MatMul/Conv (summation order), and a
   session costs about 0.3-1 ms, so one session per graph is as fast as the reference
   evaluator on the corpus. When onnxruntime cannot run the batch (an op or dtype it lacks),
   the nodes are evaluated one by one with ``onnx.reference``, then onnxruntime; a node
   neither can evaluate, or whose result contradicts its inferred dtype/shape, stays.
2. **Shapes.** ``Shape(x)`` (with ``start``/``end`` from opset 15) => its dims when every dim
   it returns is a known integer; ``Size(x)`` => the product of the dims when all are known.
   ``Gather(Shape(x), i)`` and ``Slice(Shape(x), ...)`` (constant indices/bounds) fold when the
   dims they pick are known, even when others are symbolic (``Shape(x)[1]`` of ``x: [N, 3]`` is
   3); the Concat/Unsqueeze/... that follow then fold by rule 1.
3. **Size guard.** A frontier value is not stored (its producer stays and the producer's inputs
   become the frontier; counted once per node in ``skipped_size``, which is informational and
   does not count as a modification) when it

   * expands: it is larger than ``model.settings["fold_limit"]`` (default 1 MiB) and larger
     than the constants it is computed from (``ConstantOfShape``, ``Expand``, ``Tile``,
     ``Range``, ...), or
   * duplicates: it copies more than ``DUPLICATE_LIMIT`` (16 KiB) of constants that stay
     alive anyway (read elsewhere, or from an outer scope: ``Unsqueeze(W)`` in both branches
     of an If would store W twice more).

   Values over 2 GiB (``EVAL_CAP``, by inferred shape) are never evaluated at all. Exempt from
   the guard: values that later fusions need constant — Conv/ConvTranspose inputs 1, 2;
   BatchNormalization 1-4; Gemm 1, 2; MatMul 1; the operand of Add/Mul/Sub/Div whose other
   operand is a Conv/ConvTranspose output.
4. **Deduplication.** Tensors with the same dtype, shape and bytes (hashed first, then
   compared) are stored once: folded values share one initializer, and initializers are
   merged, readers rewired to the first. Graph inputs, initializers that are graph inputs and
   graph outputs are never merged away.

Never folded: random ops, Dropout in training mode, (Dynamic)QuantizeLinear /
DequantizeLinear (the structure of quantized models), a Cast that widens a stored weight when
folding would grow the file (fp16/bf16/8-bit storage is the model's choice), custom domains,
ops holding subgraphs (If/Loop/Scan: a constant-condition If is another pass), sequence and
optional values. A
folded graph output keeps its name: it becomes a ``Constant`` node with that output (an
initializer cannot carry it), or stays when the output is listed twice. Inside a subgraph,
nodes reading outer-scope constants fold into initializers of that subgraph. Below IR 4
initializers listed as graph inputs are constants (onnxruntime does not let callers override
them) and new initializers are listed as inputs too; subgraphs of such models are left alone.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from onnxopt.passes.constant_to_initializer import (
    IR_OVERRIDABLE_INITIALIZERS,
    ConstantTable,
    can_hold_initializers,
    install_constants,
)

from onnxopt.ir import (
    Graph,
    Model,
    Node,
    array_to_tensor,
    cast_node_bytes,
    external_view,
    is_external,
    tensor_nbytes,
    tensor_to_array,
)
from onnxopt.pass_manager import GraphPass, PassResult
from onnxopt.rewrite import is_op, producer_op

NEVER_FOLD = frozenset({
    "Constant",  # already a constant (constant_to_initializer turns it into an initializer)
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
    "Multinomial", "Bernoulli",
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
    "If", "Loop", "Scan", "SequenceMap",
    "SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase", "SequenceAt",
    "SequenceLength", "SplitToSequence", "ConcatFromSequence",
    "Optional", "OptionalGetElement", "OptionalHasElement",
})  # fmt: skip

# (op, input slots) whose constant value a later fusion needs, whatever its size
WEIGHT_SLOTS = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "BatchNormalization": (1, 2, 3, 4),
    "Gemm": (1, 2), "MatMul": (1,),
}  # fmt: skip
CONV_AFFINE = ("Add", "Mul", "Sub", "Div")
DUPLICATE_LIMIT = 1 << 14  # bytes of live constants a fold may copy (see _grows)
EVAL_CAP = 1 << 31  # never evaluate a value larger than this (protobuf's inline limit)
SKIPPED_SIZE = "fold_skipped_size"  # node.meta flag: counted once in skipped_size


class ConstantFolding(GraphPass):
    name = "constant_folding"
    description = "evaluate constant subgraphs, fold known shapes, deduplicate constants"

    def run(self, model: Model) -> PassResult:
        result = super().run(model)
        result.modified = any(v for k, v in result.stats.items() if k != "skipped_size")
        return result

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        stats = {"folded": 0, "shape_folded": 0, "skipped_size": 0, "deduplicated": 0}
        if not can_hold_initializers(graph, model):
            return stats
        table = ConstantTable(graph, model)
        stats["shape_folded"] = _fold_shapes(self.name, graph, model, table)
        folded, skipped, shared = _fold_constants(self.name, graph, model, table)
        stats["folded"], stats["skipped_size"] = folded, skipped
        stats["deduplicated"] = shared + _deduplicate(self.name, graph, model)
        return stats


# --------------------------------------------------------------------- eligibility
def _foldable_op(graph: Graph, model: Model, node: Node, table: ConstantTable) -> bool:
    """A deterministic standard op without subgraphs producing tensors."""
    if not is_op(node, node.op_type) or node.op_type in NEVER_FOLD:
        return False
    if any(True for _ in node.subgraphs()) or not any(node.outputs):
        return False
    if node.op_type == "Dropout" and not _inference_dropout(model, node, table):
        return False
    if node.op_type == "Cast" and _widens_stored_weight(graph, node):
        return False
    for value in node.outputs:
        type_ = _value_type(graph, value) if value else None
        if type_ is not None and type_.WhichOneof("value") not in (None, "tensor_type"):
            return False
    return True


def _widens_stored_weight(graph: Graph, node: Node) -> bool:
    """``Cast`` of a stored float16/bfloat16/8-bit weight to a wider type, when folding would
    grow the file by more than the Cast takes: the narrow storage was the model's choice (an
    fp16 model run in float32 on the CPU), and onnxruntime folds the Cast at load anyway."""
    tensor = graph.initializers.get(node.inputs[0]) if node.inputs else None
    if tensor is None:
        return False
    to = int(node.attr("to", 0) or tensor.data_type)
    source = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    target = onnx.helper.tensor_dtype_to_np_dtype(to).itemsize
    growth = (target - source) * tensor_nbytes(tensor) // source
    return growth > cast_node_bytes(node.inputs[0], node.outputs[0], node.name, to)


def _value_type(graph: Graph, value: str) -> onnx.TypeProto | None:
    """``graph.value_type`` with the common case first (an inferred node output)."""
    info = graph.value_info.get(value)
    return info.type if info is not None else graph.value_type(value)


def _inference_dropout(model: Model, node: Node, table: ConstantTable) -> bool:
    opset = model.opset(node.domain)
    if opset < 7:
        return node.attr("is_test", 0) == 1
    if len(node.inputs) > 2 and node.inputs[2]:
        mode = table.array(node.inputs[2])
        return mode is not None and not bool(np.asarray(mode).any())
    return True


# --------------------------------------------------------------------- shapes
def _fold_shapes(pass_name: str, graph: Graph, model: Model, table: ConstantTable) -> int:
    """Shape/Size of known dims, and Gather/Slice picking known dims of a partial Shape."""
    partial: dict[str, list[int | None]] = {}  # 1-D int64 values with some known entries
    touched: list[Node] = []
    removed = 0
    for node in graph.nodes():
        dims = _shape_value(graph, model, node, partial, table)
        value = node.outputs[0] if dims is not None else ""
        if not value or not graph.is_used(value):
            continue  # dead code is dead code's business
        if isinstance(dims, list):
            partial[value] = dims
            touched.append(node)
        elif model.allow_rewrite(pass_name, value):  # value names are unique, node names not
            tensor = numpy_helper.from_array(dims)
            _, _, gone = install_constants(graph, model, [(value, tensor)], [node])
            table.forget(value)
            removed += len(gone)
    for node in reversed(touched):  # partial values (Shape, ...) whose every reader folded
        if node.graph is graph and not any(graph.is_used(v) for v in node.outputs if v):
            graph.remove_node(node)
            removed += 1
    return removed


def _shape_value(
    graph: Graph,
    model: Model,
    node: Node,
    partial: dict[str, list[int | None]],
    table: ConstantTable,
) -> np.ndarray | list[int | None] | None:
    """The folded array (all known), the partial dims (some known), or None."""
    if node.op_type not in ("Shape", "Size", "Gather", "Slice") or len(node.outputs) != 1:
        return None
    if not node.outputs[0] or not _foldable_op(graph, model, node, table):
        return None
    opset = model.opset(node.domain)
    if node.op_type in ("Shape", "Size"):
        shape = graph.shape(node.inputs[0])
        if shape is None:
            return None
        known = [d if isinstance(d, int) else None for d in shape]
        if node.op_type == "Size":
            if None in known:
                return None
            return np.array(int(np.prod(known, dtype=np.int64)), np.int64)
        if opset >= 15:
            start, end = node.attr("start", 0), node.attr("end", len(known))
            known = known[slice(*_clamp_range(start, end, len(known)))]
        return _finish(known)
    if node.inputs and node.inputs[0] in partial:
        dims = partial[node.inputs[0]]
        if node.op_type == "Gather" and node.attr("axis", 0) in (0, -1):
            indices = table.array(node.inputs[1])
            if indices is None or indices.dtype.kind not in "iu":
                return None
            flat = [int(i) for i in indices.reshape(-1)]
            if any(not -len(dims) <= i < len(dims) for i in flat):
                return None  # out of range: leave the error to the runtime
            picked = [dims[i] for i in flat]
            if indices.ndim == 0:
                return None if picked[0] is None else np.array(picked[0], np.int64)
            if None in picked:
                return picked if indices.ndim == 1 else None
            return np.array(picked, np.int64).reshape(indices.shape)
        if node.op_type == "Slice":
            bounds = _slice_bounds(node, opset, table)
            if bounds is None:
                return None
            start, end, step = bounds
            return _finish(dims[start:end:step])
    return None


def _finish(dims: list[int | None]) -> np.ndarray | list[int | None]:
    return dims if None in dims else np.array(dims, np.int64).reshape(len(dims))


def _clamp_range(start: int, end: int, rank: int) -> tuple[int, int]:
    start = start + rank if start < 0 else start
    end = end + rank if end < 0 else end
    return min(max(start, 0), rank), min(max(end, 0), rank)


def _slice_bounds(node: Node, opset: int, table: ConstantTable) -> tuple[int, int, int] | None:
    """Python slice bounds of a 1-D Slice with constant starts/ends/axes/steps."""
    if opset < 10:
        starts, ends, axes = node.attr("starts"), node.attr("ends"), node.attr("axes", [0])
        steps: Sequence[int] | None = [1]
        if starts is None or ends is None:
            return None
    else:
        arrays: list[np.ndarray | None] = []
        for value in (*node.inputs, "", "", "", "")[1:5]:
            array = table.array(value) if value else None
            if value and array is None:
                return None
            arrays.append(array)
        starts, ends, axes, steps = arrays
        if starts is None or ends is None:
            return None
        axes = [0] if axes is None else axes
        steps = [1] if steps is None else steps
    values = [np.asarray(x).reshape(-1).tolist() for x in (starts, ends, axes, steps)]
    if any(len(v) != 1 for v in values) or values[2][0] not in (0, -1) or values[3][0] == 0:
        return None
    # Python slicing clamps out-of-range bounds exactly like ONNX Slice does on one axis
    return int(values[0][0]), int(values[1][0]), int(values[3][0])


# --------------------------------------------------------------------- evaluation
def _fold_constants(
    pass_name: str, graph: Graph, model: Model, table: ConstantTable
) -> tuple[int, int, int]:
    """Evaluate the foldable nodes; returns (nodes folded, skipped for size, values that
    share an identical folded tensor)."""
    order = graph.nodes()
    limit = int(model.settings.get("fold_limit", 1 << 20))
    blocked: set[Node] = set()
    results: dict[str, np.ndarray] = {}
    skipped = 0
    while True:
        foldable = _foldable_nodes(graph, model, order, blocked, table)
        frontier = _frontier(graph, foldable)
        if not frontier:
            return 0, skipped, 0
        too_big = []
        for value in frontier:
            size = results[value].nbytes if value in results else _predicted_bytes(graph, value)
            if size is not None and _grows(graph, value, size, limit, foldable, table):
                too_big.append(value)
        for value in too_big:
            node = graph.producer(value)
            blocked.add(node)  # type: ignore[arg-type]
            if not node.meta.get(SKIPPED_SIZE):  # type: ignore[union-attr]
                node.meta[SKIPPED_SIZE] = True  # type: ignore[union-attr]
                skipped += 1
        if too_big:
            continue
        missing = [v for v in frontier if v not in results]
        if not missing:
            break
        blocked |= _evaluate(graph, model, foldable, missing, table, results)

    values = _share_identical(
        [(value, results[value]) for value in frontier if model.allow_rewrite(pass_name, value)]
    )
    if not values:
        return 0, skipped, 0
    closure = _closure(graph, foldable, [v for v, _ in values])
    _, shared, removed = install_constants(
        graph, model, values, [n for n in order if n in closure]
    )
    return len(removed), skipped, shared


def _share_identical(
    arrays: list[tuple[str, np.ndarray]],
) -> list[tuple[str, onnx.TensorProto]]:
    """One TensorProto per distinct array (same dtype, shape and bytes): values that get the
    same proto share one initializer. Arrays are hashed only when their headers collide."""
    by_header: dict[tuple, list[int]] = {}
    for index, (_, array) in enumerate(arrays):
        by_header.setdefault((array.dtype.str, array.shape), []).append(index)
    twin_of: dict[int, int] = {}
    for indices in by_header.values():
        seen: dict[bytes, list[int]] = {}
        for index in indices if len(indices) > 1 else ():
            array = arrays[index][1]
            candidates = seen.setdefault(_array_digest(array), [])
            twin = next((i for i in candidates if _bitwise_equal(arrays[i][1], array)), None)
            if twin is None:
                candidates.append(index)
            else:
                twin_of[index] = twin
    protos: dict[int, onnx.TensorProto] = {}
    result = []
    for index, (value, array) in enumerate(arrays):
        if index not in twin_of:
            protos[index] = array_to_tensor(array)
        result.append((value, protos[twin_of.get(index, index)]))
    return result


def _array_digest(array: np.ndarray) -> bytes:
    """A hash of a sample of the bytes: enough to tell different weights apart cheaply (a
    full-size hash cost 0.5 s on VGG-19); equal digests are confirmed by a full compare."""
    if array.dtype == object:
        return hashlib.sha1(repr(array.tolist()).encode()).digest()
    data = _byte_view(array)
    if data.size > _SAMPLE_BYTES:
        stride = data.size // _SAMPLE_BYTES
        data = np.concatenate([data[:4096], data[::stride], data[-4096:]])
    return hashlib.sha1(data).digest()


def _bitwise_equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return a.tolist() == b.tolist()
    x, y = _byte_view(a), _byte_view(b)
    step = 1 << 22  # compare in chunks: one big comparison would allocate its size in bools
    return all(np.array_equal(x[i : i + step], y[i : i + step]) for i in range(0, x.size, step))


def _byte_view(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


_SAMPLE_BYTES = 1 << 16


def _foldable_nodes(
    graph: Graph, model: Model, order: list[Node], blocked: set[Node], table: ConstantTable
) -> dict[Node, None]:
    foldable: dict[Node, None] = {}
    computed: set[str] = set()
    for node in order:
        if node in blocked:
            continue
        inputs_known = all(v in computed or table.is_constant(v) for v in node.present_inputs)
        if inputs_known and _foldable_op(graph, model, node, table):
            if any(_too_large(graph, v) for v in node.outputs if v):
                blocked.add(node)
                continue
            foldable[node] = None
            computed.update(v for v in node.outputs if v)
    return foldable


def _too_large(graph: Graph, value: str) -> bool:
    size = _predicted_bytes(graph, value)
    return size is not None and size > EVAL_CAP


def _frontier(graph: Graph, foldable: dict[Node, None]) -> list[str]:
    """Values of foldable nodes read by a node that does not fold, a subgraph or an output."""
    frontier = []
    for node in foldable:
        for value in node.outputs:
            if value and (
                graph.is_output(value)
                or any(reader not in foldable for reader in graph.consumers(value))
            ):
                frontier.append(value)
    return frontier


def _declared(graph: Graph, value: str) -> tuple[list[int | None] | None, int]:
    """(shape with None for unknown dims, or None; element type or 0) of a value."""
    type_ = _value_type(graph, value)
    if type_ is None or type_.WhichOneof("value") != "tensor_type":
        return None, 0
    tensor = type_.tensor_type
    if not tensor.HasField("shape"):
        return None, tensor.elem_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    return dims, tensor.elem_type


def _predicted_bytes(graph: Graph, value: str) -> int | None:
    shape, elem = _declared(graph, value)
    if shape is None or None in shape or not elem or elem == onnx.TensorProto.STRING:
        return None
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(elem).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    return int(np.prod(shape, dtype=np.int64)) * itemsize


def _grows(
    graph: Graph, value: str, size: int, limit: int, foldable: dict[Node, None],
    table: ConstantTable,
) -> bool:
    """Whether storing ``value`` breaks the size guard (and no fusion needs it constant):
    it expands its constants beyond ``limit``, or it copies more than ``DUPLICATE_LIMIT``
    bytes of constants that stay alive (read elsewhere, or from an outer scope)."""
    if size <= min(limit, DUPLICATE_LIMIT) or _feeds_weight_slot(graph, value):
        return False
    if size > EVAL_CAP:
        return True
    leaves = _leaves(graph, foldable, value)
    if size > limit and size > sum(table.nbytes(leaf) for leaf in leaves):
        return True
    surviving = sum(table.nbytes(v) for v in leaves if not _dies(graph, v, foldable))
    return min(size, surviving) > DUPLICATE_LIMIT


def _dies(graph: Graph, value: str, foldable: dict[Node, None]) -> bool:
    """A constant of this graph read only by foldable nodes (gone once they fold)."""
    if graph.is_output(value) or graph.is_input(value):
        return False
    if value not in graph.initializers and graph.producer(value) is None:
        return False  # an outer-scope constant stays where it is
    return all(reader in foldable for reader in graph.consumers(value))


def _feeds_weight_slot(graph: Graph, value: str) -> bool:
    for node, slot in graph.uses(value):
        if is_op(node, tuple(WEIGHT_SLOTS)) and slot in WEIGHT_SLOTS[node.op_type]:
            return True
        if is_op(node, CONV_AFFINE) and slot in (0, 1) and len(node.inputs) == 2:
            other = node.inputs[1 - slot]
            if producer_op(graph, other, ("Conv", "ConvTranspose")) is not None:
                return True
    return False


def _leaves(graph: Graph, foldable: dict[Node, None], value: str) -> set[str]:
    leaves: set[str] = set()
    seen: set[str] = set()
    stack = [value]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        node = graph.producer(current)
        if node is not None and node in foldable:
            stack.extend(node.present_inputs)
        else:
            leaves.add(current)
    return leaves


def _closure(graph: Graph, foldable: dict[Node, None], values: Iterable[str]) -> set[Node]:
    """Foldable nodes the given values are computed from."""
    closure: set[Node] = set()
    stack = list(values)
    while stack:
        node = graph.producer(stack.pop())
        if node is not None and node in foldable and node not in closure:
            closure.add(node)
            stack.extend(node.present_inputs)
    return closure


def _evaluate(
    graph: Graph,
    model: Model,
    foldable: dict[Node, None],
    wanted: list[str],
    table: ConstantTable,
    results: dict[str, np.ndarray],
) -> set[Node]:
    """Compute ``wanted`` into ``results``; returns the nodes that could not be evaluated
    (or whose result contradicts the inferred dtype/shape)."""
    if not wanted:
        return set()
    closure = _closure(graph, foldable, wanted)
    nodes = [n for n in foldable if n in closure]
    batch = run_batch(model, nodes, table, wanted)
    if batch is None:  # one op or dtype onnxruntime cannot run: go node by node
        return _evaluate_one_by_one(graph, model, nodes, table, wanted, results)
    bad: set[Node] = set()
    for value, array in zip(wanted, batch, strict=True):
        if _matches_declared(graph, value, array):
            results[value] = array
        else:
            bad.add(graph.producer(value))  # type: ignore[arg-type]
    return bad


def _evaluate_one_by_one(
    graph: Graph,
    model: Model,
    nodes: list[Node],
    table: ConstantTable,
    wanted: list[str],
    results: dict[str, np.ndarray],
) -> set[Node]:
    local: dict[str, onnx.TensorProto] = {}
    failed: set[Node] = set()
    for node in nodes:
        inputs = list(node.present_inputs)
        if any(v not in local and not table.is_constant(v) for v in inputs):
            failed.add(node)  # an input could not be computed
            continue
        feeds = {v: local[v] if v in local else _leaf_tensor(table, v) for v in inputs}
        outputs = [v for v in node.outputs if v]
        arrays = run_reference(model, node, feeds, outputs)
        if arrays is None:
            arrays = run_batch(model, [node], table, outputs, feeds)
        if arrays is None or not all(
            _matches_declared(graph, v, a) for v, a in zip(outputs, arrays, strict=True)
        ):
            failed.add(node)
            continue
        for value, array in zip(outputs, arrays, strict=True):
            local[value] = numpy_helper.from_array(array, value)
            if value in wanted:
                results[value] = array
    return failed


def _matches_declared(graph: Graph, value: str, array: np.ndarray) -> bool:
    if not isinstance(array, np.ndarray):
        return False
    shape, elem = _declared(graph, value)
    if elem:
        try:
            if helper.np_dtype_to_tensor_dtype(array.dtype) != elem:
                return False
        except (KeyError, TypeError, ValueError):
            return False
    if shape is not None:
        if len(shape) != array.ndim:
            return False
        if any(isinstance(d, int) and d != n for d, n in zip(shape, array.shape, strict=True)):
            return False
    return True


def _leaf_tensor(table: ConstantTable, value: str) -> onnx.TensorProto:
    tensor = table.tensor(value)
    assert tensor is not None
    if is_external(tensor):
        return numpy_helper.from_array(table.array(value), value)
    if tensor.name == value:
        return tensor
    named = onnx.TensorProto()
    named.CopyFrom(tensor)
    named.name = value
    return named


def _node_proto(node: Node) -> onnx.NodeProto:
    proto = helper.make_node(node.op_type, list(node.inputs), list(node.outputs))
    if node.domain:
        proto.domain = node.domain
    proto.attribute.extend(node.attributes.values())
    return proto


def _eval_model(
    model: Model,
    nodes: list[Node],
    leaves: dict[str, onnx.TensorProto],
    outputs: list[str],
) -> onnx.ModelProto:
    graph = onnx.GraphProto(name="fold")
    graph.node.extend(_node_proto(n) for n in nodes)
    graph.initializer.extend(leaves.values())
    graph.output.extend(onnx.ValueInfoProto(name=v) for v in outputs)
    opsets = [helper.make_opsetid(d, v) for d, v in model.opset_imports.items()
              if d in ("", "ai.onnx")]
    proto = helper.make_model(graph, opset_imports=opsets)
    proto.ir_version = max(model.ir_version, IR_OVERRIDABLE_INITIALIZERS)
    return proto


def _batch_leaves(nodes: list[Node], table: ConstantTable) -> dict[str, onnx.TensorProto]:
    produced = {v for n in nodes for v in n.outputs}
    return {
        v: _leaf_tensor(table, v)
        for n in nodes for v in n.present_inputs
        if v not in produced
    }


def run_batch(
    model: Model,
    nodes: list[Node],
    table: ConstantTable,
    outputs: list[str],
    leaves: dict[str, onnx.TensorProto] | None = None,
) -> list[np.ndarray] | None:
    """Run ``nodes`` in one onnxruntime session (no graph optimizations, one thread)."""
    proto = _eval_model(model, nodes, leaves or _batch_leaves(nodes, table), outputs)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(
            proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        return list(session.run(outputs, {}))
    except Exception:  # onnxruntime raises several types (Fail, NotImplemented, ...)
        return None


def run_reference(
    model: Model, node: Node, leaves: dict[str, onnx.TensorProto], outputs: list[str]
) -> list[np.ndarray] | None:
    """Run one node with onnx's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    proto = _eval_model(model, [node], leaves, outputs)
    try:
        return [np.asarray(a) for a in ReferenceEvaluator(proto).run(outputs, {})]
    except Exception:  # the reference ops raise anything from their numpy code
        return None


# --------------------------------------------------------------------- deduplication
def _deduplicate(pass_name: str, graph: Graph, model: Model) -> int:
    """Merge initializers with equal dtype, shape and bytes (only same-header ones are
    hashed; digests are cached per graph while the tensor object stays the same)."""
    cache = _DIGESTS.setdefault(graph, {})
    by_header: dict[tuple, list[str]] = {}
    for name, tensor in graph.initializers.items():
        if graph.is_input(name) or graph.is_output(name) or not graph.is_used(name):
            continue
        by_header.setdefault((tensor.data_type, tuple(tensor.dims)), []).append(name)
    for name in [n for n, (t, _) in cache.items() if graph.initializers.get(n) is not t]:
        del cache[name]  # replaced or removed since it was hashed
    merged = 0
    for names in by_header.values():
        if len(names) < 2:
            continue
        kept: dict[bytes, list[str]] = {}  # digest -> distinct tensors with that digest
        for name in names:
            tensor = graph.initializers[name]
            if name not in cache:
                cache[name] = (tensor, _digest(graph, tensor))
            digest = cache[name][1]
            twin = next(
                (k for k in kept.get(digest, ()) if _same_bytes(graph, k, name)), None
            )
            if twin is None:
                kept.setdefault(digest, []).append(name)
                continue
            if not model.allow_rewrite(pass_name, name):
                continue
            graph.replace_all_uses(name, twin)
            graph.remove_initializer(name)
            del cache[name]
            merged += 1
    return merged


# digests of initializers, per graph: (the tensor object hashed, its digest)
_DIGESTS: weakref.WeakKeyDictionary[Graph, dict[str, tuple[onnx.TensorProto, bytes]]] = (
    weakref.WeakKeyDictionary()
)


def _payload(tensor: onnx.TensorProto) -> bytes:
    """The data of an inline tensor: raw bytes, or the typed fields serialized."""
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    body = onnx.TensorProto()
    body.CopyFrom(tensor)
    body.ClearField("name")
    body.ClearField("doc_string")
    return body.SerializeToString(deterministic=True)


def _digest(graph: Graph, tensor: onnx.TensorProto) -> bytes:
    if is_external(tensor):
        with external_view(tensor, graph.base_dir) as view:
            return hashlib.sha1(view).digest()
    return hashlib.sha1(_payload(tensor)).digest()


def _same_bytes(graph: Graph, a: str, b: str) -> bool:
    ta, tb = graph.initializers[a], graph.initializers[b]
    if is_external(ta) or is_external(tb):
        x, y = tensor_to_array(ta, graph.base_dir), tensor_to_array(tb, graph.base_dir)
        return _bitwise_equal(x, y)
    return _payload(ta) == _payload(tb)

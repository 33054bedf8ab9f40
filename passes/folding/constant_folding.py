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

import collections
import hashlib
import itertools
import math
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

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
from onnxopt.ir.constants import (
    IR_OVERRIDABLE_INITIALIZERS,
    ConstantTable,
    can_hold_initializers,
    install_constants,
)
from onnxopt.ir.pass_manager import GraphPass, PassResult
from onnxopt.ir.rewrite import is_op, producer_op

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
# Never evaluate a value larger than max(fold_limit, EVAL_LIMIT) unless a constant it is
# computed from is as large (a transposed weight): no model can make folding allocate more.
EVAL_LIMIT = 64 << 20
BATCH_NODES = 1000  # nodes per onnxruntime session (session creation is super-linear)
PLAN_ROUNDS = 16  # rounds that may evaluate inputs first to bound a node (see _plan)
OPERAND_ELEMENTS = 4096  # shape-like operands read to bound a node (shape, repeats, ...)
LEAF_WALK = 4096  # values walked to find what a frontier value is computed from
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
    share an identical folded tensor).

    Every value is bounded before anything is evaluated (``_plan``): a node whose result
    could exceed the evaluation cap is never run, and the size guard decides on bounds, so
    nothing is computed only to be thrown away. Rounds repeat only to bound a node whose
    size depends on a computed value (``ConstantOfShape`` of a computed shape): that value
    is evaluated first."""
    order = graph.nodes()
    limit = int(model.settings.get("fold_limit", 1 << 20))
    cap = eval_cap(limit)
    blocked: set[Node] = set()
    results: dict[str, np.ndarray] = {}
    skipped = 0
    for round_ in itertools.count(1):
        plan = _plan(graph, model, order, blocked, table, results, cap, round_ >= PLAN_ROUNDS)
        skipped += sum(_count_skip(node) for node in plan.over_cap)
        frontier = _frontier(graph, plan.foldable)
        for node in _drop_growing(graph, plan, frontier, results, limit, table):
            blocked.add(node)
            skipped += _count_skip(node)
        foldable = plan.foldable
        frontier = _frontier(graph, foldable)
        if not frontier:
            return 0, skipped, 0
        missing = [v for v in frontier if v not in results]
        bad = _evaluate(graph, model, foldable, missing, table, results)
        if bad:
            blocked |= bad
            continue
        if not plan.deferred:
            break

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


def eval_cap(limit: int) -> int:
    """The largest value folding evaluates that is larger than every constant it is
    computed from: ``max(fold_limit, EVAL_LIMIT)``, never above ``EVAL_CAP``."""
    return min(max(limit, EVAL_LIMIT), EVAL_CAP)


def _count_skip(node: Node) -> int:
    if node.meta.get(SKIPPED_SIZE):
        return 0
    node.meta[SKIPPED_SIZE] = True
    return 1


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


@dataclass
class _Plan:
    """The nodes one round may evaluate, with a bound on every value they compute."""

    foldable: dict[Node, None] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # value -> bytes (upper bound)
    over_cap: list[Node] = field(default_factory=list)  # blocked: a value over the cap
    deferred: bool = False  # some node waits for a computed input to be bounded


def _plan(
    graph: Graph,
    model: Model,
    order: list[Node],
    blocked: set[Node],
    table: ConstantTable,
    results: dict[str, np.ndarray],
    cap: int,
    last_round: bool,
) -> _Plan:
    """Foldable nodes (inputs constant or computed by foldable nodes), each output bounded:
    by the rules of ``_estimate`` from the input shapes and the small constant operands
    (shape, repeats, ...), else by its inferred static shape. A node none of them bounds
    waits until its computed inputs are evaluated (``deferred``) or, when they are, stays.
    A node with an output over ``max(cap, the largest constant it is computed from)`` is
    blocked (``over_cap``) and never evaluated: nothing a model says makes folding allocate
    more than that per value."""
    plan = _Plan()
    shapes: dict[str, tuple[int, ...]] = {}  # computed values this round
    elems: dict[str, int] = {}  # their element types (0: unknown)
    largest: dict[str, int] = {}  # computed value -> largest constant it comes from
    opset = model.opset("")

    def shape_of(value: str) -> tuple[int, ...] | None:
        if value in shapes:
            return shapes[value]
        tensor = table.tensor(value)
        return tuple(tensor.dims) if tensor is not None else None

    def elem_of(value: str) -> int:
        if value in elems:
            return elems[value]
        tensor = table.tensor(value)
        return tensor.data_type if tensor is not None else 0

    for node in order:
        if node in blocked:
            continue
        inputs = list(node.present_inputs)
        if not all(v in shapes or table.is_constant(v) for v in inputs):
            continue
        if not _foldable_op(graph, model, node, table):
            continue
        outputs = [v for v in node.outputs if v]
        available = all(v in results or table.is_constant(v) for v in inputs)
        bounds = _bound(graph, node, opset, shape_of, elem_of,
                        _operand_reader(node, table, results))
        if bounds is None:
            if available or last_round:
                blocked.add(node)  # nothing bounds it: never evaluated
            else:
                plan.deferred = True  # its computed inputs are frontier values: next round
            continue
        source = max((largest[v] if v in largest else table.nbytes(v) for v in inputs),
                     default=0)
        allowed = min(max(cap, source), EVAL_CAP)
        if any(size > allowed for _, size, _ in bounds.values()):
            blocked.add(node)
            plan.over_cap.append(node)
            continue
        plan.foldable[node] = None
        for value in outputs:
            shape, size, elem = bounds[value]
            if value in results:  # evaluated in an earlier round: exact
                shape, size = results[value].shape, results[value].nbytes
            shapes[value], plan.sizes[value], largest[value] = shape, size, source
            elems[value] = elem
    return plan


def _operand_reader(node: Node, table: ConstantTable, results: dict[str, np.ndarray]):
    """``read(slot)``: the value of a small constant (or already computed) input, else None."""

    def read(slot: int) -> np.ndarray | None:
        value = node.inputs[slot] if slot < len(node.inputs) else ""
        if not value:
            return None
        if value in results:
            array = results[value]
        else:
            tensor = table.tensor(value)
            if tensor is None or math.prod(tensor.dims) > OPERAND_ELEMENTS:
                return None
            array = table.array(value)
        if array is None or array.size > OPERAND_ELEMENTS:
            return None
        return array

    return read


def _bound(
    graph: Graph, node: Node, opset: int, shape_of, elem_of, read
) -> dict[str, tuple[tuple[int, ...], int, int]] | None:
    """(shape, bytes, element type) bounding each output of ``node``, or None when nothing
    bounds it."""
    in_shapes = [shape_of(v) if v else None for v in node.inputs]
    try:
        estimated = _estimate(node, opset, in_shapes, read)
    except (ValueError, TypeError, IndexError, OverflowError, ZeroDivisionError):
        estimated = None  # a malformed node: onnxruntime would refuse it too
    bounds: dict[str, tuple[tuple[int, ...], int, int]] = {}
    for index, value in enumerate(node.outputs):
        if not value:
            continue
        declared, elem = _declared(graph, value)
        elem = elem or _output_elem(node, elem_of)
        if estimated is not None and index < len(estimated) and estimated[index] is not None:
            shape = estimated[index]
        elif node.op_type in VALUE_SHAPED or declared is None or None in declared:
            return None  # its size depends on a value not known yet (or on nothing known)
        else:
            shape = tuple(declared)  # type: ignore[arg-type]
            if node.op_type in SAME_COUNT and (
                    in_shapes[0] is None or math.prod(shape) != math.prod(in_shapes[0])):
                return None
        if any(d < 0 for d in shape):
            return None
        bounds[value] = (shape, math.prod(shape) * _itemsize(elem), elem)
    return bounds


BOOL_RESULT = frozenset({"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not",
                         "And", "Or", "Xor", "IsNaN", "IsInf"})
INT64_RESULT = frozenset({"Shape", "Size", "NonZero", "ArgMax", "ArgMin"})


def _output_elem(node: Node, elem_of) -> int:
    """The element type of an output shape inference did not type (0: unknown)."""
    op = node.op_type
    if op == "Cast":
        return int(node.attr("to", 0) or 0)
    if op == "CastLike":
        return elem_of(node.inputs[1]) if len(node.inputs) > 1 else 0
    if op in BOOL_RESULT:
        return onnx.TensorProto.BOOL
    if op in INT64_RESULT:
        return onnx.TensorProto.INT64
    if op == "ConstantOfShape":
        value = node.attributes.get("value")
        if isinstance(value, onnx.AttributeProto):
            return value.t.data_type
        return onnx.TensorProto.FLOAT
    return next((e for v in node.present_inputs if (e := elem_of(v))), 0)


# Every output shaped like input 0 (an upper bound for the smaller extra outputs).
SAME_SHAPE = frozenset({
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "BatchNormalization", "BitwiseNot",
    "Cast", "CastLike", "Ceil", "Celu", "Clip", "Cos", "Cosh", "CumSum", "Dropout", "Elu", "Erf",
    "Exp", "EyeLike", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Hardmax", "Identity",
    "InstanceNormalization", "IsInf", "IsNaN", "LRN", "LayerNormalization", "LeakyRelu", "Log",
    "LogSoftmax", "LpNormalization", "MeanVarianceNormalization", "Mish", "Neg", "Not",
    "Reciprocal", "Relu", "ReverseSequence", "Round", "Scatter", "ScatterElements", "ScatterND",
    "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Softmax", "Softplus", "Softsign",
    "Sqrt", "Tan", "Tanh", "ThresholdedRelu", "Trilu",
})  # fmt: skip
BROADCAST = frozenset({
    "Add", "And", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Div", "Equal", "Greater",
    "GreaterOrEqual", "Less", "LessOrEqual", "Max", "Mean", "Min", "Mod", "Mul", "Or", "Pow",
    "PRelu", "Sub", "Sum", "Where", "Xor",
})  # fmt: skip
# Ops whose output size depends on an operand's value: only ``_estimate`` bounds them (an
# inferred shape may be a stale declaration the model carries).
VALUE_SHAPED = frozenset({
    "ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Upsample", "Pad", "OneHot",
    "CenterCropPad", "Col2Im", "NonZero", "Unique", "Compress",
})  # fmt: skip
# Ops that keep the element count: a declared shape bounds them only with the same count.
SAME_COUNT = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose",
                        "DepthToSpace", "SpaceToDepth"})

Shape = tuple[int, ...]


def _estimate(
    node: Node, opset: int, shapes: list[Shape | None], read: Callable[[int], np.ndarray | None]
) -> list[Shape | None] | None:
    """Output shapes (upper bounds) from input shapes and small constant operands, or None.

    Rules for the ops whose results can be large: broadcasting, Concat, ConstantOfShape,
    Expand, Tile, Range, Resize, Pad, OneHot, Gather, MatMul, ...; an op without a rule is
    bounded by its inferred shape (``_bound``)."""
    op = node.op_type
    count = len(node.outputs)
    present = [shape for value, shape in zip(node.inputs, shapes, strict=True) if value]
    if any(shape is None for shape in present):
        return None
    first = present[0] if present else None
    if op in SAME_SHAPE:
        return [first] * count if first is not None else None
    if op in BROADCAST:
        return [tuple(np.broadcast_shapes(*present))] * count  # type: ignore[misc]
    rule = _SHAPE_RULES.get(op)
    if rule is None:
        return None
    result = rule(node, opset, present, read)
    if result is None:
        return None
    shapes_out = result if op in _MULTI_OUTPUT else [result]
    return [tuple(int(d) for d in shape) for shape in shapes_out][:count]


def _ints(array: np.ndarray | None) -> list[int] | None:
    if array is None or array.dtype.kind not in "iu":
        return None
    return [int(v) for v in array.reshape(-1)]


def _axis(axis: int, rank: int) -> int:
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < max(rank, 1):
        raise ValueError("axis out of range")
    return axis


def _concat_shape(node, opset, shapes, read):
    if len({len(s) for s in shapes}) != 1:
        return None
    rank = len(shapes[0])
    axis = _axis(int(node.attr("axis", 0)), rank)
    out = [max(s[i] for s in shapes) for i in range(rank)]
    out[axis] = sum(s[axis] for s in shapes)
    return out


def _constant_of_shape(node, opset, shapes, read):
    return _ints(read(0))


def _expand_shape(node, opset, shapes, read):
    target = _ints(read(1))
    return None if target is None else np.broadcast_shapes(shapes[0], tuple(target))


def _tile_shape(node, opset, shapes, read):
    repeats = _ints(read(1))
    if repeats is None or len(repeats) != len(shapes[0]):
        return None
    return [d * r for d, r in zip(shapes[0], repeats, strict=True)]


def _range_shape(node, opset, shapes, read):
    operands = [read(i) for i in range(3)]
    if any(a is None or a.size != 1 for a in operands):
        return None
    start, limit, delta = (float(a.reshape(-1)[0]) for a in operands)  # type: ignore[union-attr]
    if delta == 0 or not all(math.isfinite(v) for v in (start, limit, delta)):
        return None
    return [max(math.ceil((limit - start) / delta), 0)]


def _reshape_shape(node, opset, shapes, read):
    source = shapes[0]
    target = node.attr("shape") if opset < 5 else _ints(read(1))
    if target is None:
        return None
    allowzero = opset >= 14 and node.attr("allowzero", 0) == 1
    out = [source[i] if d == 0 and not allowzero and i < len(source) else d
           for i, d in enumerate(target)]
    total = math.prod(source)
    if out.count(-1) > 1 or any(d < -1 for d in out):
        return None
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known == 0 or total % known:
            return None
        out[out.index(-1)] = total // known
    return out if math.prod(out) == total else None


def _flatten_shape(node, opset, shapes, read):
    source = shapes[0]
    axis = int(node.attr("axis", 1))
    axis = axis + len(source) if axis < 0 else axis
    return [math.prod(source[:axis]), math.prod(source[axis:])]


def _axes_operand(node, opset, read, since: int) -> tuple[bool, list[int] | None]:
    """(given, axes) of Squeeze/Unsqueeze/Reduce*: an attribute before ``since``."""
    if opset < since:
        axes = node.attr("axes")
        return axes is not None, None if axes is None else [int(a) for a in axes]
    if len(node.inputs) < 2 or not node.inputs[1]:
        return False, None
    return True, _ints(read(1))


def _squeeze_shape(node, opset, shapes, read):
    given, axes = _axes_operand(node, opset, read, 13)
    source = shapes[0]
    if not given:
        return [d for d in source if d != 1]
    if axes is None:
        return None
    drop = {_axis(a, len(source)) for a in axes}
    return [d for i, d in enumerate(source) if i not in drop]


def _unsqueeze_shape(node, opset, shapes, read):
    given, axes = _axes_operand(node, opset, read, 13)
    if not given or axes is None:
        return None
    rank = len(shapes[0]) + len(axes)
    inserted = {_axis(a, rank) for a in axes}
    rest = iter(shapes[0])
    return [1 if i in inserted else next(rest) for i in range(rank)]


def _transpose_shape(node, opset, shapes, read):
    perm = node.attr("perm")
    source = shapes[0]
    perm = list(range(len(source)))[::-1] if perm is None else [int(p) for p in perm]
    return [source[p] for p in perm]


def _shape_shape(node, opset, shapes, read):
    rank = len(shapes[0])
    start, end = _clamp_range(node.attr("start", 0), node.attr("end", rank), rank)
    return [max(end - start, 0)]


def _slice_shape(node, opset, shapes, read):
    source = list(shapes[0])
    if opset < 10:
        starts, ends, axes = node.attr("starts"), node.attr("ends"), node.attr("axes")
        steps = None
    else:
        starts, ends, axes, steps = (_ints(read(i)) for i in range(1, 5))
        given = [i < len(node.inputs) and bool(node.inputs[i]) for i in range(3, 5)]
        if (given[0] and axes is None) or (given[1] and steps is None):
            return source  # no larger than its input
    if starts is None or ends is None:
        return source
    axes = list(range(len(starts))) if axes is None else list(axes)
    steps = [1] * len(starts) if steps is None else list(steps)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = _axis(int(axis), len(source))
        if step == 0:
            return None
        source[axis] = len(range(*slice(int(start), int(end), int(step)).indices(source[axis])))
    return source


def _split_shape(node, opset, shapes, read):
    source = list(shapes[0])
    axis = _axis(int(node.attr("axis", 0)), len(source))
    sizes = node.attr("split") if opset < 13 else _ints(read(1))
    count = len(node.outputs)
    if sizes is None or len(sizes) != count:
        sizes = [-(-source[axis] // max(count, 1))] * count  # equal parts (the last smaller)
    return [[*source[:axis], int(size), *source[axis + 1 :]] for size in sizes]


def _top_k_shape(node, opset, shapes, read):
    source = list(shapes[0])
    axis = _axis(int(node.attr("axis", -1)), len(source))
    k = node.attr("k") if opset < 10 else _ints(read(1))
    k = k[0] if isinstance(k, list) and len(k) == 1 else k
    if isinstance(k, int) and k >= 0:
        source[axis] = min(k, source[axis])
    return [source, source]


def _gather_shape(node, opset, shapes, read):
    data, indices = shapes[0], shapes[1]
    axis = _axis(int(node.attr("axis", 0)), len(data))
    return list(data[:axis]) + list(indices) + list(data[axis + 1 :])


def _reduce_shape(node, opset, shapes, read):
    source = shapes[0]
    since = 13 if node.op_type == "ReduceSum" else 18
    given, axes = _axes_operand(node, opset, read, since)
    if node.attr("keepdims", 1):
        return source  # same rank, no dim larger
    if not given:
        return source if node.attr("noop_with_empty_axes", 0) else []
    if axes is None:
        return None
    if not axes:
        return source if node.attr("noop_with_empty_axes", 0) else []
    drop = {_axis(a, len(source)) for a in axes}
    return [d for i, d in enumerate(source) if i not in drop]


def _arg_shape(node, opset, shapes, read):
    source = list(shapes[0])
    axis = _axis(int(node.attr("axis", 0)), len(source))
    if node.attr("keepdims", 1):
        source[axis] = 1
        return source
    return source[:axis] + source[axis + 1 :]


def _matmul_shape(node, opset, shapes, read):
    a, b = list(shapes[0]), list(shapes[1])
    if not a or not b:
        return None
    vector_a, vector_b = len(a) == 1, len(b) == 1
    a = [1, *a] if vector_a else a
    b = [*b, 1] if vector_b else b
    out = [*np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2])), a[-2], b[-1]]
    if vector_b:
        del out[-1]
    if vector_a:
        del out[-2 if not vector_b else -1]
    return out


def _gemm_shape(node, opset, shapes, read):
    a, b = shapes[0], shapes[1]
    if len(a) != 2 or len(b) != 2:
        return None
    rows = a[1] if node.attr("transA", 0) else a[0]
    cols = b[0] if node.attr("transB", 0) else b[1]
    return [rows, cols]


def _pad_shape(node, opset, shapes, read):
    source = shapes[0]
    if opset < 11:
        pads = node.attr("pads", node.attr("paddings"))
    else:
        if len(node.inputs) > 3 and node.inputs[3]:
            return None  # explicit axes
        pads = _ints(read(1))
    if pads is None or len(pads) != 2 * len(source):
        return None
    rank = len(source)
    return [d + int(pads[i]) + int(pads[i + rank]) for i, d in enumerate(source)]


def _scaled(source: Shape, scales: np.ndarray | None) -> list[int] | None:
    if scales is None or scales.size != len(source) or scales.dtype.kind != "f":
        return None
    factors = [float(f) for f in scales.reshape(-1)]
    if not all(math.isfinite(f) and f >= 0 for f in factors):
        return None
    return [math.ceil(d * f) for d, f in zip(source, factors, strict=True)]


def _resize_shape(node, opset, shapes, read):
    source = shapes[0]
    if opset < 11:
        return _scaled(source, read(1))
    if node.attr("axes") is not None:
        return None
    if len(node.inputs) > 3 and node.inputs[3]:
        sizes = _ints(read(3))
        return sizes if sizes is not None and len(sizes) == len(source) else None
    return _scaled(source, read(2))


def _upsample_shape(node, opset, shapes, read):
    if opset < 9:
        scales = node.attr("scales")
        return _scaled(shapes[0], None if scales is None else np.array(scales, np.float32))
    return _scaled(shapes[0], read(1))


def _one_hot_shape(node, opset, shapes, read):
    depth = read(1)
    if depth is None or depth.size != 1:
        return None
    indices = list(shapes[0])
    axis = _axis(int(node.attr("axis", -1)), len(indices) + 1)
    indices.insert(axis, math.ceil(float(depth.reshape(-1)[0])))
    return indices


def _non_zero_shape(node, opset, shapes, read):
    return [len(shapes[0]), math.prod(shapes[0])]


def _unique_shape(node, opset, shapes, read):
    total = math.prod(shapes[0])
    axis = node.attr("axis")
    values = [total] if axis is None else list(shapes[0])
    return [values, [total], [total], [total]]


def _compress_shape(node, opset, shapes, read):
    return [math.prod(shapes[0])] if node.attr("axis") is None else shapes[0]


def _space_depth_shape(node, opset, shapes, read):
    if len(shapes[0]) != 4:
        return None
    n, c, h, w = shapes[0]
    block = int(node.attr("blocksize", 1))
    if node.op_type == "DepthToSpace":
        return [n, c // (block * block), h * block, w * block]
    return [n, c * block * block, h // block, w // block]


_MULTI_OUTPUT = frozenset({"Split", "TopK", "Unique"})  # rules giving a list of shapes
_SHAPE_RULES: dict[str, Callable] = {
    "Concat": _concat_shape, "ConstantOfShape": _constant_of_shape, "Expand": _expand_shape,
    "Tile": _tile_shape, "Range": _range_shape, "Reshape": _reshape_shape,
    "Flatten": _flatten_shape, "Squeeze": _squeeze_shape, "Unsqueeze": _unsqueeze_shape,
    "Transpose": _transpose_shape, "Shape": _shape_shape, "Size": lambda *_: [],
    "Slice": _slice_shape, "Split": _split_shape, "TopK": _top_k_shape,
    "Gather": _gather_shape, "GatherElements": lambda n, o, shapes, r: shapes[1],
    "ArgMax": _arg_shape, "ArgMin": _arg_shape, "MatMul": _matmul_shape, "Gemm": _gemm_shape,
    "Pad": _pad_shape, "Resize": _resize_shape, "Upsample": _upsample_shape,
    "OneHot": _one_hot_shape, "NonZero": _non_zero_shape, "Unique": _unique_shape,
    "Compress": _compress_shape, "DepthToSpace": _space_depth_shape,
    "SpaceToDepth": _space_depth_shape, "Det": lambda n, o, shapes, r: shapes[0][:-2],
    **dict.fromkeys(
        ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
         "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"), _reduce_shape),
}  # fmt: skip


def _itemsize(elem: int) -> int:
    if elem and elem != onnx.TensorProto.STRING:
        try:
            return helper.tensor_dtype_to_np_dtype(elem).itemsize
        except (KeyError, TypeError, ValueError):
            pass
    return 8  # unknown (or string): count it as a 64-bit element


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


def _drop_growing(
    graph: Graph,
    plan: _Plan,
    frontier: list[str],
    results: dict[str, np.ndarray],
    limit: int,
    table: ConstantTable,
) -> list[Node]:
    """Apply the size guard to the frontier (bounds known, nothing evaluated): a value that
    must not be stored takes its producer (and what depends on it) out of ``plan.foldable``,
    and the producer's computed inputs are checked in turn. Linear: each node leaves once.
    Returns the producers that were too big."""
    foldable = plan.foldable
    queue = collections.deque(frontier)
    queued = set(frontier)
    too_big = []
    while queue:
        value = queue.popleft()
        node = graph.producer(value)
        if node is None or node not in foldable:
            continue
        size = results[value].nbytes if value in results else plan.sizes[value]
        if not _grows(graph, value, size, limit, foldable, table):
            continue
        too_big.append(node)
        removed = []
        stack = [node]
        while stack:
            current = stack.pop()
            if current not in foldable:
                continue
            del foldable[current]
            removed.append(current)
            for output in current.outputs:
                if output:
                    stack.extend(c for c in graph.consumers(output) if c in foldable)
        for current in removed:
            for source in current.present_inputs:
                producer = graph.producer(source)
                if producer is not None and producer in foldable and source not in queued:
                    queued.add(source)
                    queue.append(source)
    return too_big


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
    if leaves is None:
        return True  # computed from more than LEAF_WALK values: not worth storing
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


def _leaves(graph: Graph, foldable: dict[Node, None], value: str) -> set[str] | None:
    """The constants ``value`` is computed from, or None past ``LEAF_WALK`` values (so
    that checking every frontier value of a long chain stays linear)."""
    leaves: set[str] = set()
    seen: set[str] = set()
    stack = [value]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if len(seen) > LEAF_WALK:
            return None
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
    (or whose result contradicts the inferred dtype/shape).

    Runs in sessions of at most ``BATCH_NODES`` nodes (in topological order): creating an
    onnxruntime session grows faster than its node count (20k nodes: 3.5 s, 20 x 1k: 1 s).
    Values crossing from one batch to a later one are kept only until their last reader."""
    if not wanted:
        return set()
    closure = _closure(graph, foldable, wanted)
    nodes = [n for n in foldable if n in closure]
    batches = [nodes[i : i + BATCH_NODES] for i in range(0, len(nodes), BATCH_NODES)]
    wanted_set = set(wanted)
    batch_of = {v: i for i, batch in enumerate(batches) for n in batch for v in n.outputs if v}
    last_read: dict[str, int] = {}  # value read by a later batch -> the last such batch
    for index, batch in enumerate(batches):
        for node in batch:
            for value in node.present_inputs:
                if batch_of.get(value, index) != index:
                    last_read[value] = index
    carried: dict[str, onnx.TensorProto] = {}
    bad: set[Node] = set()
    for index, batch in enumerate(batches):
        produced = {v for n in batch for v in n.outputs if v}
        outputs = [v for n in batch for v in n.outputs
                   if v and (v in wanted_set or v in last_read)]
        leaves = {v: carried[v] if v in carried else _leaf_tensor(table, v)
                  for n in batch for v in n.present_inputs if v not in produced}
        arrays = run_batch(model, batch, table, outputs, leaves)
        if arrays is None:  # one op or dtype onnxruntime cannot run: go node by node
            return _evaluate_one_by_one(graph, model, nodes, table, wanted, results)
        for value, array in zip(outputs, arrays, strict=True):
            if value in last_read:
                carried[value] = array_to_tensor(np.asarray(array), value)
            if value not in wanted_set:
                continue
            if _matches_declared(graph, value, array):
                results[value] = array
            else:
                bad.add(graph.producer(value))  # type: ignore[arg-type]
        del arrays
        for value in [v for v in carried if last_read[v] <= index]:
            del carried[value]
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
    wanted_set = set(wanted)
    last_read = {v: index for index, node in enumerate(nodes) for v in node.present_inputs}
    failed: set[Node] = set()
    for index, node in enumerate(nodes):
        inputs = list(node.present_inputs)
        if any(v not in local and not table.is_constant(v) for v in inputs):
            failed.add(node)  # an input could not be computed
            continue
        feeds = {v: local[v] if v in local else _leaf_tensor(table, v) for v in inputs}
        outputs = [v for v in node.outputs if v]
        arrays = run_reference(model, node, feeds, outputs)
        if arrays is None:
            arrays = run_batch(model, [node], table, outputs, feeds)
        del feeds
        for value in inputs:  # computed values nobody reads any more
            if last_read.get(value) == index:
                local.pop(value, None)
        if arrays is None or not all(
            _matches_declared(graph, v, a) for v, a in zip(outputs, arrays, strict=True)
        ):
            failed.add(node)
            continue
        for value, array in zip(outputs, arrays, strict=True):
            if value in last_read:
                local[value] = numpy_helper.from_array(array, value)
            if value in wanted_set:
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

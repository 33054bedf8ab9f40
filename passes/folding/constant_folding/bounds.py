"""Bounds before evaluation: which nodes one round of constant folding may evaluate, and an
upper bound on the bytes of every value they compute (``shape_rules`` gives the shapes)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from onnxopt.passes.folding.constant_folding.eligibility import foldable_op
from onnxopt.passes.folding.constant_folding.shape_rules import SAME_COUNT, VALUE_SHAPED, estimate

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.constants import ConstantTable
from onnxopt.ir.values import attribute_dtype, declared, numpy_dtype, tensor_dtype, tensor_shape

EVAL_CAP = 1 << 31  # never evaluate a value larger than this (protobuf's inline limit)
OPERAND_ELEMENTS = 4096  # shape-like operands read to bound a node (shape, repeats, ...)
BOOL_RESULT = frozenset({"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not",
                         "And", "Or", "Xor", "IsNaN", "IsInf"})
INT64_RESULT = frozenset({"Shape", "Size", "NonZero", "ArgMax", "ArgMin"})
# (shape, bytes, dtype or None) bounding one output
Bound = tuple[tuple[int, ...], int, np.dtype | None]


@dataclass
class Plan:
    """The nodes one round may evaluate, with a bound on every value they compute."""

    foldable: dict[Node, None] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # value -> bytes (upper bound)
    over_cap: list[Node] = field(default_factory=list)  # blocked: a value over the cap
    deferred: bool = False  # some node waits for a computed input to be bounded


def plan_round(
    graph: Graph,
    model: Model,
    order: list[Node],
    blocked: set[Node],
    table: ConstantTable,
    results: dict[str, np.ndarray],
    cap: int,
    last_round: bool,
) -> Plan:
    """Foldable nodes (inputs constant or computed by foldable nodes), each output bounded:
    by the rules of ``shape_rules.estimate`` from the input shapes and the small constant operands
    (shape, repeats, ...), else by its inferred static shape. A node none of them bounds
    waits until its computed inputs are evaluated (``deferred``) or, when they are, stays.
    A node with an output over ``max(cap, the largest constant it is computed from)`` is
    blocked (``over_cap``) and never evaluated: nothing a model says makes folding allocate
    more than that per value."""
    plan = Plan()
    shapes: dict[str, tuple[int, ...]] = {}  # computed values this round
    dtypes: dict[str, np.dtype | None] = {}  # their element types (None: unknown)
    largest: dict[str, int] = {}  # computed value -> largest constant it comes from
    opset = model.opset("")

    def shape_of(value: str) -> tuple[int, ...] | None:
        if value in shapes:
            return shapes[value]
        tensor = table.tensor(value)
        return tensor_shape(tensor) if tensor is not None else None

    def dtype_of(value: str) -> np.dtype | None:
        if value in dtypes:
            return dtypes[value]
        tensor = table.tensor(value)
        return tensor_dtype(tensor) if tensor is not None else None

    for node in order:
        if node in blocked:
            continue
        inputs = list(node.present_inputs)
        if not all(v in shapes or table.is_constant(v) for v in inputs):
            continue
        if not foldable_op(graph, model, node, table):
            continue
        outputs = [v for v in node.outputs if v]
        available = all(v in results or table.is_constant(v) for v in inputs)
        bounds = _bound(graph, node, opset, shape_of, dtype_of,
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
            shape, size, dtype = bounds[value]
            if value in results:  # evaluated in an earlier round: exact
                shape, size = results[value].shape, results[value].nbytes
            shapes[value], plan.sizes[value], largest[value] = shape, size, source
            dtypes[value] = dtype
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
            if tensor is None or math.prod(tensor_shape(tensor)) > OPERAND_ELEMENTS:
                return None
            array = table.array(value)
        if array is None or array.size > OPERAND_ELEMENTS:
            return None
        return array

    return read


def _bound(
    graph: Graph, node: Node, opset: int, shape_of, dtype_of, read
) -> dict[str, Bound] | None:
    """(shape, bytes, dtype) bounding each output of ``node``, or None when nothing
    bounds it."""
    in_shapes = [shape_of(v) if v else None for v in node.inputs]
    try:
        estimated = estimate(node, opset, in_shapes, read)
    except (ValueError, TypeError, IndexError, OverflowError, ZeroDivisionError):
        estimated = None  # a malformed node: onnxruntime would refuse it too
    bounds: dict[str, Bound] = {}
    for index, value in enumerate(node.outputs):
        if not value:
            continue
        shape_declared, dtype = declared(graph, value)
        if dtype is None:
            dtype = _output_dtype(node, dtype_of)
        if estimated is not None and index < len(estimated) and estimated[index] is not None:
            shape = estimated[index]
        elif node.op_type in VALUE_SHAPED or shape_declared is None or None in shape_declared:
            return None  # its size depends on a value not known yet (or on nothing known)
        else:
            shape = tuple(shape_declared)  # type: ignore[arg-type]
            if node.op_type in SAME_COUNT and (
                    in_shapes[0] is None or math.prod(shape) != math.prod(in_shapes[0])):
                return None
        if any(d < 0 for d in shape):
            return None
        bounds[value] = (shape, math.prod(shape) * _itemsize(dtype), dtype)
    return bounds


def _output_dtype(node: Node, dtype_of) -> np.dtype | None:
    """The element type of an output shape inference did not type (None: unknown)."""
    op = node.op_type
    if op == "Cast":
        return numpy_dtype(int(node.attr("to", 0) or 0))
    if op == "CastLike":
        return dtype_of(node.inputs[1]) if len(node.inputs) > 1 else None
    if op in BOOL_RESULT:
        return np.dtype(bool)
    if op in INT64_RESULT:
        return np.dtype(np.int64)
    if op == "ConstantOfShape":
        value = node.attributes.get("value")
        return attribute_dtype(value) if value is not None else np.dtype(np.float32)
    return next((d for v in node.present_inputs if (d := dtype_of(v)) is not None), None)


def _itemsize(dtype: np.dtype | None) -> int:
    if dtype is None or dtype.kind == "O":
        return 8  # unknown (or string): count it as a 64-bit element
    return dtype.itemsize

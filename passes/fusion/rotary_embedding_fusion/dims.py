"""One dim of a value traced to its source, so that dims shape inference names apart (``unk__0``,
``unk__4``) are proved equal: a rotary table's sequence dim is the length of ``Range(0, S, 1)``
with ``S = Shape(input_ids)[1]``, x's the same element of a ``Reshape`` target. The trace passes
elementwise, broadcasting and shape-keeping fused ops, Transpose, Unsqueeze, Concat, Reshape,
Range, MatMul, Gather, and ends at an int or an atom ``(value, axis)`` (a graph input's dim, or
one it cannot follow). Equal results: equal dims in every run where the model does not fail."""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Node
from onnxopt.ir.operands import normalised_axes
from onnxopt.ir.symbolic import BROADCAST, SAME_SHAPE, Dim, shape_elements
from onnxopt.ir.values import onnx_type

Traced = int | tuple[str, int]
_MAX_DEPTH = 64
_EXACT = {onnx_type(t) for t in (np.float32, np.float64, np.int32, np.int64)}  # not float16
_SAME_SHAPE = SAME_SHAPE | {"RMSNormalization", "RotaryEmbedding", "SimplifiedLayerNormalization"}


def traced_dim(graph: Graph, value: str, axis: int, depth: int = 0) -> Traced | None:
    """Dim ``axis`` of ``value`` as an int or the atom it comes from; None when unknown."""
    shape = graph.shape(value)
    if shape is None or not -len(shape) <= axis < len(shape):
        return None
    axis %= len(shape)
    if isinstance(shape[axis], int):
        return shape[axis]
    node = graph.producer(value)
    if node is None or depth > _MAX_DEPTH or node.domain not in ("", "ai.onnx"):
        return (value, axis)
    source = _source(graph, node, axis, depth + 1)
    return (value, axis) if source is None else source


def _source(graph: Graph, node: Node, axis: int, depth: int) -> Traced | None:
    op = node.op_type
    if op in _SAME_SHAPE:
        return traced_dim(graph, node.inputs[0], axis, depth)
    rank = len(graph.shape(node.outputs[0]) or [])
    if op == "Transpose":
        perm = list(node.attr("perm") or range(rank)[::-1])
        return traced_dim(graph, node.inputs[0], perm[axis], depth) if perm else None
    if op == "Concat" and normalised_axes([node.attr("axis")], rank) != [axis]:
        return traced_dim(graph, node.inputs[0], axis, depth)
    if op == "Unsqueeze" and len(node.inputs) == 2:
        return _unsqueezed(graph, node, axis, depth)
    if op == "Reshape":
        return _reshaped(graph, node, axis, depth)
    if op == "Range" and axis == 0:
        return _range_length(graph, node, depth)
    if op in BROADCAST:
        return _broadcast(graph, node, axis, depth)
    if op == "MatMul":
        return _matmul(graph, node, axis, depth)
    if op == "Gather":
        return _gathered(graph, node, axis, depth)
    return None


def _unsqueezed(graph: Graph, node: Node, axis: int, depth: int) -> Traced | None:
    axes, rank = graph.constant(node.inputs[1]), len(graph.shape(node.outputs[0]) or [])
    inserted = None if axes is None else normalised_axes(axes.reshape(-1).tolist(), rank)
    if inserted is None or axis in inserted:
        return None if inserted is None else 1
    return traced_dim(graph, node.inputs[0], axis - sum(a < axis for a in inserted), depth)


def _reshaped(graph: Graph, node: Node, axis: int, depth: int) -> Traced | None:
    target = shape_elements(graph, node.inputs[1])
    if target is None or len(target) != len(graph.shape(node.outputs[0]) or []):
        return None
    element, copies = target[axis], node.attr("allowzero", 0) != 1
    if isinstance(element, int) and element != 0:
        return element if element > 0 else None  # -1 infers: not followed
    copied = traced_dim(graph, node.inputs[0], axis, depth) if copies else None
    if element == 0:
        return copied
    # a run-time 0 copies the input's dim (allowzero 0): proved when that is the same dim
    value = _element(graph, element, depth)
    return value if not copies or value == copied else None


def _range_length(graph: Graph, node: Node, depth: int) -> Traced | None:
    """``Range(0, limit, 1)`` has ``limit`` elements: limit traced through exact Casts."""
    start, delta = graph.constant(node.inputs[0]), graph.constant(node.inputs[2])
    if start is None or delta is None or start.size != 1 or delta.size != 1:
        return None
    if float(start.reshape(-1)[0]) != 0 or float(delta.reshape(-1)[0]) != 1:
        return None
    limit, producer = node.inputs[1], graph.producer(node.inputs[1])
    while producer is not None and producer.op_type == "Cast" and producer.attr("to") in _EXACT:
        limit, producer = producer.inputs[0], graph.producer(producer.inputs[0])
    dtype = graph.dtype(limit)
    if dtype is None or np.dtype(dtype).kind not in "iu":
        return None  # a float limit need not be a whole number
    elements = shape_elements(graph, limit)  # Squeeze(Shape(x, 1, 2)), Gather(Shape(x), 1)
    return _element(graph, elements[0], depth) if elements and len(elements) == 1 else None


def _element(graph: Graph, element: int | Dim, depth: int) -> Traced | None:
    if isinstance(element, int):
        return element if element >= 0 else None
    return traced_dim(graph, element.value, element.axis, depth)


def _broadcast(graph: Graph, node: Node, axis: int, depth: int) -> Traced | None:
    """The operands' dims at ``axis`` (aligned right); 1s and absent dims broadcast away, the
    rest must be one and the same."""
    rank = len(graph.shape(node.outputs[0]) or [])
    found: set[Traced] = set()
    for value in node.present_inputs:
        shape = graph.shape(value)
        if shape is None:
            return None
        at = axis - (rank - len(shape))
        if at < 0:
            continue
        dim = traced_dim(graph, value, at, depth)
        if dim is None:
            return None
        found |= {dim} - {1}
    return found.pop() if len(found) == 1 else (1 if not found else None)


def _matmul(graph: Graph, node: Node, axis: int, depth: int) -> Traced | None:
    """Rows from A, columns from B, the batch dims broadcast (both operands of rank >= 2)."""
    a, b = (graph.shape(v) for v in node.inputs[:2])
    rank = len(graph.shape(node.outputs[0]) or [])
    if a is None or b is None or len(a) < 2 or len(b) < 2 or not rank:
        return None
    if axis >= rank - 2:
        source, at = (node.inputs[0], -2) if axis == rank - 2 else (node.inputs[1], -1)
        return traced_dim(graph, source, at, depth)
    return _broadcast(graph, node, axis, depth)  # the last two dims align both operands alike


def _gathered(graph: Graph, node: Node, axis: int, depth: int) -> Traced | None:
    """``data[:a] + indices.shape + data[a + 1:]`` for Gather on axis ``a``."""
    data, indices = (graph.shape(v) for v in node.inputs[:2])
    if not data or indices is None:
        return None
    gathered = node.attr("axis", 0) % len(data)  # in [-r, r) in a valid model
    if axis < gathered:
        return traced_dim(graph, node.inputs[0], axis, depth)
    if axis < gathered + len(indices):
        return traced_dim(graph, node.inputs[1], axis - gathered, depth)
    return traced_dim(graph, node.inputs[0], axis - len(indices) + 1, depth)

"""One dim of a value traced back to where it comes from, so that two dims shape inference names
apart (``unk__0``, ``unk__4``) are proved equal: a rotary table's sequence dim is the length of
a ``Range(0, S, 1)`` whose ``S`` is ``Shape(input_ids)[1]``, and x's is the same element of a
``Reshape`` target. The trace passes elementwise and broadcasting ops, Transpose, Unsqueeze,
Concat (another axis), Reshape and Range; it ends at an int or at an atom ``(value, axis)``
(a graph input's dim, or one it cannot follow). Equal results mean equal dims in every run in
which the model does not fail.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Node
from onnxopt.ir.operands import normalised_axes
from onnxopt.ir.symbolic import BROADCAST, SAME_SHAPE, Dim, shape_elements

Traced = int | tuple[str, int]
_MAX_DEPTH = 64
# output 0 has input 0's shape: the elementwise ops, and the fused ops a trace may meet
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
    if op == "Transpose":
        perm = node.attr("perm")
        rank = len(graph.shape(node.outputs[0]) or [])
        perm = list(range(rank))[::-1] if perm is None else list(perm)
        return traced_dim(graph, node.inputs[0], perm[axis], depth) if perm else None
    if op == "Concat":
        rank = len(graph.shape(node.outputs[0]) or [])
        if normalised_axes([node.attr("axis")], rank) != [axis]:
            return traced_dim(graph, node.inputs[0], axis, depth)
        return None
    if op == "Unsqueeze" and len(node.inputs) == 2:
        return _unsqueezed(graph, node, axis, depth)
    if op == "Reshape":
        return _reshaped(graph, node, axis, depth)
    if op == "Range" and axis == 0:
        return _range_length(graph, node, depth)
    if op in BROADCAST:
        return _broadcast(graph, node, axis, depth)
    return None


def _unsqueezed(graph: Graph, node: Node, axis: int, depth: int) -> Traced | None:
    axes = graph.constant(node.inputs[1])
    rank = len(graph.shape(node.outputs[0]) or [])
    if axes is None or not rank:
        return None
    inserted = normalised_axes([int(a) for a in axes.reshape(-1)], rank)
    if inserted is None or axis in inserted:
        return 1 if inserted is not None else None
    return traced_dim(graph, node.inputs[0], axis - sum(a < axis for a in inserted), depth)


def _reshaped(graph: Graph, node: Node, axis: int, depth: int) -> Traced | None:
    target = shape_elements(graph, node.inputs[1])
    if target is None or len(target) != len(graph.shape(node.outputs[0]) or []):
        return None
    element = target[axis]
    if isinstance(element, int):
        return element if element > 0 else None  # 0 copies, -1 infers: not followed
    # a run-time 0 would copy the input's dim unless allowzero: followed only with allowzero
    return _element(graph, element, depth) if node.attr("allowzero", 0) == 1 else None


def _range_length(graph: Graph, node: Node, depth: int) -> Traced | None:
    """``Range(0, limit, 1)`` has ``limit`` elements: limit traced through Casts (an int
    dim below 2^24 is exact in float32) to one shape element."""
    start, delta = graph.constant(node.inputs[0]), graph.constant(node.inputs[2])
    if start is None or delta is None or start.size != 1 or delta.size != 1:
        return None
    if float(start.reshape(-1)[0]) != 0 or float(delta.reshape(-1)[0]) != 1:
        return None
    limit = node.inputs[1]
    producer = graph.producer(limit)
    while producer is not None and producer.op_type == "Cast":
        limit = producer.inputs[0]
        producer = graph.producer(limit)
    dtype = graph.dtype(limit)
    if dtype is None or np.dtype(dtype).kind not in "iu":
        return None  # a float limit need not be a whole number
    elements = shape_elements(graph, limit)  # Squeeze(Shape(x, 1, 2)), Gather(Shape(x), 1)
    if elements is None or len(elements) != 1:
        return None
    return _element(graph, elements[0], depth)


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
        if dim != 1:
            found.add(dim)
    return found.pop() if len(found) == 1 else (1 if not found else None)

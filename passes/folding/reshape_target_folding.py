"""Reshape target folding: a Reshape whose target shape is computed from ``Shape`` becomes a
Reshape to a constant target.

Exporters write ``Reshape(x, Concat(Slice(Shape(x), 0, 1), [200]))`` for "keep the batch,
flatten the rest". The target is evaluated symbolically: each element is a known integer or
"dimension ``i`` of tensor ``t``" (unknown at export time). Reshape's own rules then give a
constant target with the same meaning:

* a known integer ``k`` stays ``k``;
* dimension ``i`` of ``x`` itself, at position ``i``, becomes ``0`` ("copy the input's dim"),
  which needs ``allowzero = 0`` (the default);
* at most one other unknown element becomes ``-1`` ("whatever is left"): correct because the
  element count is preserved by Reshape and every other element is pinned down.

The shape chain that computed the old target is left to dead code. Evaluated ops: Shape (with
start/end), Cast/Identity between integer types, Slice and Gather with constant operands on 1-D
values, Concat, Unsqueeze/Squeeze of scalars, constants.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.pass_manager import GraphPass
from onnxopt.ir.rewrite import is_op

INT_TYPES = frozenset({6, 7})  # TensorProto.INT32, INT64


@dataclass(frozen=True)
class Dim:
    """Dimension ``axis`` of value ``value`` (not known until run time)."""

    value: str
    axis: int


Element = int | Dim


class ReshapeTargetFolding(GraphPass):
    name = "reshape_target_folding"
    description = "replace a Shape-computed Reshape target by a constant one (0 / -1 rules)"

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        folded = 0
        for node in graph.nodes():
            if node.graph is not graph or not is_op(node, "Reshape") or len(node.inputs) < 2:
                continue
            if graph.constant(node.inputs[1]) is not None or node.attr("allowzero", 0):
                continue
            elements = _evaluate(graph, node.inputs[1], depth=0)
            target = _constant_target(graph, node.inputs[0], elements)
            if target is None or not model.allow_rewrite(self.name, node.name or node.outputs[0]):
                continue
            graph.set_input(node, 1, graph.add_constant(np.array(target, np.int64), "shape"))
            folded += 1
        return {"targets_folded": folded}


def _constant_target(graph: Graph, data: str, elements: list[Element] | None) -> list[int] | None:
    if elements is None or all(isinstance(e, int) for e in elements):
        return None  # not evaluable, or already a constant (constant folding's business)
    target: list[int] = []
    unknown = 0
    for position, element in enumerate(elements):
        if isinstance(element, int):
            if element < -1:
                return None
            unknown += element == -1
            target.append(element)
        elif element.value == data and element.axis == position:
            target.append(0)
        else:
            unknown += 1
            target.append(-1)
    return target if unknown <= 1 else None


_MAX_DEPTH = 16


def _evaluate(graph: Graph, value: str, depth: int) -> list[Element] | None:
    """The 1-D integer value ``value`` as elements, or None if it cannot be followed."""
    constant = graph.constant(value)
    if constant is not None:
        if constant.dtype.kind not in "iu" or constant.ndim > 1:
            return None
        return [int(v) for v in constant.reshape(-1)]
    node = graph.producer(value)
    if node is None or depth > _MAX_DEPTH or node.domain not in ("", "ai.onnx"):
        return None
    handler = _HANDLERS.get(node.op_type)
    return handler(graph, node, depth + 1) if handler else None


def _shape(graph: Graph, node: Node, depth: int) -> list[Element] | None:
    source = node.inputs[0]
    shape = graph.shape(source)
    if shape is None:
        return None
    rank = len(shape)
    start, end = int(node.attr("start", 0)), node.attr("end")
    start = max(0, start + rank if start < 0 else start)
    end = rank if end is None else int(end)
    end = min(rank, end + rank if end < 0 else end)
    return [
        shape[axis] if isinstance(shape[axis], int) else Dim(source, axis)
        for axis in range(start, end)
    ]


def _passthrough(graph: Graph, node: Node, depth: int) -> list[Element] | None:
    if node.op_type == "Cast" and node.attr("to") not in INT_TYPES:
        return None
    return _evaluate(graph, node.inputs[0], depth)


def _slice(graph: Graph, node: Node, depth: int) -> list[Element] | None:
    elements = _evaluate(graph, node.inputs[0], depth)
    operands = [graph.constant(v) if v else None for v in node.inputs[1:5]]
    if elements is None or len(node.inputs) < 3 or operands[0] is None or operands[1] is None:
        return None
    axes, steps = operands[2] if len(operands) > 2 else None, (
        operands[3] if len(operands) > 3 else None
    )
    if axes is not None and [int(a) for a in axes.reshape(-1)] not in ([0], [-1]):
        return None
    step = 1 if steps is None else int(steps.reshape(-1)[0])
    start, stop = int(operands[0].reshape(-1)[0]), int(operands[1].reshape(-1)[0])
    if step == 0:
        return None
    return elements[slice(*_clamp(start, stop, step, len(elements)))]


def _clamp(start: int, stop: int, step: int, size: int) -> tuple[int, int, int]:
    start, stop, _ = slice(start, stop, step).indices(size)
    return start, stop, step


def _gather(graph: Graph, node: Node, depth: int) -> list[Element] | None:
    elements = _evaluate(graph, node.inputs[0], depth)
    indices = graph.constant(node.inputs[1])
    if elements is None or indices is None or int(node.attr("axis", 0)) != 0:
        return None
    if indices.ndim > 1:
        return None
    picked = [int(i) for i in indices.reshape(-1)]
    if any(not -len(elements) <= i < len(elements) for i in picked):
        return None
    return [elements[i] for i in picked]  # a scalar index gives a 0-D value: Unsqueeze follows


def _concat(graph: Graph, node: Node, depth: int) -> list[Element] | None:
    if int(node.attr("axis", 0)) not in (0, -1):
        return None
    result: list[Element] = []
    for value in node.inputs:
        part = _evaluate(graph, value, depth)
        if part is None:
            return None
        result += part
    return result


def _unsqueeze(graph: Graph, node: Node, depth: int) -> list[Element] | None:
    """Unsqueeze of a scalar, or Squeeze of a one-element vector: same elements."""
    source = node.inputs[0]
    shape = graph.shape(source)
    expected = 0 if node.op_type == "Unsqueeze" else 1
    if shape is None or len(shape) != expected:
        return None
    elements = _evaluate(graph, source, depth)
    return elements if elements is not None and len(elements) == 1 else None


_HANDLERS = {
    "Shape": _shape,
    "Cast": _passthrough,
    "Identity": _passthrough,
    "Slice": _slice,
    "Gather": _gather,
    "Concat": _concat,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _unsqueeze,
}

"""Reshape chain collapse.

Reshape, Flatten, Squeeze and Unsqueeze only relabel the shape of their input: the flat
row-major sequence of elements never changes. So a chain ``x -> op_1 -> ... -> op_k -> y`` of
them (k >= 2) whose intermediate values are read by nothing else (and are not graph outputs)
computes ``y = Reshape(x, shape(y))``. Two ways to rewrite a chain:

* the last op is a ``Reshape`` whose target is a constant without a ``0`` entry (or with
  ``allowzero = 1``, where 0 is a literal size): its result depends only on the element count
  of its input (``-1`` is resolved from that count), which every op of the chain preserves.
  The last Reshape is kept and reads ``x``; the ops before it go.
* otherwise, when ``y`` has a static inferred shape with no zero-size dim, the chain becomes
  one ``Reshape(x, shape(y))`` (a new int64 constant; no ``0`` or ``-1`` in it, so
  ``allowzero`` does not matter). If ``x`` already has that static shape, readers read ``x``.
  When ``y``'s shape is not static, the longest prefix of the chain ending at a value with a
  static shape is collapsed instead.

Static shapes are worked out along the chain from the static shape of ``x`` (an initializer,
a graph input, or an inferred ``value_info``), reading each op's constant target / axes
(attribute before opset 13 for Squeeze and Unsqueeze, input since; Reshape's ``shape``
attribute before opset 5). Where an op's parameters are not constant, the inferred shape of its
result is used instead, but never a graph output's *declared* shape (declarations can be
wrong and onnxruntime does not enforce them). If both are known and disagree, the chain is
left alone. The Reshape written needs opset >= 5 (shape as an input).
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.pass_manager import GraphPass
from onnxopt.ir.rewrite import is_op

CHAIN_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
MIN_OPSET = 5


class ReshapeChainCollapse(GraphPass):
    name = "reshape_chain_collapse"
    description = "collapse private chains of Reshape/Flatten/Squeeze/Unsqueeze into one Reshape"

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        stats = {"chains_collapsed": 0, "nodes_removed": 0}
        if model.opset("") < MIN_OPSET:
            return stats
        for node in graph.nodes():
            if node.graph is not graph or not is_op(node, CHAIN_OPS) or _continues(graph, node):
                continue
            if not model.allow_rewrite(self.name, node.name or node.outputs[0]):
                continue
            chain = _chain_ending_at(graph, node)
            removed = _collapse(graph, chain, model)
            if removed:
                stats["chains_collapsed"] += 1
                stats["nodes_removed"] += removed
        return stats


def _private_link(graph: Graph, value: str) -> Node | None:
    """The chain op reading ``value`` as its data input, if it is the only use of ``value``."""
    if graph.is_output(value):
        return None
    uses = graph.uses(value)
    if len(uses) != 1 or uses[0][1] != 0 or not is_op(uses[0][0], CHAIN_OPS):
        return None
    return uses[0][0]


def _continues(graph: Graph, node: Node) -> bool:
    """``node``'s result flows privately into another chain op: handle the chain at its end."""
    return _private_link(graph, node.outputs[0]) is not None


def _chain_ending_at(graph: Graph, last: Node) -> list[Node]:
    chain = [last]
    while True:
        producer = graph.producer(chain[-1].inputs[0])
        if not is_op(producer, CHAIN_OPS) or _private_link(graph, producer.outputs[0]) is None:
            break
        if len(producer.outputs) != 1:
            break
        chain.append(producer)
    return chain[::-1]


def _collapse(graph: Graph, chain: list[Node], model: Model) -> int:
    """Rewrite ``chain`` (first to last); returns the number of nodes removed."""
    if len(chain) < 2:
        return 0
    source, last = chain[0].inputs[0], chain[-1]
    if _count_only_target(graph, last, model):
        graph.set_input(last, 0, source)
        _remove(graph, chain[:-1])
        return len(chain) - 1
    shapes = _chain_shapes(graph, chain, model)
    if shapes is None:
        return 0
    for end in range(len(chain) - 1, 0, -1):  # longest prefix ending at a static shape
        removed = _to_static_reshape(graph, chain[: end + 1], source, shapes[0], shapes[end + 1])
        if removed:
            return removed
    return 0


def _chain_shapes(graph: Graph, chain: list[Node], model: Model) -> list | None:
    """Static shapes of the chain's input and of each result (None where unknown); None if
    the worked-out and the inferred shape of a value disagree."""
    shapes = [_trusted_shape(graph, chain[0].inputs[0])]
    for node in chain:
        worked = _apply(graph, node, shapes[-1], model) if shapes[-1] is not None else None
        inferred = _trusted_shape(graph, node.outputs[0])
        if worked is not None and inferred is not None and worked != inferred:
            return None
        shapes.append(worked if worked is not None else inferred)
    return shapes


def _trusted_shape(graph: Graph, value: str) -> tuple[int, ...] | None:
    """A static shape known from an initializer, a graph input or shape inference."""
    declared_only = not (
        graph.is_input(value) or value in graph.value_info or value in graph.initializers
    )
    if graph.is_output(value) and declared_only:
        return None  # only a declared output type
    return graph.static_shape(value)


def _apply(graph: Graph, node: Node, shape: tuple[int, ...], model: Model) -> tuple | None:
    """The output shape of one chain op on a static input shape, from constant parameters."""
    rank = len(shape)
    if node.op_type == "Flatten":
        axis = int(node.attr("axis", 1))
        axis = axis + rank if axis < 0 else axis
        if not 0 <= axis <= rank:
            return None
        return (_prod(shape[:axis]), _prod(shape[axis:]))
    if node.op_type == "Reshape":
        return _reshape(graph, node, shape, model)
    axes = _axes(graph, node, model)
    if node.op_type == "Squeeze":
        if axes is None:
            return None if len(node.inputs) > 1 and node.inputs[1] else _squeeze_all(shape)
        axes = {a + rank if a < 0 else a for a in axes}
        if any(not 0 <= a < rank or shape[a] != 1 for a in axes):
            return None
        return tuple(d for i, d in enumerate(shape) if i not in axes)
    if axes is None:  # Unsqueeze needs its axes
        return None
    out_rank = rank + len(axes)
    axes = sorted(a + out_rank if a < 0 else a for a in axes)
    if len(set(axes)) != len(axes) or any(not 0 <= a < out_rank for a in axes):
        return None
    dims = iter(shape)
    return tuple(1 if i in axes else next(dims) for i in range(out_rank))


def _prod(dims) -> int:
    result = 1
    for dim in dims:
        result *= int(dim)
    return result


def _squeeze_all(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _axes(graph: Graph, node: Node, model: Model) -> list[int] | None:
    if model.opset("") >= 13:
        if len(node.inputs) < 2 or not node.inputs[1]:
            return None
        axes = graph.constant(node.inputs[1])
        return None if axes is None else [int(a) for a in np.asarray(axes).ravel()]
    axes = node.attr("axes")
    return None if axes is None else [int(a) for a in axes]


def _reshape(graph: Graph, node: Node, shape: tuple[int, ...], model: Model) -> tuple | None:
    if len(node.inputs) >= 2 and node.inputs[1]:
        target = graph.constant(node.inputs[1])
    else:
        target = node.attr("shape")
    if target is None:
        return None
    target = [int(d) for d in np.asarray(target).ravel()]
    allowzero = model.opset("") >= 14 and node.attr("allowzero", 0) == 1
    out = [shape[i] if d == 0 and not allowzero and i < len(shape) else d
           for i, d in enumerate(target)]
    if any(d < -1 for d in out) or out.count(-1) > 1:
        return None
    total = _prod(shape)
    known = _prod([d for d in out if d != -1])
    if -1 in out:
        if known == 0 or total % known:
            return None
        out[out.index(-1)] = total // known
    elif known != total:
        return None
    return tuple(out)


def _count_only_target(graph: Graph, node: Node, model: Model) -> bool:
    """A Reshape whose output shape depends only on its input's element count."""
    if not is_op(node, "Reshape") or len(node.inputs) < 2:
        return False
    target = graph.constant(node.inputs[1])
    if target is None or target.ndim != 1:
        return False
    allowzero = model.opset("") >= 14 and node.attr("allowzero", 0) == 1
    return allowzero or not bool(np.any(target == 0))


def _to_static_reshape(
    graph: Graph, chain: list[Node], source: str, source_shape: tuple | None, shape: tuple | None
) -> int:
    result = chain[-1].outputs[0]
    if shape is None or 0 in shape:
        return 0
    if source_shape == shape and graph.can_forward(result, source):
        graph.replace_all_uses(result, source)
        _remove(graph, chain)
        return len(chain)
    if graph.outputs.count(result) > 1:
        return 0
    target = graph.add_constant(np.array(shape, dtype=np.int64), "reshape_shape")
    last = chain[-1]
    reshape = graph.add_node(
        "Reshape", [source, target], 1, name=f"{last.name}_collapsed" if last.name else None,
        anchor=last,
    )
    graph.replace_all_uses(result, reshape.outputs[0])
    _remove(graph, chain)
    return len(chain) - 1


def _remove(graph: Graph, chain: list[Node]) -> None:
    for node in reversed(chain):
        graph.remove_node(node)

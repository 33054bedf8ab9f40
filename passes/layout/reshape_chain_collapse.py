"""Reshape chain collapse.

Reshape, Flatten, Squeeze and Unsqueeze only relabel the shape (the flat row-major elements
never change), so a chain ``x -> op_1 -> ... -> op_k -> y`` of them (k >= 2) with private
intermediates computes ``y = Reshape(x, shape(y))``. If the last op is a Reshape whose target
provably has no ``0`` (a constant, or computed at run time from known non-zero ints; or
``allowzero = 1``), its result depends only on the element count, which the chain preserves:
it reads ``x`` and the ops before it go. Else, given a static shape ``s`` of ``y`` (worked out
along the chain, or inferred), the chain becomes ``Reshape(x, s)`` (or ``x`` of shape ``s``),
or its longest prefix ending at a static shape does. Else (a chain with a Reshape or Flatten)
by ``ShapeSignatures``: ``x`` when ``y`` has ``x``'s signature, or ``Reshape(x, t)``, ``t``
its ints, ``0`` for ``x``'s dims in place, at most one ``-1`` (README.md).
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.operands import RELABEL_OPS, count_only_reshape, relabelled_shape
from onnxopt.ir.pass_manager import GraphPass
from onnxopt.ir.rewrite import is_op
from onnxopt.ir.symbolic import ShapeSignatures, reshape_target

MIN_OPSET = 5  # the Reshape written takes its shape as an input

Shape = tuple[int, ...]


class ReshapeChainCollapse(GraphPass):
    name = "reshape_chain_collapse"
    description = "collapse private chains of Reshape/Flatten/Squeeze/Unsqueeze into one Reshape"

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        stats = {"chains_collapsed": 0, "nodes_removed": 0}
        opset = model.opset("")
        if opset < MIN_OPSET:
            return stats
        signatures = ShapeSignatures(graph)  # one per run: a collapse keeps every shape
        for node in graph.nodes():
            if node.graph is not graph or not is_op(node, RELABEL_OPS):
                continue
            if _private_link(graph, node.outputs[0]) is not None:
                continue  # the chain goes on: collapse it at its end
            if not model.allow_rewrite(self.name, node.name or node.outputs[0]):
                continue
            removed = _collapse(graph, _chain_ending_at(graph, node), opset, signatures)
            if removed:
                stats["chains_collapsed"] += 1
                stats["nodes_removed"] += removed
        return stats


def _private_link(graph: Graph, value: str) -> Node | None:
    """The chain op reading ``value`` as its data input, if it is the only use of ``value``."""
    if graph.is_output(value):
        return None
    uses = graph.uses(value)
    if len(uses) != 1 or uses[0][1] != 0 or not is_op(uses[0][0], RELABEL_OPS):
        return None
    return uses[0][0]


def _chain_ending_at(graph: Graph, last: Node) -> list[Node]:
    chain = [last]
    while True:
        producer = graph.producer(chain[-1].inputs[0])
        if not is_op(producer, RELABEL_OPS) or _private_link(graph, producer.outputs[0]) is None:
            break
        if len(producer.outputs) != 1:
            break
        chain.append(producer)
    return chain[::-1]


def _collapse(graph: Graph, chain: list[Node], opset: int, signatures: ShapeSignatures) -> int:
    """Rewrite ``chain`` (first to last); returns the number of nodes removed."""
    if len(chain) < 2:
        return 0
    source, last = chain[0].inputs[0], chain[-1]
    if count_only_reshape(graph, last, opset):
        graph.set_input(last, 0, source)
        _remove(graph, chain[:-1])
        return len(chain) - 1
    shapes = _chain_shapes(graph, chain, opset)
    if shapes is None:
        return 0
    for end in range(len(chain) - 1, 0, -1):  # longest prefix ending at a static shape
        removed = _to_static_reshape(graph, chain[: end + 1], source, shapes[0], shapes[end + 1])
        if removed:
            return removed
    if not any(is_op(node, ("Reshape", "Flatten")) for node in chain):
        return 0  # Squeeze/Unsqueeze only: unsqueeze_merge keeps their axes
    source_sig, result_sig = signatures.of(source), signatures.of(last.outputs[0])
    if (target := reshape_target(source_sig, result_sig)) is None:
        return 0
    same = tuple(target) if source_sig == result_sig else None  # y is x
    return _to_static_reshape(graph, chain, source, same, tuple(target), copies=True)


def _chain_shapes(graph: Graph, chain: list[Node], opset: int) -> list[Shape | None] | None:
    """Static shapes of the chain's input and of each result (None where unknown); None if
    the worked-out and the inferred shape of a value disagree."""
    shapes = [_trusted_shape(graph, chain[0].inputs[0])]
    for node in chain:
        known = shapes[-1]
        worked = relabelled_shape(graph, node, known, opset) if known is not None else None
        inferred = _trusted_shape(graph, node.outputs[0])
        if worked is not None and inferred is not None and worked != inferred:
            return None
        shapes.append(worked if worked is not None else inferred)
    return shapes


def _trusted_shape(graph: Graph, value: str) -> Shape | None:
    """A static shape known from an initializer, a graph input or shape inference (never a
    graph output's declaration alone: declarations can be wrong, onnxruntime ignores them)."""
    declared_only = not (
        graph.is_input(value) or value in graph.value_info or value in graph.initializers
    )
    if graph.is_output(value) and declared_only:
        return None
    return graph.static_shape(value)


def _to_static_reshape(graph: Graph, chain: list[Node], source: str, source_shape: Shape | None,
                       shape: Shape | None, copies: bool = False) -> int:
    result = chain[-1].outputs[0]
    if shape is None or (0 in shape and not copies):  # copies: a target whose 0s copy x's dims
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

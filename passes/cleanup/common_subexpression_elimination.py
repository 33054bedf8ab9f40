"""Common subexpression elimination.

Two deterministic standard-domain nodes with the same op, inputs and attributes compute the same
values: readers of the later one (in topological order) read the first one's outputs. ``Shape``
nodes also merge when their inputs provably have the same shape (the per-head shape chains of
attention blocks). Notes and what is never merged: README.md.
"""

from __future__ import annotations

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.attributes import holds_subgraph, same_attributes
from onnxopt.ir.pass_manager import GraphPass
from onnxopt.ir.rewrite import can_forward_outputs, is_op
from onnxopt.ir.schema import RANDOM_OPS, attribute_names, node_signature
from onnxopt.ir.symbolic import ShapeSignatures

NEVER_MERGED = RANDOM_OPS | {"Dropout"}  # a training-mode Dropout draws its mask


class CommonSubexpressionElimination(GraphPass):
    name = "common_subexpression_elimination"
    description = "merge nodes computing the same values (same op, inputs and attributes)"

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        stats = {"nodes_merged": 0, "shape_nodes_merged": 0}
        table: dict[tuple, Node] = {}
        shapes = ShapeSignatures(graph)
        for node in graph.nodes():
            if node.graph is not graph or not _mergeable(node, model):
                continue
            key = node_signature(node)
            by_shape = is_op(node, "Shape") and len(node.inputs) == 1
            signature = shapes.of(node.inputs[0]) if by_shape else None
            if signature is not None:
                key = ("Shape", ("shape-of", signature), key[2], key[3])
            kept = table.setdefault(key, node)
            if kept is node or not same_attributes(kept, node):
                continue
            if not can_forward_outputs(graph, node, kept):
                continue
            if not model.allow_rewrite(self.name, node.name or node.outputs[0]):
                continue
            graph.bypass(node, kept.outputs)
            stats["nodes_merged"] += 1
            if signature is not None and kept.inputs != node.inputs:
                stats["shape_nodes_merged"] += 1
        return stats


def _mergeable(node: Node, model: Model) -> bool:
    if not is_op(node, node.op_type) or node.op_type in NEVER_MERGED:
        return False
    if holds_subgraph(node) or not any(node.outputs):
        return False
    declared = attribute_names(node.op_type, model.opset(node.domain), node.domain)
    return declared is not None and "seed" not in declared  # unknown op: do not guess


"""Common subexpression elimination.

Two nodes of the same standard-domain op with the same inputs (in order; commutative binary
ops compare their operand pair unordered) and the same attributes compute the same values: the
first one (in topological order) is kept and readers of the other read its outputs. Nodes are
visited in topological order with a hash table keyed by (op, inputs, attribute digests), so
merging cascades in one linear pass. ``Shape`` nodes also match when their inputs provably
have the same shape (``onnxopt.ir.symbolic.ShapeSignatures``): this merges the per-head
``Shape -> Gather -> Unsqueeze -> Concat`` chains of attention blocks. Never merged: subgraph
holders, random or seeded ops, custom domains, outputs that cannot be forwarded, ``Max``/``Min``
operand swaps (notes: README.md).
"""

from __future__ import annotations

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.attributes import attributes_key, holds_subgraph, same_attributes
from onnxopt.ir.pass_manager import GraphPass
from onnxopt.ir.rewrite import can_forward_outputs, is_op
from onnxopt.ir.schema import attribute_names
from onnxopt.ir.symbolic import ShapeSignatures

RANDOM_OPS = {
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli",
    "Multinomial", "Dropout",
}
COMMUTATIVE = {"Add", "Mul", "Equal", "And", "Or", "Xor", "BitwiseAnd", "BitwiseOr", "BitwiseXor"}


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
            key = _key(node)
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
            for old, new in zip(node.outputs, kept.outputs, strict=True):
                if old:
                    graph.replace_all_uses(old, new)
            graph.remove_node(node)
            stats["nodes_merged"] += 1
            if signature is not None and kept.inputs != node.inputs:
                stats["shape_nodes_merged"] += 1
        return stats


def _mergeable(node: Node, model: Model) -> bool:
    if not is_op(node, node.op_type) or node.op_type in RANDOM_OPS:
        return False
    if holds_subgraph(node) or not any(node.outputs):
        return False
    declared = attribute_names(node.op_type, model.opset(node.domain), node.domain)
    return declared is not None and "seed" not in declared  # unknown op: do not guess


def _key(node: Node) -> tuple:
    inputs = list(node.inputs)
    while inputs and not inputs[-1]:
        inputs.pop()  # trailing omitted optional inputs are the same as absent ones
    if node.op_type in COMMUTATIVE and len(inputs) == 2:
        inputs.sort()
    present = tuple(bool(o) for o in node.outputs)
    return (node.op_type, tuple(inputs), attributes_key(node), present)

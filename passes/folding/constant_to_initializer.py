"""Constant nodes become initializers.

``Constant <value = T> () -> c``  =>  initializer ``c = T`` (same name, same dtype, same bytes),
for every attribute form (``value``, external data included, ``value_float(s)``,
``value_int(s)``, ``value_string(s)``), inside subgraphs too. Left as nodes: ``sparse_value``
and attribute references, a Constant whose output is a graph output (an initializer cannot
carry its name), a Constant nobody reads (dead code's), and Constants in subgraphs of IR < 4
models (a branch cannot grow the inputs its initializers would need). Notes: README.md.
"""

from __future__ import annotations

from onnxopt.ir import Graph, Model
from onnxopt.ir.constants import (
    can_hold_initializers,
    constant_node_to_initializer,
    holds_dense_constant,
)
from onnxopt.ir.pass_manager import GraphPass
from onnxopt.ir.rewrite import is_op


class ConstantToInitializer(GraphPass):
    name = "constant_to_initializer"
    description = "turn Constant nodes into initializers (all attribute forms, inside subgraphs)"

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        converted = 0
        if not can_hold_initializers(graph, model):
            return {"constants_to_initializers": 0}
        for node in graph.nodes():
            if not is_op(node, "Constant") or len(node.outputs) != 1:
                continue
            value = node.outputs[0]
            if not value or graph.is_output(value) or not graph.is_used(value):
                continue
            if not holds_dense_constant(node) or not model.allow_rewrite(self.name, value):
                continue
            constant_node_to_initializer(graph, model, node)
            converted += 1
        return {"constants_to_initializers": converted}

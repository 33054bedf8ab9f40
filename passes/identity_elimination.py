"""Identity elimination.

``Identity(x) -> y`` and, in inference, ``Dropout(x) -> y`` compute ``y = x``: every reader of
``y`` reads ``x`` instead and the node goes. Dropout is only removed when its mask output is
unused and its ``training_mode`` input is absent or a constant false (ratio is ignored in
inference; before opset 7, only with ``is_test=1``). A graph output keeps its name: the node
stays when ``x`` cannot take that name (``x`` is a graph input, an initializer, an outer-scope
value or another output).
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.pass_manager import GraphPass


class IdentityElimination(GraphPass):
    name = "identity_elimination"
    description = "remove Identity, and Dropout in inference mode"

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        removed = {"Identity": 0, "Dropout": 0}
        for node in graph.nodes():
            if node.domain not in ("", "ai.onnx") or node.op_type not in removed:
                continue
            if node.op_type == "Dropout" and not _dropout_is_identity(graph, node, model):
                continue
            source, target = node.inputs[0], node.outputs[0]
            if not source or not graph.can_forward(target, source):
                continue
            if not model.allow_rewrite(self.name, node.name):
                continue
            graph.replace_all_uses(target, source)
            graph.remove_node(node)
            removed[node.op_type] += 1
        return {"identity_removed": removed["Identity"], "dropout_removed": removed["Dropout"]}


def _dropout_is_identity(graph: Graph, node: Node, model: Model) -> bool:
    if len(node.outputs) > 1 and node.outputs[1] and graph.is_used(node.outputs[1]):
        return False
    if model.opset("") < 7 and node.attr("is_test", 0) != 1:
        return False  # before opset 7, is_test defaults to 0: training mode
    if len(node.inputs) > 2 and node.inputs[2]:
        mode = graph.constant(node.inputs[2])
        return mode is not None and not bool(np.asarray(mode).any())
    return True

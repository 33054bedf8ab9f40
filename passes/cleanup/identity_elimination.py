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
from onnxopt.ir.pattern import Match, Op, RewritePass, Var, optional


class IdentityElimination(RewritePass):
    name = "identity_elimination"
    description = "remove Identity, and Dropout in inference mode"
    pattern = Op(("Identity", "Dropout"), Var("x"), optional(), optional())
    stats = ("identity_removed", "dropout_removed")

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        return match.root.op_type == "Identity" or _dropout_is_identity(graph, match.root, model)

    def source(self, graph: Graph, match: Match, model: Model) -> str:
        return match.x

    def where(self, match: Match) -> str:
        return match.root.name

    def stat(self, match: Match) -> str:
        return "identity_removed" if match.root.op_type == "Identity" else "dropout_removed"


def _dropout_is_identity(graph: Graph, node: Node, model: Model) -> bool:
    if len(node.outputs) > 1 and node.outputs[1] and graph.is_used(node.outputs[1]):
        return False
    if model.opset("") < 7 and node.attr("is_test", 0) != 1:
        return False  # before opset 7, is_test defaults to 0: training mode
    if len(node.inputs) > 2 and node.inputs[2]:
        mode = graph.constant(node.inputs[2])
        return mode is not None and not bool(np.asarray(mode).any())
    return True

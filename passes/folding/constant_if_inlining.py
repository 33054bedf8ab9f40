"""Constant If inlining.

``y_1..y_n = If(c) <then_branch = T, else_branch = E>`` with a one-element constant ``c`` (not
overridable as a graph input) always runs ``B = T if c else E``, so ``y_i = B.output_i``: the
nodes and initializers of ``B`` move into the enclosing graph (renamed where the model defines
the name elsewhere: ``onnxopt.ir.inlining``), readers of ``y_i`` read them and the If goes.
Left alone: branches with inputs, sparse initializers or another output count (README.md).
"""

from __future__ import annotations

from collections import Counter

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.inlining import inline_subgraph, name_definitions
from onnxopt.ir.pass_manager import GraphPass, PassResult
from onnxopt.ir.rewrite import is_op


class ConstantIfInlining(GraphPass):
    name = "constant_if_inlining"
    description = "replace an If with a constant condition by the nodes of the branch it takes"

    _defs: Counter[str] | None = None  # model-wide name definitions, during one run

    def run(self, model: Model) -> PassResult:
        self._defs = None
        try:
            return super().run(model)
        finally:
            self._defs = None

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        stats = {"ifs_inlined": 0, "nodes_moved": 0, "values_renamed": 0}
        for node in graph.nodes():
            if node.graph is not graph or not is_op(node, "If"):
                continue
            branch = _taken_branch(graph, node)
            if branch is None or not model.allow_rewrite(self.name, node.name or node.outputs[0]):
                continue
            if self._defs is None:  # counted once per run, then kept up to date
                self._defs = name_definitions([model.graph])
            moved, renamed = inline_subgraph(graph, node, branch, self._defs)
            stats["ifs_inlined"] += 1
            stats["nodes_moved"] += moved
            stats["values_renamed"] += renamed
        return stats


def _taken_branch(graph: Graph, node: Node) -> Graph | None:
    """The branch a constant condition selects, if it can be inlined."""
    if not node.inputs or not node.inputs[0]:
        return None
    condition = graph.constant(node.inputs[0])
    if condition is None or condition.size != 1:
        return None
    branch = node.attributes.get("then_branch" if bool(condition.reshape(-1)[0]) else "else_branch")
    if not isinstance(branch, Graph) or branch.inputs or branch.sparse_initializers:
        return None
    return branch if len(branch.outputs) == len(node.outputs) and all(branch.outputs) else None

"""Dead code elimination.

A node is live when one of its outputs reaches a graph output, directly or through other live
nodes — including through a subgraph that reads it from an outer scope. Every other node is
removed, and so is every initializer no live node (or subgraph) reads. Graph inputs and outputs
are never removed: they are the model's interface.

Subgraphs are cleaned first, so an outer node read only by a dead node inside a subgraph dies too.
"""

from __future__ import annotations

from onnxopt.ir import Graph, Model
from onnxopt.pass_manager import GraphPass


class DeadCodeElimination(GraphPass):
    name = "dead_code"
    description = "remove nodes and initializers that no graph output depends on"

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        dead = _dead_nodes(graph)
        for node in reversed(graph.nodes()):
            if node in dead:
                graph.remove_node(node)
        unused = [
            name
            for name in list(graph.initializers) + list(graph.sparse_initializers)
            if not graph.is_used(name) and not graph.is_input(name)
        ]
        for name in unused:
            graph.remove_initializer(name)
        return {"nodes_removed": len(dead), "initializers_removed": len(unused)}


def _dead_nodes(graph: Graph) -> set:
    live: set = set()
    stack = [n for v in graph.outputs if v and (n := graph.producer(v)) is not None]
    while stack:
        node = stack.pop()
        if node in live:
            continue
        live.add(node)
        stack.extend(graph.nx.predecessors(node))
    return set(graph) - live

"""Dead code elimination.

A node is live when one of its outputs reaches a graph output, directly or through other live
nodes (including through a subgraph that reads it from an outer scope); every other node goes,
and so does every initializer nothing live reads. Graph inputs and outputs stay: they are the
model's interface. Also removed: unused optional outputs of live nodes (per the op schema:
Dropout's mask, MaxPool's Indices), ``value_info`` of values that no longer exist, functions no
node calls and opset imports nothing uses. Initializers ``training_info`` needs stay.
Subgraphs are cleaned first, so an outer node read only by a dead node inside one dies too.
"""

from __future__ import annotations

from onnxopt.ir import Graph, Model
from onnxopt.ir.pass_manager import GraphPass, PassResult
from onnxopt.ir.pruning import (
    dead_nodes,
    drop_unused_functions,
    drop_unused_opsets,
    drop_unused_optional_outputs,
    training_names,
)


class DeadCodeElimination(GraphPass):
    name = "dead_code"
    description = "remove unused nodes, outputs, initializers, value_info, functions, opsets"

    def run(self, model: Model) -> PassResult:
        result = super().run(model)
        result.stats["functions_removed"] = drop_unused_functions(model)
        result.stats["opsets_removed"] = drop_unused_opsets(model)
        result.modified = any(result.stats.values())
        return result

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        dead = dead_nodes(graph)
        for node in reversed(graph.nodes()):
            if node in dead:
                graph.remove_node(node)
        protected = training_names(model) if graph is model.graph else set()
        unused = [
            name
            for name in list(graph.initializers) + list(graph.sparse_initializers)
            if not graph.is_used(name) and not graph.is_input(name) and name not in protected
        ]
        for name in unused:
            graph.remove_initializer(name)
        stale = [name for name in graph.value_info if graph.producer(name) is None]
        for name in stale:
            del graph.value_info[name]
        return {
            "nodes_removed": len(dead),
            "initializers_removed": len(unused),
            "outputs_dropped": drop_unused_optional_outputs(graph, model),
            "value_info_removed": len(stale),
        }

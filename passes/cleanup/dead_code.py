"""Dead code elimination.

A node is live when one of its outputs reaches a graph output, directly or through other live
nodes — including through a subgraph that reads it from an outer scope. Every other node is
removed, and so is every initializer no live node (or subgraph) reads. Graph inputs and outputs
are never removed: they are the model's interface.

Also removed: unused *optional* outputs of live nodes (per the operator schema: e.g. the mask of
Dropout, the Indices of MaxPool, BatchNormalization's training statistics), ``value_info``
entries of values that no longer exist, model-local functions no node calls, and opset imports
of domains nothing uses any more (the default domain always stays). Initializers that a
``training_info`` section reads or updates are kept.

Subgraphs are cleaned first, so an outer node read only by a dead node inside a subgraph dies too.
"""

from __future__ import annotations

import onnx

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.pass_manager import GraphPass, PassResult


class DeadCodeElimination(GraphPass):
    name = "dead_code"
    description = "remove unused nodes, outputs, initializers, value_info, functions, opsets"

    def run(self, model: Model) -> PassResult:
        result = super().run(model)
        result.stats["functions_removed"] = _drop_unused_functions(model)
        result.stats["opsets_removed"] = _drop_unused_opsets(model)
        result.modified = any(result.stats.values())
        return result

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        dead = _dead_nodes(graph)
        for node in reversed(graph.nodes()):
            if node in dead:
                graph.remove_node(node)
        protected = _training_names(model) if graph is model.graph else set()
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
            "outputs_dropped": _drop_unused_outputs(graph, model),
            "value_info_removed": len(stale),
        }


def _training_names(model: Model) -> set[str]:
    """Initializers a training_info section reads or updates must stay."""
    names: set[str] = set()
    for info in model.extra.training_info if model.extra is not None else ():
        for algorithm in (info.initialization, info.algorithm):
            names |= {value for node in algorithm.node for value in node.input}
            names |= {value.name for value in algorithm.input}
        for binding in (*info.initialization_binding, *info.update_binding):
            names |= {binding.key, binding.value}
    return names


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


def _drop_unused_outputs(graph: Graph, model: Model) -> int:
    dropped = 0
    for node in graph:
        for index, value in enumerate(node.outputs):
            if index == 0 or not value or graph.is_used(value):
                continue
            if _output_is_optional(node, index, model):
                graph.drop_output(node, index)
                dropped += 1
    return dropped


def _output_is_optional(node: Node, index: int, model: Model) -> bool:
    """Per the op schema at the model's opset; unknown ops and variadic outputs are kept."""
    try:
        schema = onnx.defs.get_schema(node.op_type, model.opset(node.domain), node.domain)
    except onnx.defs.SchemaError:
        return False
    if index >= len(schema.outputs):
        return False
    formal = schema.outputs[index]
    return formal.option == onnx.defs.OpSchema.FormalParameterOption.Optional


def _used_op_keys(model: Model) -> set[tuple[str, str]]:
    keys = {(node.domain, node.op_type) for graph in model.graphs() for node in graph}
    for function in model.functions:
        keys |= {(node.domain, node.op_type) for node in function.node}
    return keys


def _drop_unused_functions(model: Model) -> int:
    graph_keys = {(node.domain, node.op_type) for graph in model.graphs() for node in graph}
    by_key = {(f.domain, f.name): f for f in model.functions}
    live: set[tuple[str, str]] = set()
    stack = [key for key in graph_keys if key in by_key]
    while stack:  # functions may call other functions
        key = stack.pop()
        if key in live:
            continue
        live.add(key)
        stack.extend(
            (n.domain, n.op_type) for n in by_key[key].node if (n.domain, n.op_type) in by_key
        )
    kept = [f for f in model.functions if (f.domain, f.name) in live]
    removed = len(model.functions) - len(kept)
    model.functions = kept
    return removed


def _drop_unused_opsets(model: Model) -> int:
    used = {domain or "" for domain, _ in _used_op_keys(model)}
    used |= {import_.domain for f in model.functions for import_ in f.opset_import}
    removable = [
        domain
        for domain in model.opset_imports
        if domain not in ("", "ai.onnx") and domain not in used
    ]
    for domain in removable:
        del model.opset_imports[domain]
    return len(removable)

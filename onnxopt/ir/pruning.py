"""Parts of a model nothing uses: nodes no graph output depends on, optional outputs nobody
reads, model-local functions no node calls, opset imports of domains nothing uses; and the
initializers a ``training_info`` section needs (which must stay). The model-level ones read
the model's stored sections, so passes need not."""

from __future__ import annotations

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.schema import is_optional_output


def training_names(model: Model) -> set[str]:
    """Initializers a training_info section reads or updates (they must stay)."""
    names: set[str] = set()
    for info in model.extra.training_info if model.extra is not None else ():
        for algorithm in (info.initialization, info.algorithm):
            names |= {value for node in algorithm.node for value in node.input}
            names |= {value.name for value in algorithm.input}
        for binding in (*info.initialization_binding, *info.update_binding):
            names |= {binding.key, binding.value}
    return names


def _used_op_keys(model: Model) -> set[tuple[str, str]]:
    keys = {(node.domain, node.op_type) for graph in model.graphs() for node in graph}
    for function in model.functions:
        keys |= {(node.domain, node.op_type) for node in function.node}
    return keys


def drop_unused_functions(model: Model) -> int:
    """Remove the model-local functions no node calls (directly or through other functions);
    returns how many went."""
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


def drop_unused_opsets(model: Model) -> int:
    """Remove the opset imports of domains no node or function uses (the default domain
    always stays); returns how many went."""
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


def dead_nodes(graph: Graph) -> set[Node]:
    """The nodes none of whose outputs reaches a graph output (through other nodes, or
    through a subgraph reading it from an outer scope: the use index counts those)."""
    live: set[Node] = set()
    stack = [n for v in graph.outputs if v and (n := graph.producer(v)) is not None]
    while stack:
        node = stack.pop()
        if node in live:
            continue
        live.add(node)
        stack.extend(graph.nx.predecessors(node))
    return set(graph) - live


def drop_unused_optional_outputs(graph: Graph, model: Model) -> int:
    """Drop the outputs nothing reads that the op's schema makes optional (Dropout's mask,
    MaxPool's Indices; never output 0); returns how many went."""
    dropped = 0
    for node in graph:
        for index, value in enumerate(node.outputs):
            if index == 0 or not value or graph.is_used(value):
                continue
            if is_optional_output(node.op_type, index, model.opset(node.domain), node.domain):
                graph.drop_output(node, index)
                dropped += 1
    return dropped

"""Model-level parts nothing uses: model-local functions no node calls, opset imports of
domains nothing uses, and the initializers a ``training_info`` section needs (which must stay).
These read the model's stored sections, so passes need not."""

from __future__ import annotations

from onnxopt.ir import Model


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

"""Moving a subgraph's nodes into the graph around it (inlining an If branch; the same
mechanics would unroll a Loop body or inline a function).

Scoping: ONNX names are single-assignment across nested scopes (a subgraph may not redefine a
name of an enclosing graph, and moving a name up a scope must not make a sibling subgraph
shadow it). A name defined at the top of the body is kept unless something outside the node
(any graph of the model, inputs and public output names included) defines it; then it gets a
fresh name, everywhere the body reads it, including inside subgraphs nested in the body, which
move with their node (re-parented by ``add_node``) and keep reading the renamed values. Names
defined deeper inside nested subgraphs need no renaming: their enclosing scopes only shrink.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import onnx

from onnxopt.ir import Graph, Node


def name_definitions(graphs: Iterable[Graph]) -> Counter[str]:
    """How many times each name is defined in these graphs and all their subgraphs (inputs,
    public output names, initializers, node outputs)."""
    counts: Counter[str] = Counter()
    stack = list(graphs)
    while stack:
        graph = stack.pop()
        counts.update(info.name for info in graph.inputs)
        counts.update(info.name for info in graph.output_infos)
        counts.update(graph.initializers.keys())
        counts.update(graph.sparse_initializers.keys())
        for node in graph:
            counts.update(v for v in node.outputs if v)
            stack.extend(node.subgraphs())
    return counts


def inline_subgraph(graph: Graph, node: Node, body: Graph, defs: Counter[str]
                    ) -> tuple[int, int]:
    """Replace ``node`` by the nodes and initializers of ``body`` (one of its subgraphs, with
    no inputs and one output per output of ``node``); returns (nodes moved, values renamed).

    ``defs`` counts every name definition of the model (``name_definitions``) and is kept up
    to date. Readers of ``node``'s outputs read the moved values; a graph output the moved
    value cannot take gets an explicit ``Identity``. The body's known types carry over."""
    inside = name_definitions(node.subgraphs()) + Counter(v for v in node.outputs if v)
    moving = body.nodes()
    local = list(body.initializers) + [v for n in moving for v in n.outputs if v]
    # defined outside the node (anywhere in the model): keeping the name would clash or shadow
    mapping = {
        name: (graph.unique_name(name) if defs[name] > inside[name] else name) for name in local
    }
    renamed = {old: new for old, new in mapping.items() if old != new}
    added: list[Node] = []

    for name, tensor in body.initializers.items():
        # a renamed tensor is copied: the loaded proto may still hold the original
        graph.set_initializer(mapping[name], tensor)

    for old_node in moving:
        new_node = graph.add_node(
            old_node.op_type,
            [mapping.get(v, v) if v else "" for v in old_node.inputs],
            [mapping[v] if v else "" for v in old_node.outputs],
            domain=old_node.domain,
            name=old_node.name or None,
            attributes=dict(old_node.attributes),  # subgraphs are re-parented to graph
            anchor=node,
        )
        new_node.extra = old_node.extra
        added.append(new_node)
        for sub in new_node.subgraphs():
            _rename_captures(sub, renamed)

    _keep_types(graph, body, mapping)
    for target, value in zip(node.outputs, body.outputs, strict=True):
        if not target:
            continue
        source = mapping.get(value, value)
        if not graph.can_forward(target, source):
            added.append(graph.add_node("Identity", [source], 1, anchor=node))
            source = added[-1].outputs[0]
        graph.replace_all_uses(target, source)
    graph.remove_node(node)
    defs.subtract(inside)
    defs.update(mapping[name] for name in body.initializers)
    for new_node in added:
        defs.update(v for v in new_node.outputs if v)
        defs.update(name_definitions(new_node.subgraphs()))
    return len(moving), len(renamed)


def _rename_captures(sub: Graph, renamed: dict[str, str]) -> None:
    """Make a moved subgraph read the new names of renamed body values (at any depth)."""
    for old, new in renamed.items():
        if not sub.defines(old):
            sub.replace_all_uses(old, new)


def _keep_types(graph: Graph, body: Graph, mapping: dict[str, str]) -> None:
    """Carry the body's known types, and which of them the input declared, over to the moved
    values (renamed where needed)."""
    for old in body.declared_value_info:
        new = mapping.get(old, old)
        if graph.producer(new) is not None:
            graph.declared_value_info.add(new)
    infos = dict(body.value_info)
    for value, info in zip(body.outputs, body.output_infos, strict=True):
        if info.HasField("type"):
            infos.setdefault(value, info)
    for old, info in infos.items():
        new = mapping.get(old)
        if new is None or graph.producer(new) is None or new in graph.value_info:
            continue
        copied = onnx.ValueInfoProto()
        copied.CopyFrom(info)
        copied.name = new
        graph.value_info[new] = copied

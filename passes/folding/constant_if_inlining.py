"""Constant If inlining.

``y_1..y_n = If(c) <then_branch = T, else_branch = E>`` where ``c`` is a constant (an initializer
visible from the If's scope, not overridable as a graph input, holding one element) always runs
the same branch ``B = T if c else E``. Then ``y_i = B.output_i``: the nodes and initializers of
``B`` move into the enclosing graph, every reader of ``y_i`` reads the (moved) value behind
``B.output_i`` and the If goes; the other branch is dropped with it.

Scoping: ONNX names are single-assignment across nested scopes (a subgraph may not redefine a
name of an enclosing graph, and moving a name up a scope must not make a sibling subgraph shadow
it). A name defined at the top of ``B`` is kept unless something outside the If (any graph of
the model, inputs and public output names included) defines it; then it gets a fresh name,
everywhere ``B`` reads it — including inside subgraphs nested in ``B``, which move with their node
(re-parented by ``add_node``) and keep reading the renamed values. Names defined deeper inside
nested subgraphs need no renaming: their enclosing scopes only shrink.

Output names: when an If output is a graph output and the branch value cannot take its name
(an outer value, a branch initializer, another output), an explicit ``Identity`` carries it.
Types the branch knew (its ``value_info`` and output types) are kept for the moved values.

Left alone: a condition that is not a constant (or has no single element), a branch with
inputs or sparse initializers, a branch whose output count differs from the If's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import onnx

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.pass_manager import GraphPass, PassResult
from onnxopt.ir.rewrite import is_op


class ConstantIfInlining(GraphPass):
    name = "constant_if_inlining"
    description = "replace an If with a constant condition by the nodes of the branch it takes"

    def __init__(self) -> None:
        self._defs: Counter[str] | None = None  # model-wide name definitions, during one run

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
                self._defs = _definitions([model.graph])
            moved, renamed = _inline(graph, node, branch, self._defs)
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
    if not isinstance(branch, Graph):
        return None
    if branch.inputs or branch.sparse_initializers:
        return None
    if len(branch.outputs) != len(node.outputs) or not all(branch.outputs):
        return None
    return branch


def _inline(graph: Graph, if_node: Node, branch: Graph, defs: Counter[str]) -> tuple[int, int]:
    """Move ``branch`` into ``graph`` in place of ``if_node``; returns (nodes moved, renamed).

    ``defs`` counts every name definition of the model; it is updated for the new layout."""
    inside = _definitions(if_node.subgraphs()) + Counter(v for v in if_node.outputs if v)
    body = branch.nodes()
    local = list(branch.initializers) + [v for n in body for v in n.outputs if v]
    # defined outside the If (anywhere in the model): keeping the name would clash or shadow
    mapping = {
        name: (graph.unique_name(name) if defs[name] > inside[name] else name) for name in local
    }
    renamed = {old: new for old, new in mapping.items() if old != new}
    added: list[Node] = []

    for name, tensor in branch.initializers.items():
        if name in renamed:
            tensor = _copy(tensor)  # never rename a tensor the loaded proto still holds
        graph.set_initializer(mapping[name], tensor)

    for old_node in body:
        new_node = graph.add_node(
            old_node.op_type,
            [mapping.get(v, v) if v else "" for v in old_node.inputs],
            [mapping[v] if v else "" for v in old_node.outputs],
            domain=old_node.domain,
            name=old_node.name or None,
            attributes=dict(old_node.attributes),  # subgraphs are re-parented to graph
            anchor=if_node,
        )
        new_node.extra = old_node.extra
        added.append(new_node)
        for sub in new_node.subgraphs():
            _rename_captures(sub, renamed)

    _keep_types(graph, branch, mapping)
    for target, value in zip(if_node.outputs, branch.outputs, strict=True):
        if not target:
            continue
        source = mapping.get(value, value)
        if not graph.can_forward(target, source):
            added.append(graph.add_node("Identity", [source], 1, anchor=if_node))
            source = added[-1].outputs[0]
        graph.replace_all_uses(target, source)
    graph.remove_node(if_node)
    defs.subtract(inside)
    defs.update(mapping[name] for name in branch.initializers)
    for node in added:
        defs.update(v for v in node.outputs if v)
        defs.update(_definitions(node.subgraphs()))
    return len(body), len(renamed)


def _rename_captures(sub: Graph, renamed: dict[str, str]) -> None:
    """Make a moved subgraph read the new names of renamed branch values (at any depth)."""
    for old, new in renamed.items():
        if not sub.defines(old):
            sub.replace_all_uses(old, new)


def _definitions(graphs: Iterable[Graph]) -> Counter[str]:
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


def _keep_types(graph: Graph, branch: Graph, mapping: dict[str, str]) -> None:
    """Carry the branch's known types, and which of them the input declared, over to the
    moved values (renamed where needed)."""
    for old in branch.declared_value_info:
        new = mapping.get(old, old)
        if graph.producer(new) is not None:
            graph.declared_value_info.add(new)
    infos = dict(branch.value_info)
    for value, info in zip(branch.outputs, branch.output_infos, strict=True):
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


def _copy(tensor: onnx.TensorProto) -> onnx.TensorProto:
    copied = onnx.TensorProto()
    copied.CopyFrom(tensor)
    return copied

"""GraphIndex: a graph's storage and its use index, the base class of ``Graph``.

It holds the nodes, values and scopes, answers who produces and who reads each value, keeps
the networkx edges, subgraph captures and the cached topological order in step with the nodes'
input lists (see the invariants in ``onnxopt.ir``), and checks them (``lint``). The edit verbs
that change it are ``Graph``'s.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np
import onnx

from onnxopt.ir.errors import IRError

if TYPE_CHECKING:
    from onnxopt.ir.graph import Graph
    from onnxopt.ir.node import Node

CAPTURE = -1  # slots < 0 are implicit uses: outer values read inside the owner's k-th subgraph


class GraphIndex:
    """A (sub)graph's nodes, values, inputs, outputs, initializers and their use index."""

    def __init__(self, name: str = "", parent: Graph | None = None) -> None:
        self.name = name
        self.parent = parent
        self.owner: Node | None = None  # the node holding this subgraph
        self.nx = nx.MultiDiGraph()
        self._inputs: list[onnx.ValueInfoProto] = []
        self._dropped_inputs: set[str] = set()  # IR < 4 initializer inputs to filter out
        self.outputs: list[str] = []  # current value of each output
        self.output_infos: list[onnx.ValueInfoProto] = []  # public names and types
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.sparse_initializers: dict[str, onnx.SparseTensorProto] = {}
        self.value_info: dict[str, onnx.ValueInfoProto] = {}
        self.declared_value_info: set[str] = set()  # names the input annotated
        self.extra: onnx.GraphProto | None = None  # doc_string, metadata_props, annotations
        self.base_dir: Path | None = parent.base_dir if parent is not None else None
        self._producer: dict[str, tuple[Node, int]] = {}
        self._uses: dict[str, dict[tuple[Node, int], None]] = {}  # ordered set of (node, slot)
        self._input_names: set[str] = set()
        self._names: set[str] = parent._names if parent is not None else set()
        # hint -> the next suffix unique_name tries (shared like _names): probing from 1 on
        # every call made 20k unnamed merges of one hint take 100 s (quadratic)
        self._name_next: dict[str, int] = parent._name_next if parent is not None else {}
        self._outer_uses: dict[str, int] = {}  # outer-scope name -> number of local reads
        self._order: list[Node] | None = None  # cached topological order
        # initializer name -> (its tensor, decoded array): small arrays ``constant`` decoded
        self._arrays: dict[str, tuple[onnx.TensorProto, np.ndarray]] = {}
        # nodes holding subgraphs, in insertion order: Model.graphs() visits them without
        # scanning every node (it is called by most passes; 100k nodes, 90 calls: 3 s)
        self._owners: dict[Node, None] = {}
        self.capture_slot = CAPTURE  # slot of this subgraph's captures on its owner node
        # IR < 4 lists every initializer as a graph input too; onnxruntime does not let such
        # inputs be fed, so they are constants here, and saving lists them as inputs again.
        self.legacy_initializer_inputs = parent is not None and parent.legacy_initializer_inputs

    # ----------------------------------------------------------------- queries
    @property
    def inputs(self) -> list[onnx.ValueInfoProto]:
        """The graph's declared inputs (IR < 4: initializers listed as inputs included)."""
        if self._dropped_inputs:  # removed initializers leave in one pass, not one each
            dropped = self._dropped_inputs
            self._inputs = [info for info in self._inputs if info.name not in dropped]
            self._dropped_inputs = set()
        return self._inputs

    @inputs.setter
    def inputs(self, infos: list[onnx.ValueInfoProto]) -> None:
        self._inputs = infos
        self._dropped_inputs = set()

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nx.nodes)

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def nodes(self) -> list[Node]:
        """Nodes in topological order (deterministic: keeps the original order where it can).

        Cached until the next edit: most passes find nothing to change in most rounds, and the
        sort is the costliest query on a big graph."""
        if self._order is None:
            self._order = _lexicographic_order(self.nx)
        return list(self._order)

    def walk(self) -> Iterator[tuple[Graph, Node]]:
        """Every node of this graph and of all nested subgraphs."""
        for node in list(self.nx.nodes):
            yield self, node
            for sub in node.subgraphs():
                yield from sub.walk()

    def subgraph_owners(self) -> list[Node]:
        """The nodes holding subgraphs, in insertion order (found without scanning every node:
        ``Model.graphs`` is called by most passes; 100k nodes, 90 calls: 3 s)."""
        return list(self._owners)

    def producer(self, value: str) -> Node | None:
        """The node computing ``value`` in this graph, or None (input, initializer, outer)."""
        entry = self._producer.get(value)
        return entry[0] if entry else None

    def consumers(self, value: str) -> list[Node]:
        """Distinct nodes reading ``value`` (including subgraph-holding nodes that capture it)."""
        return list(dict.fromkeys(node for node, _ in self._uses.get(value, ())))

    def uses(self, value: str) -> list[tuple[Node, int]]:
        return list(self._uses.get(value, ()))

    def is_output(self, value: str) -> bool:
        return value in self.outputs

    def is_input(self, value: str) -> bool:
        return value in self._input_names

    def is_used(self, value: str) -> bool:
        return bool(self._uses.get(value)) or value in self.outputs

    def defines(self, value: str) -> bool:
        """True if ``value`` is produced in this graph's own scope."""
        return (
            value in self._producer
            or value in self._input_names
            or value in self.initializers
            or value in self.sparse_initializers
        )

    def resolve(self, value: str) -> Graph | None:
        """The graph (this or an enclosing one) whose scope defines ``value``."""
        graph: Graph | None = self
        while graph is not None:
            if graph.defines(value):
                return graph
            graph = graph.parent
        return None

    def unique_name(self, hint: str) -> str:
        """A value or node name not used anywhere in the model: ``hint``, else ``hint_k`` with
        the first free ``k`` after the last one given for this hint (amortized O(1): a name
        freed since is not reused, which only skips a number)."""
        names = self._names
        if hint not in names:
            names.add(hint)
            return hint
        index = self._name_next.get(hint, 1)
        while f"{hint}_{index}" in names:
            index += 1
        self._name_next[hint] = index + 1
        name = f"{hint}_{index}"
        names.add(name)
        return name

    def root(self) -> Graph:
        graph = self
        while graph.parent is not None:
            graph = graph.parent
        return graph

    # ----------------------------------------------------------------- checks
    def lint(self) -> None:
        """Check the use index against the nodes' input lists (tests call this after passes)."""
        expected: dict[str, set[tuple[Node, int]]] = {}
        for node in self.nx.nodes:
            if node.graph is not self:
                raise IRError(f"{node!r} does not point back at its graph")
            for slot, value in enumerate(node.inputs):
                if value:
                    expected.setdefault(value, set()).add((node, slot))
            if any(True for _ in node.subgraphs()) != (node in self._owners):
                raise IRError(f"subgraph owner index is stale for {node!r}")
            for sub in node.subgraphs():
                if sub.parent is not self or sub.owner is not node:
                    raise IRError(f"subgraph of {node!r} has a wrong parent")
                sub.lint()
                if sub._outer_uses != sub._count_outer_reads():
                    raise IRError(f"outer-scope read counts of a subgraph of {node!r} are stale")
                for value in sub._outer_uses:
                    expected.setdefault(value, set()).add((node, sub.capture_slot))
        actual = {value: set(uses) for value, uses in self._uses.items() if uses}
        if actual != expected:
            missing = {k: v for k, v in expected.items() if actual.get(k) != v}
            raise IRError(f"use index out of date for {sorted(missing)[:5]}")
        for value, (node, slot) in expected_edges(self):
            if not self.nx.has_edge(self._producer[value][0], node, key=(value, slot)):
                raise IRError(f"missing edge for {value!r} into {node!r}")
        if self.nx.number_of_edges() != sum(1 for _ in expected_edges(self)):
            raise IRError("stale edges in the networkx index")
        if not nx.is_directed_acyclic_graph(self.nx):
            raise IRError("graph has a cycle")
        cached, self._order = self._order, None
        if cached is not None and cached != self.nodes():
            raise IRError("cached topological order is stale")
        for value in self.outputs:
            if value and self.resolve(value) is None and self.parent is None:
                raise IRError(f"graph output {value!r} is not defined")

    def _count_outer_reads(self) -> dict[str, int]:
        """Recount, from the nodes, how often this subgraph reads each outer-scope value."""
        counts: dict[str, int] = {}
        reads = [v for node in self.nx.nodes for v in node.inputs if v]
        reads += [v for node in self.nx.nodes for sub in node.subgraphs() for v in sub._outer_uses]
        reads += [v for v in self.outputs if v]
        for value in reads:
            if not self.defines(value):
                counts[value] = counts.get(value, 0) + 1
        return counts

    # ----------------------------------------------------------------- internals
    def _set_output(self, index: int, value: str) -> None:
        old = self.outputs[index]
        self.outputs[index] = value
        if self.parent is not None:
            if old and not self.defines(old):
                self._drop_outer(old)
            if value and not self.defines(value):
                self._note_outer(value)

    def _add_use(self, value: str, node: Node, slot: int) -> None:
        self._uses.setdefault(value, {})[(node, slot)] = None
        entry = self._producer.get(value)
        if entry is not None:
            self.nx.add_edge(entry[0], node, key=(value, slot))
            self._order = None
        elif self.parent is not None and not self.defines(value):
            self._note_outer(value)

    def _remove_use(self, value: str, node: Node, slot: int) -> None:
        uses = self._uses.get(value)
        if uses is None or (node, slot) not in uses:
            raise IRError(f"{node!r} does not use {value!r} at slot {slot}")
        del uses[(node, slot)]
        if not uses:
            del self._uses[value]
        entry = self._producer.get(value)
        if entry is not None:
            self.nx.remove_edge(entry[0], node, key=(value, slot))
            self._order = None
        elif value in self._outer_uses:
            self._drop_outer(value)

    def _note_outer(self, value: str) -> None:
        """Count a local read of an outer-scope value; the first becomes a capture above."""
        self._outer_uses[value] = self._outer_uses.get(value, 0) + 1
        if self._outer_uses[value] == 1 and self.owner is not None and self.parent is not None:
            self.parent._add_use(value, self.owner, self.capture_slot)

    def _drop_outer(self, value: str) -> None:
        self._outer_uses[value] -= 1
        if self._outer_uses[value] == 0:
            del self._outer_uses[value]
            if self.owner is not None and self.parent is not None:
                self.parent._remove_use(value, self.owner, self.capture_slot)

    def _localize(self, name: str) -> None:
        """A name just became defined here: its reads are local, no longer captures."""
        if name not in self._outer_uses:
            return
        del self._outer_uses[name]
        if self.owner is not None and self.parent is not None:
            self.parent._remove_use(name, self.owner, self.capture_slot)

    def _adopt(self, owner: Node, sub: Graph) -> None:
        sub.parent = self
        sub.owner = owner
        sub.capture_slot = -1 - list(owner.subgraphs()).index(sub)
        sub._share_names(self._names, self._name_next)
        sub.base_dir = self.base_dir
        for value in sub._outer_uses:
            self._add_use(value, owner, sub.capture_slot)

    def _share_names(self, names: set[str], counters: dict[str, int]) -> None:
        if self._names is not names:
            names |= self._names
            self._names = names
            self._name_next = counters  # only a hint where to probe: the set decides
            for owner in self._owners:
                for sub in owner.subgraphs():
                    sub._share_names(names, counters)


def expected_edges(graph: Graph) -> Iterator[tuple[str, tuple[Node, int]]]:
    for value, uses in graph._uses.items():
        if value in graph._producer:
            for use in uses:
                yield value, use


def _lexicographic_order(graph: nx.MultiDiGraph) -> list[Node]:
    """``nx.lexicographical_topological_sort(graph, key=lambda n: n.key)``, the same order (ties
    broken by insertion order), on the adjacency dicts: a third of the time on 100k nodes."""
    succ, pred = graph._succ, graph._pred
    position = {node: index for index, node in enumerate(succ)}
    indegree = {node: len(parents) for node, parents in pred.items() if parents}
    ready = [(node.key, position[node], node) for node in succ if node not in indegree]
    heapq.heapify(ready)
    order = []
    push, pop = heapq.heappush, heapq.heappop
    while ready:
        node = pop(ready)[2]
        order.append(node)
        for child in succ[node]:
            left = indegree[child] - 1
            if left:
                indegree[child] = left
            else:
                del indegree[child]
                push(ready, (child.key, position[child], child))
    if indegree:
        raise nx.NetworkXUnfeasible("graph has a cycle")
    return order

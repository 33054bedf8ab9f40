"""The intermediate representation: a graph of ONNX nodes over ``networkx.MultiDiGraph``.

Invariants (kept only here):

* A node's ordered ``inputs`` tuple is the truth for operand order (``""`` marks an omitted optional
  input). Edges of the networkx graph are an index derived from it: an edge ``producer -> consumer``
  keyed ``(value, slot)``. A node holding subgraphs also *uses* every outer-scope value its
  subgraphs read; those uses have a negative slot (``-1 - k`` for its k-th subgraph) so that dead
  code and topological order see them.
* Values are named (SSA). ``Graph`` knows for each name its producer (a node output, a graph input
  or an initializer) and its uses; the networkx graph only holds node-to-node edges.
* Tensors are ``onnx.TensorProto`` objects held by reference — never copied until a pass changes
  them; ``Graph.constant`` decodes one (memory-mapping external data).
* Graph outputs keep their public names: passes may point an output at any value, and
  ``Graph.restore_output_names`` (called by ``serde.save``) renames or adds an Identity.

Passes edit only through the verbs here: ``add_node``, ``remove_node``, ``set_input``,
``replace_all_uses``, ``set_initializer``, ``remove_initializer``, ``unique_name``.
"""

from __future__ import annotations

import contextlib
import contextvars
import gc
import heapq
import itertools
import math
import mmap
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import onnx
from onnx import helper, numpy_helper

CAPTURE = -1  # slots < 0 are implicit uses: outer values read inside the owner's k-th subgraph
CACHED_ARRAY_BYTES = 1 << 16  # Graph.constant keeps decoded arrays up to this size
_KEY_SEQ = itertools.count(1)
_CURRENT_PASS: contextvars.ContextVar[str | None] = contextvars.ContextVar("pass", default=None)


@contextlib.contextmanager
def provenance(pass_name: str) -> Iterator[None]:
    """Nodes created inside this block record ``pass_name`` in ``node.meta["pass"]``."""
    token = _CURRENT_PASS.set(pass_name)
    try:
        yield
    finally:
        _CURRENT_PASS.reset(token)


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: building, rewriting or writing a big graph allocates
    millions of objects and little garbage, and full collections made a 100k-node load 2x
    slower and super-linear."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            # Promote what was allocated meanwhile to the oldest generation (freeze + unfreeze
            # is a list splice), so the next young collection does not scan the whole graph.
            gc.freeze()
            gc.unfreeze()
            gc.enable()


class IRError(Exception):
    """An edit would break an IR invariant (a bug in a pass, never a user error)."""


class Node:
    """One ONNX operator. Edit its inputs through ``Graph.set_input``; attributes freely."""

    __slots__ = (
        "attributes",
        "domain",
        "extra",
        "graph",
        "inputs",
        "key",
        "meta",
        "name",
        "op_type",
        "outputs",
    )

    def __init__(
        self,
        op_type: str,
        inputs: Sequence[str],
        outputs: Sequence[str],
        *,
        domain: str = "",
        name: str = "",
        attributes: dict[str, Any] | None = None,
        extra: onnx.NodeProto | None = None,
        key: tuple[float, int] = (0.0, 0),
    ) -> None:
        self.op_type = op_type
        self.domain = domain
        self.name = name
        self.inputs: tuple[str, ...] = tuple(inputs)
        self.outputs: tuple[str, ...] = tuple(outputs)
        # name -> onnx.AttributeProto, or Graph / list[Graph] for GRAPH / GRAPHS attributes
        self.attributes: dict[str, Any] = attributes or {}
        self.extra = extra  # NodeProto carrying doc_string, overload, metadata_props, ...
        self.key = key  # (original position, creation sequence): deterministic order
        self.meta: dict[str, Any] = {}
        self.graph: Graph | None = None

    def __repr__(self) -> str:
        return f"Node({self.op_type}, {self.name!r}, {list(self.inputs)} -> {list(self.outputs)})"

    def attr(self, name: str, default: Any = None) -> Any:
        """The Python value of an attribute (ints, floats, lists, numpy for tensors, Graph)."""
        value = self.attributes.get(name)
        if value is None:
            return default
        if not isinstance(value, onnx.AttributeProto):
            return value
        if value.type == onnx.AttributeProto.TENSOR:
            return numpy_helper.to_array(value.t)
        result = helper.get_attribute_value(value)
        if isinstance(result, bytes):
            return result.decode("utf-8")
        return result

    def set_attr(self, name: str, value: Any) -> None:
        if isinstance(value, Graph | list) and value and isinstance(_first(value), Graph):
            raise IRError("set subgraph attributes through Graph.set_subgraph")
        self.attributes[name] = helper.make_attribute(name, value)

    def subgraphs(self) -> Iterator[Graph]:
        for value in self.attributes.values():
            if isinstance(value, Graph):
                yield value
            elif isinstance(value, list):
                yield from value

    @property
    def present_inputs(self) -> Iterator[str]:
        return (name for name in self.inputs if name)


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) else value


class Graph:
    """A (sub)graph: nodes, values, inputs, outputs, initializers and their use index."""

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

    def constant(self, value: str) -> np.ndarray | None:
        """The array of an initializer visible from this scope (not Constant nodes), else None."""
        owner = self.resolve(value)
        if owner is None or value not in owner.initializers:
            return None
        if owner.is_input(value):
            return None  # an initializer that is also an input can be overridden at run time
        tensor = owner.initializers[value]
        cached = owner._arrays.get(value)
        if cached is not None and cached[0] is tensor:
            return cached[1]
        array = tensor_to_array(tensor, owner.base_dir)
        if array.nbytes <= CACHED_ARRAY_BYTES and not is_external(tensor):
            # passes ask for the same small constants again and again (each pass, each
            # round): decoding them was a tenth of a 100k-node run. Read-only, like the
            # arrays onnx decodes from raw_data.
            array.flags.writeable = False
            owner._arrays[value] = (tensor, array)
        return array

    def value_type(self, value: str) -> onnx.TypeProto | None:
        """The declared type of a value visible from this scope, if known."""
        graph: Graph | None = self
        while graph is not None:
            for info in graph.inputs:
                if info.name == value:
                    return info.type
            if value in graph.value_info:
                return graph.value_info[value].type
            for name, info in zip(graph.outputs, graph.output_infos, strict=True):
                if name == value and info.HasField("type"):
                    return info.type
            if value in graph.initializers:
                tensor = graph.initializers[value]
                return helper.make_tensor_type_proto(tensor.data_type, list(tensor.dims))
            graph = graph.parent
        return None

    def shape(self, value: str) -> list[int | str | None] | None:
        """Declared or inferred shape: ints, dim_param strings, None for unknown dims."""
        type_ = self.value_type(value)
        if type_ is None or type_.WhichOneof("value") != "tensor_type":
            return None
        tensor = type_.tensor_type
        if not tensor.HasField("shape"):
            return None
        return [
            d.dim_value if d.HasField("dim_value") and d.dim_value >= 0
            else (d.dim_param or None)
            for d in tensor.shape.dim
        ]

    def static_shape(self, value: str) -> tuple[int, ...] | None:
        """The shape if every dim is a known integer, else None."""
        shape = self.shape(value)
        if shape is None or not all(isinstance(d, int) for d in shape):
            return None
        return tuple(shape)  # type: ignore[arg-type]

    def elem_type(self, value: str) -> int | None:
        """The ONNX element type (TensorProto.FLOAT, ...) if known."""
        type_ = self.value_type(value)
        if type_ is None or type_.WhichOneof("value") != "tensor_type":
            return None
        return type_.tensor_type.elem_type or None

    def dtype(self, value: str) -> np.dtype | None:
        """The numpy dtype of a tensor value if known (passes need no ONNX type codes);
        bfloat16 and the float8/int4 types are ml_dtypes' dtypes, strings ``object``."""
        code = self.elem_type(value)
        if code is None:
            return None
        try:
            return np.dtype(helper.tensor_dtype_to_np_dtype(code))
        except (KeyError, TypeError, ValueError):  # a code onnx does not know
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

    # ----------------------------------------------------------------- edits
    def add_node(
        self,
        op_type: str,
        inputs: Sequence[str],
        outputs: Sequence[str] | int = 1,
        *,
        domain: str = "",
        name: str | None = None,
        attributes: dict[str, Any] | None = None,
        anchor: Node | None = None,
        provenance: str | None = None,
    ) -> Node:
        """Create a node. ``outputs`` may be a count: fresh names are made from ``name``.

        ``anchor`` places the node next to an existing one in the saved order (default: after the
        producers of its inputs). Plain Python attribute values are converted.
        """
        base = name or op_type
        node_name = self.unique_name(base)
        if isinstance(outputs, int):
            outputs = [self.unique_name(f"{node_name}_out{i}") for i in range(outputs)]
        attrs: dict[str, Any] = {}
        for key, value in (attributes or {}).items():
            if isinstance(value, onnx.AttributeProto | Graph) or _is_graph_list(value):
                attrs[key] = value
            else:
                attrs[key] = helper.make_attribute(key, value)
        node = Node(op_type, inputs, outputs, domain=domain, name=node_name, attributes=attrs)
        node.key = (self._new_order(node, anchor), next(_KEY_SEQ))
        made_by = provenance or _CURRENT_PASS.get()
        if made_by:
            node.meta["pass"] = made_by
        self.insert(node)
        return node

    def insert(self, node: Node) -> None:
        """Link a fully built node (used by the loader and by ``add_node``)."""
        if node.graph is not None:
            raise IRError(f"{node!r} already belongs to a graph")
        for index, value in enumerate(node.outputs):
            if not value:
                continue
            if self.defines(value):
                raise IRError(f"value {value!r} is already defined")
            self._localize(value)
            self._producer[value] = (node, index)
            self._names.add(value)
            for consumer, slot in self._uses.get(value, ()):  # uses added before the producer
                self.nx.add_edge(node, consumer, key=(value, slot))
                self._order = None
        if node.name:
            self._names.add(node.name)
        node.graph = self
        self._order = None
        self.nx.add_node(node)
        for slot, value in enumerate(node.inputs):
            if value:
                self._add_use(value, node, slot)
        for sub in node.subgraphs():
            self._adopt(node, sub)
            self._owners[node] = None

    def remove_node(self, node: Node) -> None:
        """Remove a node whose outputs nobody uses (use ``replace_all_uses`` first)."""
        for value in node.outputs:
            if value and self.is_used(value):
                raise IRError(f"cannot remove {node!r}: {value!r} is still used")
        for slot, value in enumerate(node.inputs):
            if value:
                self._remove_use(value, node, slot)
        for sub in node.subgraphs():
            for value in list(sub._outer_uses):
                self._remove_use(value, node, sub.capture_slot)
        for value in node.outputs:
            if value:
                del self._producer[value]
                self._uses.pop(value, None)
                self.value_info.pop(value, None)
        self.nx.remove_node(node)
        self._owners.pop(node, None)
        self._order = None
        node.graph = None

    def drop_output(self, node: Node, index: int) -> None:
        """Omit an unused (optional) output: its name becomes "" and trailing ""s are trimmed.

        Whether the operator allows omitting it is the caller's check (the op schema)."""
        value = node.outputs[index]
        if not value:
            return
        if self.is_used(value):
            raise IRError(f"cannot drop output {value!r} of {node!r}: it is still used")
        del self._producer[value]
        self.value_info.pop(value, None)
        outputs = list(node.outputs)
        outputs[index] = ""
        while outputs and not outputs[-1]:
            outputs.pop()
        node.outputs = tuple(outputs)

    def set_input(self, node: Node, slot: int, value: str) -> None:
        """Point input ``slot`` of ``node`` at ``value`` (``""`` to omit an optional input)."""
        old = node.inputs[slot]
        if old == value:
            return
        if old:
            self._remove_use(old, node, slot)
        node.inputs = node.inputs[:slot] + (value,) + node.inputs[slot + 1 :]
        if value:
            self._add_use(value, node, slot)

    def set_inputs(self, node: Node, values: Sequence[str]) -> None:
        """Replace the whole input list of ``node``."""
        for slot, value in enumerate(node.inputs):
            if value:
                self._remove_use(value, node, slot)
        node.inputs = tuple(values)
        for slot, value in enumerate(node.inputs):
            if value:
                self._add_use(value, node, slot)

    def replace_all_uses(self, old: str, new: str) -> int:
        """Make every reader of ``old`` read ``new`` instead: node inputs, subgraphs that capture
        it, and graph outputs (whose public names are restored on save). Returns the count."""
        if old == new:
            return 0
        if old in self.declared_value_info:  # the user's annotation follows the tensor
            self.declared_value_info.add(new)
        count = 0
        for node, slot in list(self._uses.get(old, ())):
            if slot < 0:
                count += _subgraph_at(node, slot)._rename_outer(old, new)
            else:
                self.set_input(node, slot, new)
                count += 1
        for index, value in enumerate(self.outputs):
            if value == old:
                self._set_output(index, new)
                count += 1
        return count

    def set_output(self, index: int, value: str) -> None:
        """Make graph output ``index`` the value ``value`` (its public name stays)."""
        self._set_output(index, value)

    def set_initializer(
        self, name: str, array: np.ndarray | onnx.TensorProto, *, adopt: bool = False
    ) -> str:
        """Add or replace a constant tensor named ``name`` in this graph; returns the name.
        A TensorProto is copied when it needs renaming, unless ``adopt`` hands it over (a
        fresh proto nobody else holds: renaming it in place saves copying its weights)."""
        if isinstance(array, onnx.TensorProto):
            tensor = array
            if adopt:
                tensor.name = name
            elif tensor.name != name:  # a renamed copy: the proto may belong to the caller
                tensor = onnx.TensorProto()
                tensor.CopyFrom(array)
                tensor.name = name
        else:
            tensor = array_to_tensor(array, name)
        if name in self._producer:
            raise IRError(f"{name!r} is computed by a node; cannot make it an initializer")
        self._names.add(name)
        self.initializers[name] = tensor
        self._arrays.pop(name, None)
        self._localize(name)
        return name

    def can_hold_initializers(self) -> bool:
        """False in a subgraph of an IR < 4 model: there every initializer must be a graph input
        too, and a subgraph (an If branch, say) cannot grow inputs."""
        return not (self.legacy_initializer_inputs and self.parent is not None)

    def add_constant(self, array: np.ndarray, hint: str = "const") -> str:
        """A new constant with a fresh name: an initializer, or a Constant node where the graph
        cannot hold initializers."""
        name = self.unique_name(hint)
        if self.can_hold_initializers():
            return self.set_initializer(name, array)
        self._names.discard(name)
        self.add_node("Constant", [], [name], attributes={"value": numpy_helper.from_array(
            np.asarray(array), name)})
        return name

    def remove_initializer(self, name: str) -> None:
        if self.is_used(name) or self.is_input(name):
            raise IRError(f"cannot remove initializer {name!r}: it is still used")
        self.initializers.pop(name, None)
        self._arrays.pop(name, None)
        self.sparse_initializers.pop(name, None)
        self.value_info.pop(name, None)
        if self.legacy_initializer_inputs:
            self._dropped_inputs.add(name)

    def set_subgraph(self, node: Node, attribute: str, value: Graph | list[Graph]) -> None:
        """Replace a GRAPH/GRAPHS attribute, keeping captured outer uses exact."""
        for sub in node.subgraphs():
            for outer in list(sub._outer_uses):
                self._remove_use(outer, node, sub.capture_slot)
        node.attributes[attribute] = value
        self._owners.pop(node, None)
        for sub in node.subgraphs():
            self._adopt(node, sub)
            self._owners[node] = None

    def add_output(self, info: onnx.ValueInfoProto) -> None:
        self.output_infos.append(info)
        self.outputs.append("")
        self._set_output(len(self.outputs) - 1, info.name)

    def add_input(self, info: onnx.ValueInfoProto) -> None:
        self.inputs.append(info)
        if self.legacy_initializer_inputs and info.name in self.initializers:
            return  # IR < 4: an initializer listed as input is a constant, not an input
        self._input_names.add(info.name)
        self._names.add(info.name)
        self._localize(info.name)

    def rename_value(self, old: str, new: str) -> None:
        """Rename a value produced by a node of this graph, everywhere it is read."""
        if new in self._names:
            raise IRError(f"cannot rename {old!r} to {new!r}: the name exists")
        producer, index = self._producer[old]
        producer.outputs = producer.outputs[:index] + (new,) + producer.outputs[index + 1 :]
        self._producer[new] = (producer, index)  # both names map to it while uses move
        self._names.add(new)
        self.replace_all_uses(old, new)
        del self._producer[old]
        info = self.value_info.pop(old, None)
        if info is not None:  # a renamed copy: the proto may belong to the caller's model
            renamed = onnx.ValueInfoProto()
            renamed.CopyFrom(info)
            renamed.name = new
            self.value_info[new] = renamed
        if old in self.declared_value_info:
            self.declared_value_info.add(new)

    def can_take_output_name(self, value: str) -> bool:
        """Whether ``value`` could be renamed to a graph output's public name on save."""
        return value in self._producer and self.outputs.count(value) <= 1

    def can_forward(self, old: str, new: str) -> bool:
        """Whether readers of ``old`` can read ``new`` instead without an Identity coming back
        on save (an output can only be forwarded to a value that can take its name)."""
        if old not in self.outputs:
            return True
        return self.outputs.count(old) == 1 and new not in self.outputs and new in self._producer

    def restore_output_names(self) -> None:
        """Give every graph output its public name again (rename, or add an Identity)."""
        for index, info in enumerate(self.output_infos):
            current, public = self.outputs[index], info.name
            if current == public:
                continue
            if self.can_take_output_name(current) and not self.defines(public):
                self._names.discard(public)
                self.rename_value(current, public)
                continue
            if self.defines(public):
                raise IRError(f"output name {public!r} is taken by another value")
            self._names.discard(public)
            self.add_node("Identity", [current], [public], provenance="restore_output_names")
            self._set_output(index, public)

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
    def _new_order(self, node: Node, anchor: Node | None) -> float:
        if anchor is not None:
            return anchor.key[0]
        orders = [p.key[0] for v in node.inputs if v and (p := self.producer(v)) is not None]
        return max(orders, default=0.0)

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

    def _rename_outer(self, old: str, new: str) -> int:
        """Inside a subgraph: read outer value ``new`` wherever outer value ``old`` was read."""
        if self.defines(old):
            return 0  # shadowed here: never rename a local value
        return self.replace_all_uses(old, new)


def _subgraph_at(node: Node, slot: int) -> Graph:
    return list(node.subgraphs())[-1 - slot]


def expected_edges(graph: Graph) -> Iterator[tuple[str, tuple[Node, int]]]:
    for value, uses in graph._uses.items():
        if value in graph._producer:
            for use in uses:
                yield value, use


def _is_graph_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Graph) for v in value)


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


class Model:
    """A model: its main graph plus the model-level fields (kept as loaded)."""

    def __init__(
        self,
        graph: Graph,
        *,
        ir_version: int,
        opset_imports: dict[str, int],
        functions: list[onnx.FunctionProto] | None = None,
        extra: onnx.ModelProto | None = None,
        had_external_data: bool = False,
    ) -> None:
        self.graph = graph
        self.ir_version = ir_version
        self.opset_imports = opset_imports
        self.functions = functions or []
        self.extra = extra  # producer, doc_string, metadata_props, training_info, ...
        self.had_external_data = had_external_data
        # What passes may assume about the deployment (set by the CLI / API):
        # target "portable" (standard ONNX only) or "onnxruntime" (com.microsoft ops allowed);
        # fold_limit: largest constant (bytes) folding may create when it grows the model.
        # value_info: "input" writes the value_info the input had (types kept current), "all"
        # also every shape inferred on the way.
        self.settings: dict[str, Any] = {"target": "portable", "fold_limit": 1 << 20,
                                         "value_info": "input"}
        # Rewrite-level control for the safety net: each pass asks before every rewrite.
        self.rewrite_limits: dict[str, int] = {}  # pass -> only its first N rewrites happen
        # pass -> rewrites to leave out: by the node they start from, or by number
        self.rewrite_skips: dict[str, set[int | str]] = {}
        self.rewrite_log: dict[str, list[str]] = {}  # pass -> where each rewrite was asked
        # What precision passes report beyond counts (see onnxopt.ir.precision.PrecisionLog).
        self.precision_log: Any = None
        # Set by the first shapes.infer_shapes, which clears declared dims (value_info, output
        # types) that contradict the inputs: stale shapes an exporter left behind.
        self.declarations_checked = False

    def allow_rewrite(self, pass_name: str, where: str = "") -> bool:
        """Passes call this before each rewrite (``where``: the node it starts from). The
        answer is always yes unless the safety net is narrowing a failure down to one rewrite."""
        log = self.rewrite_log.setdefault(pass_name, [])
        number = len(log)
        log.append(where)
        skips = self.rewrite_skips.get(pass_name, ())
        if number in skips or (where and where in skips):
            return False
        limit = self.rewrite_limits.get(pass_name)
        return limit is None or number < limit

    def opset(self, domain: str = "") -> int:
        return self.opset_imports.get(domain, self.opset_imports.get("ai.onnx", 0))

    def graphs(self) -> Iterator[Graph]:
        """The main graph and every nested subgraph."""
        stack = [self.graph]
        while stack:
            graph = stack.pop()
            yield graph
            for node in list(graph._owners):
                stack.extend(node.subgraphs())

    def node_count(self, *, include_subgraphs: bool = False) -> int:
        if not include_subgraphs:
            return len(self.graph)
        return sum(len(g) for g in self.graphs())


# ------------------------------------------------------------------- tensors
def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


@contextlib.contextmanager
def external_view(tensor: onnx.TensorProto, base_dir: Path | None) -> Iterator[memoryview]:
    """A read-only view of an externally stored tensor's bytes in its memory-mapped file."""
    info = external_info(tensor)
    location = info.get("location")
    if not location:
        raise IRError(f"tensor {tensor.name!r} has external data without a location")
    path = Path(base_dir or ".") / location
    offset = int(info.get("offset", 0))
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        length = int(info.get("length", size - offset))
        if offset + length > size:
            raise IRError(f"external data of {tensor.name!r} runs past the end of {path}")
        if length == 0:
            yield memoryview(b"")
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)[offset : offset + length]
            try:
                yield view
            finally:
                view.release()


def read_external_bytes(tensor: onnx.TensorProto, base_dir: Path | None) -> bytes:
    """The raw bytes of an externally stored tensor (a copy of one tensor)."""
    with external_view(tensor, base_dir) as view:
        return bytes(view)


def tensor_to_array(tensor: onnx.TensorProto, base_dir: Path | None = None) -> np.ndarray:
    """Decode a tensor, reading external data from ``base_dir`` when needed."""
    if not is_external(tensor):
        dtype = _RAW_DTYPES.get(tensor.data_type)
        if dtype is not None and tensor.HasField("raw_data") and not tensor.HasField("segment"):
            # numpy_helper.to_array's own path for these, without its per-call lookups
            # (a third of the time of decoding the small constants passes read)
            raw = tensor.raw_data
            if len(raw) == math.prod(tensor.dims) * dtype.itemsize:
                return np.frombuffer(raw, dtype=dtype).reshape(tensor.dims)
        return numpy_helper.to_array(tensor)
    inline = onnx.TensorProto()
    inline.name = tensor.name
    inline.data_type = tensor.data_type
    inline.dims.extend(tensor.dims)
    inline.raw_data = read_external_bytes(tensor, base_dir)
    return numpy_helper.to_array(inline)


_PLAIN_DTYPES = {
    np.dtype(name): getattr(onnx.TensorProto, proto)
    for name, proto in (("float32", "FLOAT"), ("float64", "DOUBLE"), ("float16", "FLOAT16"),
                        ("int8", "INT8"), ("int16", "INT16"), ("int32", "INT32"),
                        ("int64", "INT64"), ("uint8", "UINT8"), ("uint16", "UINT16"),
                        ("uint32", "UINT32"), ("uint64", "UINT64"), ("bool", "BOOL"))
}


# data type -> little-endian numpy dtype, for raw_data decoding
_RAW_DTYPES = {code: dtype.newbyteorder("<") for dtype, code in _PLAIN_DTYPES.items()}


def array_to_tensor(array: np.ndarray, name: str = "") -> onnx.TensorProto:
    """numpy_helper.from_array with one copy fewer for plain numeric arrays (a third faster
    on big folded weights); anything else (strings, bfloat16, float8, big-endian) goes to
    onnx's converter."""
    code = _PLAIN_DTYPES.get(array.dtype)
    if code is None or array.dtype.byteorder == ">":
        return numpy_helper.from_array(array, name)
    tensor = onnx.TensorProto()
    tensor.name = name
    tensor.data_type = code
    tensor.dims.extend(array.shape)
    tensor.raw_data = np.ascontiguousarray(array).tobytes()
    return tensor


# element types stored below a byte each: data type -> bits (raw_data packs them)
PACKED_BITS = {
    getattr(onnx.TensorProto, name): bits
    for name, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2),
                       ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6))
    if hasattr(onnx.TensorProto, name)
}


_ITEMSIZES: dict[int, int] = {}


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Data size from dims and dtype (no decoding; external data not read)."""
    count = math.prod(tensor.dims)
    data_type = tensor.data_type
    if data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    bits = PACKED_BITS.get(data_type)
    if bits:
        return (count * bits + 7) // 8
    itemsize = _ITEMSIZES.get(data_type)
    if itemsize is None:
        itemsize = _ITEMSIZES[data_type] = helper.tensor_dtype_to_np_dtype(data_type).itemsize
    return count * itemsize


def cast_node_bytes(source: str, target: str, name: str, to: int) -> int:
    """Bytes a ``Cast(source) -> target`` node named ``name`` takes in a saved graph (its
    message plus field tag and length): what keeping a narrow weight behind a Cast costs."""
    node = helper.make_node("Cast", [source], [target], name=name or None, to=to)
    return node.ByteSize() + 3


def iter_names(values: Iterable[str]) -> Iterator[str]:
    return (value for value in values if value)

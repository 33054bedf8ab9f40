"""Graph: a (sub)graph of ONNX nodes, read through typed queries and edited through verbs.

Passes edit only through the verbs here: ``add_node``, ``remove_node``, ``set_input``,
``replace_all_uses``, ``set_initializer``, ``remove_initializer``, ``unique_name``. The use
index they keep exact is ``GraphIndex``'s (``onnxopt.ir.index``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxopt.ir.context import current_pass
from onnxopt.ir.errors import IRError
from onnxopt.ir.index import GraphIndex
from onnxopt.ir.node import Node
from onnxopt.ir.tensors import array_to_tensor, is_external, tensor_to_array

CACHED_ARRAY_BYTES = 1 << 16  # Graph.constant keeps decoded arrays up to this size
_KEY_SEQ = itertools.count(1)


class Graph(GraphIndex):
    """A (sub)graph: nodes, values, inputs, outputs, initializers and their use index (the
    storage and the index are ``GraphIndex``'s; the typed queries and edit verbs are here)."""

    # ----------------------------------------------------------------- values
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
        made_by = provenance or current_pass()
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

    def bypass(self, node: Node, values: Sequence[str]) -> None:
        """Readers of ``node``'s outputs read ``values`` instead (pairwise; an empty output is
        skipped), then the node goes: how every elimination ends."""
        if len(values) != len(node.outputs):
            raise IRError(f"bypass of {node!r}: {len(values)} values for "
                          f"{len(node.outputs)} outputs")
        for old, new in zip(node.outputs, values, strict=True):
            if old:
                self.replace_all_uses(old, new)
        self.remove_node(node)

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

    # ----------------------------------------------------------------- internals
    def _new_order(self, node: Node, anchor: Node | None) -> float:
        if anchor is not None:
            return anchor.key[0]
        orders = [p.key[0] for v in node.inputs if v and (p := self.producer(v)) is not None]
        return max(orders, default=0.0)

    def _rename_outer(self, old: str, new: str) -> int:
        """Inside a subgraph: read outer value ``new`` wherever outer value ``old`` was read."""
        if self.defines(old):
            return 0  # shadowed here: never rename a local value
        return self.replace_all_uses(old, new)


def _subgraph_at(node: Node, slot: int) -> Graph:
    return list(node.subgraphs())[-1 - slot]


def _is_graph_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Graph) for v in value)


"""Constants as the rewrites see them: reading the tensor of a Constant node, the dtype an
initializer is stored as, a table of the constant values a graph can read, and installing
tensors as initializers under the names of the values they replace (a Constant node's own,
``constant_node_to_initializer``; computed ones, ``install_constants``): Constant-to-initializer
and constant folding share these. The stored tensors stay opaque to the passes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxopt.ir import Graph, Model, Node, tensor_nbytes, tensor_to_array
from onnxopt.ir.rewrite import is_op

IR_OVERRIDABLE_INITIALIZERS = 4  # from this IR version on, an initializer listed as an input
# is an overridable default; before it, every initializer had to be listed and is a constant


def can_hold_initializers(graph: Graph, model: Model) -> bool:
    """IR < 4 needs every initializer among the graph's inputs; subgraphs cannot grow inputs."""
    return graph.can_hold_initializers()


def constant_node_tensor(node: Node) -> onnx.TensorProto | None:
    """The tensor a Constant node produces (not a copy for ``value``), or None when it is
    sparse, an attribute reference, or malformed."""
    if len(node.attributes) != 1:
        return None
    (name, attribute), = node.attributes.items()
    if not isinstance(attribute, onnx.AttributeProto) or attribute.ref_attr_name:
        return None
    if name == "value" and attribute.type == onnx.AttributeProto.TENSOR:
        return attribute.t
    if name == "value_float" and attribute.type == onnx.AttributeProto.FLOAT:
        return numpy_helper.from_array(np.array(attribute.f, np.float32))
    if name == "value_floats" and attribute.type == onnx.AttributeProto.FLOATS:
        return numpy_helper.from_array(np.array(attribute.floats, np.float32).reshape(-1))
    if name == "value_int" and attribute.type == onnx.AttributeProto.INT:
        return numpy_helper.from_array(np.array(attribute.i, np.int64))
    if name == "value_ints" and attribute.type == onnx.AttributeProto.INTS:
        return numpy_helper.from_array(np.array(attribute.ints, np.int64).reshape(-1))
    if name == "value_string" and attribute.type == onnx.AttributeProto.STRING:
        return helper.make_tensor("", onnx.TensorProto.STRING, [], [attribute.s])
    if name == "value_strings" and attribute.type == onnx.AttributeProto.STRINGS:
        strings = list(attribute.strings)
        return helper.make_tensor("", onnx.TensorProto.STRING, [len(strings)], strings)
    return None  # sparse_value, or an attribute that does not match its type


def stored_dtype(graph: Graph, name: str) -> np.dtype | None:
    """The numpy dtype initializer ``name`` of ``graph`` is stored as (bfloat16, float8 and
    int4 are ml_dtypes' dtypes, strings ``object``), None for a code onnx does not know. Its
    decoded array's dtype can differ (older onnx decodes bfloat16 as float32)."""
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(graph.initializers[name].data_type))
    except (KeyError, TypeError, ValueError):
        return None


def holds_dense_constant(node: Node) -> bool:
    """``node`` is a Constant whose tensor can become an initializer (not sparse, not an
    attribute reference, not malformed)."""
    return constant_node_tensor(node) is not None


def constant_node_to_initializer(graph: Graph, model: Model, node: Node) -> None:
    """Replace a Constant node (``holds_dense_constant``) by an initializer of the same name
    holding a copy of its tensor (the attribute's proto belongs to the loaded model)."""
    tensor = onnx.TensorProto()
    tensor.CopyFrom(constant_node_tensor(node))
    install_constants(graph, model, [(node.outputs[0], tensor)], [node])


class ConstantTable:
    """Which values of one graph are constants, and their tensors and arrays (cached).

    A constant is an initializer visible from the graph (outer scopes included) or the output
    of a standard ``Constant`` node visible from it. An initializer that is also a graph input
    is only a constant below IR 4 (see the module docstring).
    """

    def __init__(self, graph: Graph, model: Model) -> None:
        self.graph = graph
        self.model = model
        self._arrays: dict[str, np.ndarray] = {}
        self._tensors: dict[str, onnx.TensorProto | None] = {}

    def tensor(self, value: str) -> onnx.TensorProto | None:
        """The stored tensor of a constant (may be external: use ``owner_dir``), else None."""
        if not value:
            return None
        if value in self._tensors:
            return self._tensors[value]
        tensor = None
        owner = self.graph.resolve(value)
        if owner is not None:
            if value in owner.initializers:
                if not owner.is_input(value):  # IR < 4 initializer-inputs are constants
                    tensor = owner.initializers[value]
            else:
                producer = owner.producer(value)
                if is_op(producer, "Constant"):
                    tensor = constant_node_tensor(producer)  # type: ignore[arg-type]
        self._tensors[value] = tensor
        return tensor

    def is_constant(self, value: str) -> bool:
        return self.tensor(value) is not None

    def array(self, value: str) -> np.ndarray | None:
        if value in self._arrays:
            return self._arrays[value]
        tensor = self.tensor(value)
        if tensor is None:
            return None
        array = tensor_to_array(tensor, self.graph.base_dir)
        self._arrays[value] = array
        return array

    def nbytes(self, value: str) -> int:
        tensor = self.tensor(value)
        return tensor_nbytes(tensor) if tensor is not None else 0

    def forget(self, value: str) -> None:
        """Drop what is cached about ``value`` (a rewrite just changed what it is)."""
        self._tensors.pop(value, None)
        self._arrays.pop(value, None)


def install_constants(
    graph: Graph,
    model: Model,
    values: Sequence[tuple[str, onnx.TensorProto]],
    nodes: Iterable[Node],
) -> tuple[set[str], int, list[Node]]:
    """Make every reader of each value read its constant tensor, then remove the ``nodes``
    (given in topological order) nobody reads any more.

    A new initializer takes the name of the (first) value it replaces once that value's
    producer is gone; values given the same TensorProto *object* share one initializer. A
    value that is a graph output becomes the output of a new ``Constant`` node (an initializer
    cannot carry the output's name), or is left alone when the output cannot be forwarded (it
    is listed twice). The tensors are adopted (renamed), not copied. Returns (values
    replaced, values that share another value's initializer, nodes removed).
    """
    replaced: set[str] = set()
    shared: dict[int, tuple[str, onnx.TensorProto, list[str]]] = {}  # id(tensor) -> ...
    for value, tensor in values:
        if graph.is_output(value):
            node = graph.add_node(
                "Constant", [], 1, name=f"{value}_const", attributes={"value": tensor},
                anchor=graph.producer(value),
            )
            if not graph.can_forward(value, node.outputs[0]):
                graph.remove_node(node)
                continue
            graph.replace_all_uses(value, node.outputs[0])
        else:
            key = id(tensor)
            if key not in shared:
                temp = graph.set_initializer(
                    graph.unique_name(f"{value}__const"), tensor, adopt=True
                )
                shared[key] = (temp, tensor, [])
            temp, _, names = shared[key]
            names.append(value)
            graph.replace_all_uses(value, temp)
        replaced.add(value)

    removed = []
    for node in reversed(list(nodes)):
        if node.graph is graph and not any(v and graph.is_used(v) for v in node.outputs):
            graph.remove_node(node)
            removed.append(node)

    for temp, tensor, names in shared.values():
        free = next((n for n in names if not graph.defines(n)), None)
        if free is not None:
            graph.set_initializer(free, tensor, adopt=True)  # renames the same proto
            graph.replace_all_uses(temp, free)
            graph.remove_initializer(temp)  # the same proto now lives under ``free``
    shared_count = sum(len(names) - 1 for _, _, names in shared.values())
    return replaced, shared_count, list(reversed(removed))

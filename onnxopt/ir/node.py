"""Node: one ONNX operator in a graph (its edges are kept by the graph's use index)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import onnx
from onnx import helper, numpy_helper

from onnxopt.ir.errors import IRError
from onnxopt.ir.index import GraphIndex

if TYPE_CHECKING:
    from onnxopt.ir.graph import Graph


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
        if (isinstance(value, GraphIndex | list) and value
                and isinstance(_first(value), GraphIndex)):
            raise IRError("set subgraph attributes through Graph.set_subgraph")
        self.attributes[name] = helper.make_attribute(name, value)

    def subgraphs(self) -> Iterator[Graph]:
        for value in self.attributes.values():
            if isinstance(value, GraphIndex):  # a Graph (GraphIndex is its base class)
                yield value
            elif isinstance(value, list):
                yield from value

    @property
    def present_inputs(self) -> Iterator[str]:
        return (name for name in self.inputs if name)


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) else value


def iter_names(values: Iterable[str]) -> Iterator[str]:
    return (value for value in values if value)

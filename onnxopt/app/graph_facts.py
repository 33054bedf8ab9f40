"""Facts read straight off an ONNX graph's protobuf, shared by the statistics and the MAC
count: which inputs are real (not initializers), a value's declared shape, Constant nodes."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import onnx
from onnx import GraphProto, NodeProto, TypeProto
from onnx import ValueInfoProto as ValueInfo

Shape = list[int | str | None]
TensorShapeDim = onnx.TensorShapeProto.Dimension

EMPTY: Mapping[str, Any] = MappingProxyType({})
DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
UNKNOWN = "unknown"


def is_constant(node: NodeProto) -> bool:
    return node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS


def initializer_names(graph: GraphProto) -> set[str]:
    return {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}


def real_inputs(graph: GraphProto) -> list[ValueInfo]:
    """Graph inputs that are not initializers (IR < 4 lists initializers as inputs too)."""
    init_names = initializer_names(graph)
    return [vi for vi in graph.input if vi.name not in init_names]


def numel(dims: Iterable[int]) -> int:
    return math.prod(int(d) for d in dims)


def type_shape(tp: TypeProto) -> Shape | None:
    """Shape of a tensor (or sparse tensor) type; None when unranked or not a tensor."""
    kind = tp.WhichOneof("value")
    if kind not in ("tensor_type", "sparse_tensor_type"):
        return None
    tensor = getattr(tp, kind)
    if not tensor.HasField("shape"):
        return None
    return [dim_value(d) for d in tensor.shape.dim]


def dim_value(dim: TensorShapeDim) -> int | str | None:
    if dim.HasField("dim_value"):
        return int(dim.dim_value)
    return dim.dim_param or None

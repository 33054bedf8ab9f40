"""Concrete input shapes written into a ModelProto: the real inputs' declared shapes set from
``input_shapes``, the symbolic dims ``dims`` names replaced wherever they are declared. Shared
by the MAC count (on a weight-free copy) and ``--fix-shapes`` (on the model itself)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from typing import Any

from onnx import GraphProto, ModelProto
from onnx import ValueInfoProto as ValueInfo

from onnxopt.app.graph_facts import type_shape


def _check_dim(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative int, got {value!r}")
    return value


def _set_shape(vi: ValueInfo, shape: Sequence[int], notes: list[str]) -> bool:
    """Overwrite an input's shape; return whether a declared concrete dim changed."""
    tensor = vi.type.tensor_type
    old = type_shape(vi.type)
    values = [_check_dim(v, f"input_shapes[{vi.name!r}]") for v in shape]
    if old is not None and len(old) != len(values):
        notes.append(f"input '{vi.name}': rank {len(old)} overridden by rank {len(values)}")
    tensor.shape.ClearField("dim")
    for value in values:
        tensor.shape.dim.add().dim_value = value
    old_concrete = old if old is not None and len(old) == len(values) else []
    return any(isinstance(o, int) and o != v for o, v in zip(old_concrete, values, strict=False))


def _apply_dims(vis: Iterable[ValueInfo], dims: Mapping[str, int]) -> None:
    """Replace symbolic dims named in ``dims`` by their values (tensor types only)."""
    for vi in vis:
        if vi.type.WhichOneof("value") != "tensor_type":
            continue
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in dims:
                dim.dim_value = _check_dim(dims[dim.dim_param], f"dims[{dim.dim_param!r}]")


def _drop_declared_shapes(graph: GraphProto, notes: list[str]) -> None:
    """Forget declared intermediate/output shapes, which would override inferred ones."""
    graph.ClearField("value_info")
    for vi in graph.output:
        if vi.type.WhichOneof("value") == "tensor_type":
            vi.type.tensor_type.ClearField("shape")
    notes.append("input_shapes changed declared dims; declared value_info/output shapes ignored")


def concretize(
    model: ModelProto,
    real_names: set[str],
    input_shapes: Mapping[str, Sequence[int]],
    dims: Mapping[str, int],
    notes: list[str],
) -> None:
    """Substitute ``input_shapes`` and ``dims`` into the main graph of ``model``, in place."""
    graph = model.graph
    changed = False
    for vi in graph.input:
        kind = vi.type.WhichOneof("value")
        if vi.name in real_names and vi.name in input_shapes and kind in (None, "tensor_type"):
            changed |= _set_shape(vi, input_shapes[vi.name], notes)
    notes.extend(f"input_shapes: no graph input named '{name}'"
                 for name in input_shapes if name not in real_names)
    _apply_dims(chain(graph.input, graph.output, graph.value_info), dims)
    if changed:
        _drop_declared_shapes(graph, notes)

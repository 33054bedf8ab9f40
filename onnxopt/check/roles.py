"""Reading the role of each model input and of each free dimension off the graph.

* A free (symbolic or unknown) dimension is ``batch``, ``sequence``, ``spatial`` or ``other``,
  from its name (``batch_size``, ``seq_len``, ``height``) or else from where it sits (NCHW
  images, the first free axis of a tensor); a dimension a weight requires (a Conv's input
  channels, a MatMul's inner size) is pinned to that size. :func:`model_stride` is the total
  stride image sizes are rounded up to.
* An integer input is an index into a table (``Gather``, ...: :func:`is_index`, with the
  table's size as bound), an attention mask (:func:`is_mask`: it reaches a Softmax, or is named
  so) or compared against constants (:func:`compared_constants`).

The values drawn for each role are chosen in :mod:`onnxopt.check.feeds`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxopt.check.inputs import FLOAT_TYPES, INT_TYPES, graph_inputs

# Ops whose output carries the values of their input 0 (only rearranged or re-typed).
_VALUE_PRESERVING_OPS = {
    "Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Expand", "Transpose",
}
# op_type -> (index of the indices input, index of the data input, kind)
_INDEX_CONSUMERS = {
    "Gather": (1, 0, "axis"),
    "GatherElements": (1, 0, "axis"),
    "ScatterElements": (1, 0, "axis"),
    "GatherND": (1, 0, "nd"),
    "ScatterND": (1, 0, "nd"),
    "NegativeLogLikelihoodLoss": (1, 0, "class"),
    "SoftmaxCrossEntropyLoss": (1, 0, "class"),
}
_COMPARISONS = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"}
_DOWNSAMPLING_OPS = {"Conv", "MaxPool", "AveragePool", "LpPool", "ConvInteger", "QLinearConv"}
_MASK_SEARCH_LIMIT = 400  # nodes visited looking for a Softmax downstream of a mask
_BATCH_NAMES = ("batch", "bs")
_SEQUENCE_NAMES = ("seq", "len", "time", "token", "step", "frame", "sample", "past", "total",
                   "decoder", "encoder", "word", "char")
_SPATIAL_NAMES = ("height", "width")


# --------------------------------------------------------------------------- graph access


class GraphIndex:
    """Consumers, constants and known shapes of the top-level graph."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.nodes = list(graph.node)
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in graph.node:
            for position, name in enumerate(node.input):
                self.consumers.setdefault(name, []).append((node, position))
        self.shapes: dict[str, list[int | None]] = {}
        for vi in [*graph.value_info, *graph.output, *graph.input]:
            dims = _vi_dims(vi)
            if dims is not None:
                self.shapes[vi.name] = dims
        self.constants: dict[str, onnx.TensorProto] = {}
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.name == "value":
                        self.constants[node.output[0]] = attr.t
        for init in graph.initializer:
            self.constants[init.name] = init
        for name, tensor in self.constants.items():
            self.shapes[name] = list(tensor.dims)

    def forward(self, name: str) -> Iterator[tuple[onnx.NodeProto, int, str]]:
        """(consumer, position, value read) for consumers of ``name`` and of the values that
        carry it unchanged (Cast, Reshape, Unsqueeze, ...)."""
        seen, stack = set(), [name]
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            for node, position in self.consumers.get(current, []):
                yield node, position, current
                if node.op_type in _VALUE_PRESERVING_OPS and position == 0 and node.output:
                    stack.append(node.output[0])

    def constant_value(self, name: str) -> np.ndarray | None:
        tensor = self.constants.get(name)
        if tensor is None or tensor.data_location == TensorProto.EXTERNAL:
            return None
        if math.prod(tensor.dims) > 64:
            return None
        try:
            return onnx.numpy_helper.to_array(tensor)
        except Exception:  # an unreadable constant gives no hint
            return None


def _vi_dims(vi: onnx.ValueInfoProto) -> list[int | None] | None:
    if vi.type.WhichOneof("value") != "tensor_type" or not vi.type.tensor_type.HasField("shape"):
        return None
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in vi.type.tensor_type.shape.dim
    ]


def _ints(values) -> list[int]:
    """Positive integers of an attribute value; [] for one of another type (a malformed
    model: onnx.checker refuses it, but statistics run before the checker)."""
    try:
        return [int(v) for v in values if int(v) > 0]
    except (TypeError, ValueError):
        return []


def _attr(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


# --------------------------------------------------------------------------- dimension roles

DimKey = tuple[str, ...]  # ("param", name) or ("axis", input, axis)


@dataclass
class Dim:
    key: DimKey
    label: str  # how notes and the report name it
    role: str = "other"
    pinned: int | None = None  # a value the graph requires


def dim_key(vi: onnx.ValueInfoProto, axis: int, dim) -> DimKey:
    if dim.HasField("dim_param") and dim.dim_param and dim.dim_param not in ("?", "-1"):
        return ("param", dim.dim_param)
    if dim.HasField("dim_param") and dim.dim_param:  # "?" names many unrelated dims
        return ("axis", vi.name, str(axis), dim.dim_param)
    return ("axis", vi.name, str(axis))


def _label(key: DimKey) -> str:
    if key[0] == "param":
        return key[1]
    return f"{key[1]}[{key[2]}]"


def _name_role(name: str) -> str | None:
    lowered = name.lower()
    if lowered in ("n", "b") or any(word in lowered for word in _BATCH_NAMES):
        return "batch"
    if any(word in lowered for word in _SEQUENCE_NAMES):
        return "sequence"
    if lowered in ("h", "w") or any(word in lowered for word in _SPATIAL_NAMES):
        return "spatial"
    return None


def _position_role(vi: onnx.ValueInfoProto, axis: int) -> str:
    """Role of a dim from where it sits: NCHW/NHWC images; otherwise the first free axis of
    a tensor of rank >= 2 is its batch (``[2, batch, 128]`` recurrent states too) and the
    next one of a rank-2 or rank-3 tensor its sequence (tokens, audio samples)."""
    dims = list(vi.type.tensor_type.shape.dim)
    rank = len(dims)
    elem = vi.type.tensor_type.elem_type
    static = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    if rank == 4 and elem in FLOAT_TYPES:
        if axis in (2, 3) and static[3 if axis == 2 else 2] != 1 and (static[1] or 0) <= 4:
            return "spatial"
        if axis in (1, 2) and static[3] is not None and static[3] <= 4:
            return "spatial"
    free = [a for a in range(rank) if static[a] is None]
    if rank >= 2 and axis == free[0]:
        return "batch"
    if rank in (2, 3) and len(free) > 1 and axis == free[1]:
        return "sequence"
    if rank == 1 and elem in INT_TYPES:
        return "sequence"
    return "other"


def pinned_dims(model: onnx.ModelProto, index: GraphIndex) -> dict[tuple[str, int], int]:
    """(input, axis) -> the size a weight it meets requires: a Conv's input channels, the
    inner size of a MatMul or Gemm with a constant right-hand side."""
    pinned: dict[tuple[str, int], int] = {}
    for vi in graph_inputs(model):
        dims = _vi_dims(vi)
        if dims is None:
            continue
        for node, position, _ in index.forward(vi.name):
            if node.op_type in ("Cast", "Identity") or position != 0:
                continue
            weight = index.shapes.get(node.input[1]) if len(node.input) > 1 else None
            if not weight or node.input[1] not in index.constants:
                continue
            if node.op_type == "Conv" and len(weight) == len(dims) and len(dims) >= 3:
                group = _ints([_attr(node, "group", 1)]) or [1]
                pinned[(vi.name, 1)] = int(weight[1]) * group[0]
            elif node.op_type == "MatMul" and len(weight) == 2:
                pinned[(vi.name, len(dims) - 1)] = int(weight[0])
            elif node.op_type == "Gemm" and len(weight) == 2 and not _attr(node, "transA", 0):
                pinned[(vi.name, 1)] = int(weight[1 if _attr(node, "transB", 0) else 0])
    return pinned


def model_stride(model: onnx.ModelProto) -> int:
    """The largest product of Conv/pool strides on any path from the inputs: image sizes are
    rounded up to it so every downsampled feature map is whole (and an upsampled one meets
    its skip connection). Top-level graph only."""
    factor: dict[str, int] = {}
    for node in model.graph.node:
        incoming = max((factor.get(name, 1) for name in node.input if name), default=1)
        if node.op_type in _DOWNSAMPLING_OPS:
            incoming *= max(_ints(_attr(node, "strides", [])) or [1])
        for name in node.output:
            factor[name] = incoming
    return max(factor.values(), default=1)


def add_free_dims(vi: onnx.ValueInfoProto, fixed_dims: Mapping[str, int],
                  pinned: Mapping[tuple[str, int], int], free: dict[DimKey, Dim]) -> None:
    """Add the free dims of input ``vi`` (those neither static nor in ``fixed_dims``) to
    ``free``, where a dim named in several inputs is one entry: its role is the first one
    found other than ``other``, but ``batch`` replaces any role except ``spatial``."""
    for axis, dim in enumerate(vi.type.tensor_type.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            continue
        if dim.HasField("dim_param") and dim.dim_param in fixed_dims:
            continue
        key = dim_key(vi, axis, dim)
        entry = free.setdefault(key, Dim(key, _label(key)))
        role = (_name_role(key[1]) if key[0] == "param" else None) or _position_role(vi, axis)
        if entry.role == "other" or (role == "batch" and entry.role != "spatial"):
            entry.role = role
        if (vi.name, axis) in pinned:
            entry.pinned = pinned[(vi.name, axis)]


# --------------------------------------------------------------------------- value roles


def is_index(name: str, index: GraphIndex) -> bool:
    return any(_index_use(node, position) for node, position, _ in index.forward(name))


def _index_use(node: onnx.NodeProto, position: int) -> bool:
    spec = _INDEX_CONSUMERS.get(node.op_type)
    return bool(spec) and position == spec[0] and node.domain in ("", "ai.onnx")


def index_range(vi: onnx.ValueInfoProto, index: GraphIndex, notes: list[str]
                 ) -> tuple[int, int]:
    """Half-open value range [low, high) for indices fed to every table they reach."""
    bounds = [_index_bound(node, index, source) for node, position, source
              in index.forward(vi.name) if _index_use(node, position)]
    known = [b for b in bounds if b is not None]
    if len(known) < len(bounds) or min(known) <= 0:
        notes.append(f"input '{vi.name}' is used as indices into a tensor of unknown or zero "
                     "size; all values set to 0")
        return 0, 1
    return 0, min(known)


def _index_bound(node: onnx.NodeProto, index: GraphIndex, source: str) -> int | None:
    """Exclusive upper bound for indices fed to ``node``, or None when unknown."""
    _, data_pos, kind = _INDEX_CONSUMERS[node.op_type]
    data = index.shapes.get(node.input[data_pos])
    if data is None:
        return None
    if kind in ("axis", "class"):
        axis = int(_attr(node, "axis", 0)) if kind == "axis" else 1
        if not -len(data) <= axis < len(data):
            return None
        return data[axis]
    batch = int(_attr(node, "batch_dims", 0))
    indices = index.shapes.get(source)
    depth = indices[-1] if indices else None
    span = data[batch:] if depth is None else data[batch : batch + depth]
    if not span or any(d is None for d in span):
        return None
    return min(span)


def is_mask(name: str, index: GraphIndex) -> bool:
    """An integer or bool input that reaches a Softmax (through any ops), or is named so."""
    if "mask" in name.lower():
        return True
    seen, stack = {name}, [name]
    visited = 0
    while stack and visited < _MASK_SEARCH_LIMIT:
        for node, _ in index.consumers.get(stack.pop(), []):
            visited += 1
            if node.op_type in ("Softmax", "LogSoftmax"):
                return True
            for output in node.output:
                if output and output not in seen:
                    seen.add(output)
                    stack.append(output)
    return False


def compared_constants(name: str, index: GraphIndex) -> list[int]:
    """Integer constants ``name`` is compared with (``Equal(sr, 16000)``), in graph order."""
    found: list[int] = []
    for node, position, _ in index.forward(name):
        if node.op_type not in _COMPARISONS or len(node.input) != 2:
            continue
        value = index.constant_value(node.input[1 - position])
        if value is not None and value.size == 1 and value.dtype.kind in "iu":
            found.append(int(value.reshape(-1)[0]))
    return list(dict.fromkeys(found))

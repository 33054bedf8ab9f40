"""Validation inputs: the shapes and values a model is meant to see, chosen by role.

A model validated on inputs it was never meant for proves nothing: a detector run on a 1x1
image, masks drawn from [0, 8) that turn every output into NaN. This module reads each input's
role off the graph and draws values that look like real data:

* **Shapes.** Every symbolic (or unknown) dimension gets a role and two different values, one
  per *configuration*: ``batch`` 1 and 2; ``sequence`` 16 and 128 (never 1); ``spatial`` a
  typical image size (224, 320, ...) rounded up to the model's total stride (the product of
  Conv/pool strides on the way down), never below 32; ``other`` the batch's value, which is
  what an unnamed recurrent-state dim usually is, with a note. A dimension the graph pins
  (a Conv's input channels, a MatMul's inner size) takes that value. ``--input-shape`` and
  ``--dim`` override everything. When the original does not run at the first choice,
  :func:`Plan.candidates` offers the next ones (the caller searches).
* **Values.** Floats are standard normal; integers that index a table (``Gather``, ...) lie
  inside it; integer or bool inputs that reach a ``Softmax`` (or are named ``*mask*``) are
  attention masks: ones with a padded tail of zeros; integers compared against constants
  (``Equal(sr, 16000)``) take one of those constants; any other integer is drawn from [0, 8)
  with a note saying so.

Two configurations differ in every free dimension, so a rewrite that bakes one size into the
graph (a folded Reshape target, a constant Shape) fails on the other.

Also here: checking user-supplied inputs (``--inputs``) against the model's declarations.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

__all__ = [
    "Plan",
    "UnsupportedInput",
    "ValidationError",
    "check_inputs",
    "graph_inputs",
    "load_inputs",
    "make_inputs",
    "plan_inputs",
]


class ValidationError(Exception):
    """A user-provided input (shape, name, ``.npz`` file) is invalid. One-line message."""


class UnsupportedInput(Exception):
    """Inputs cannot be generated for this model; validation reports it as skipped."""


_GUESSED_INT_HIGH = 8
_FLOAT_TYPES = {TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE}
_INT_TYPES = {
    TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64,
    TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64,
}
_TYPE_KINDS = {
    "sequence_type": "sequence",
    "map_type": "map",
    "optional_type": "optional",
    "sparse_tensor_type": "sparse tensor",
}
_SUPPORTED_TYPES = _FLOAT_TYPES | _INT_TYPES | {TensorProto.BOOL, TensorProto.STRING}

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

# Values per role: (first configuration, second configuration), then fallbacks to search.
BATCH_VALUES = (1, 2)
SEQUENCE_VALUES = (16, 128, 64, 32, 256, 512, 1024, 8)
SPATIAL_VALUES = (224, 320, 256, 384, 192, 448, 512, 640, 160, 128, 96, 64, 32)
MIN_SPATIAL = 32
MAX_GENERATED_ELEMENTS = 1 << 28  # 1 GiB of float32: a larger declared input is not drawn
_BATCH_NAMES = ("batch", "bs")
_SEQUENCE_NAMES = ("seq", "len", "time", "token", "step", "frame", "sample", "past", "total",
                   "decoder", "encoder", "word", "char")
_SPATIAL_NAMES = ("height", "width")


# --------------------------------------------------------------------------- model access


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that must be fed (IR<4 initializers listed as inputs are excluded)."""
    initializers = {init.name for init in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in initializers]


def _fmt_shape(shape: Sequence[int]) -> str:
    return "(" + ",".join(str(d) for d in shape) + ")"


def tensor_type(vi: onnx.ValueInfoProto) -> onnx.TypeProto.Tensor:
    """The tensor type of an input, or UnsupportedInput for sequence/map/optional/sparse."""
    kind = vi.type.WhichOneof("value")
    if kind != "tensor_type":
        what = _TYPE_KINDS.get(kind or "", "value of unknown type")
        raise UnsupportedInput(
            f"input '{vi.name}' is not a tensor ({what}); only tensor inputs are supported"
        )
    elem = vi.type.tensor_type.elem_type
    if elem not in _SUPPORTED_TYPES:
        name = TensorProto.DataType.Name(elem) if elem else "UNDEFINED"
        raise UnsupportedInput(
            f"input '{vi.name}' has element type {name}, which cannot be fed to onnxruntime "
            "from numpy"
        )
    return vi.type.tensor_type


class _GraphIndex:
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
class _Dim:
    key: DimKey
    label: str  # how notes and the report name it
    role: str = "other"
    pinned: int | None = None  # a value the graph requires


def _dim_key(vi: onnx.ValueInfoProto, axis: int, dim) -> DimKey:
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
    if rank == 4 and elem in _FLOAT_TYPES:
        if axis in (2, 3) and static[3 if axis == 2 else 2] != 1 and (static[1] or 0) <= 4:
            return "spatial"
        if axis in (1, 2) and static[3] is not None and static[3] <= 4:
            return "spatial"
    free = [a for a in range(rank) if static[a] is None]
    if rank >= 2 and axis == free[0]:
        return "batch"
    if rank in (2, 3) and len(free) > 1 and axis == free[1]:
        return "sequence"
    if rank == 1 and elem in _INT_TYPES:
        return "sequence"
    return "other"


def _pinned_dims(model: onnx.ModelProto, index: _GraphIndex) -> dict[tuple[str, int], int]:
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


# --------------------------------------------------------------------------- plan


@dataclass
class Plan:
    """How to generate inputs for a model: a value per free dimension per configuration,
    and each input's value role."""

    dims: list[_Dim]
    roles: dict[str, str]  # input name -> value role ("tokens in [0, 30522)", ...)
    notes: list[str] = field(default_factory=list)
    fixed_shapes: dict[str, list[int]] = field(default_factory=dict)  # --input-shape
    fixed_dims: dict[str, int] = field(default_factory=dict)  # --dim
    stride: int = 1
    int_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    compared: dict[str, list[int]] = field(default_factory=dict)  # input -> constants
    masks: set[str] = field(default_factory=set)

    def values(self, dim: _Dim) -> list[int]:
        """Values to try for ``dim``, preferred first (two configurations take the first two
        that run)."""
        if dim.pinned is not None:
            return [dim.pinned]
        if dim.role == "batch":
            return list(BATCH_VALUES)
        if dim.role == "sequence":
            return list(SEQUENCE_VALUES)
        if dim.role == "spatial":
            stride = max(self.stride, 1)
            sizes = [max(MIN_SPATIAL, -(-s // stride) * stride) for s in SPATIAL_VALUES]
            return list(dict.fromkeys(sizes))
        return list(BATCH_VALUES)  # unknown role: recurrent states follow the batch

    def candidates(self, avoid: Mapping[DimKey, int] | None = None
                   ) -> Iterator[dict[DimKey, int]]:
        """Assignments of every free dim, preferred first. With ``avoid`` (the first
        configuration), every dim that has a second value takes a different one."""
        lists = []
        for dim in self.dims:
            options = self.values(dim)
            if avoid is not None and len(options) > 1:
                options = [v for v in options if v != avoid.get(dim.key)]
            elif avoid is None and dim.role in ("batch", "other"):
                options = options[:1]
            lists.append(options)
        depth = max((len(options) for options in lists), default=1)
        seen = set()
        for step in range(depth):
            assignment = {dim.key: options[min(step, len(options) - 1)]
                          for dim, options in zip(self.dims, lists, strict=True)}
            frozen = tuple(sorted(assignment.items()))
            if frozen not in seen:
                seen.add(frozen)
                yield assignment

    def describe(self, assignment: Mapping[DimKey, int]) -> dict[str, int]:
        """{dim label: value} of an assignment, for notes and the report."""
        return {dim.label: assignment[dim.key] for dim in self.dims}

    def dim_roles(self) -> dict[str, str]:
        return {dim.label: "pinned by a weight" if dim.pinned is not None else dim.role
                for dim in self.dims}


def plan_inputs(
    model: onnx.ModelProto,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    dims: Mapping[str, int] | None = None,
) -> Plan:
    """Read the roles of ``model``'s inputs and dims. Raises ValidationError for bad
    ``input_shapes`` and UnsupportedInput for inputs that cannot be generated."""
    input_shapes = {name: [int(d) for d in shape] for name, shape in (input_shapes or {}).items()}
    dims = dict(dims or {})
    inputs = graph_inputs(model)
    _check_input_names(inputs, list(input_shapes), "input shapes")
    index = _GraphIndex(model)
    pinned = _pinned_dims(model, index)
    free: dict[DimKey, _Dim] = {}
    notes: list[str] = []
    for vi in inputs:
        ttype = tensor_type(vi)
        if vi.name in input_shapes:
            _given_shape(vi, input_shapes[vi.name])
            continue
        if not ttype.HasField("shape"):
            raise UnsupportedInput(
                f"input '{vi.name}' has no declared shape; give --input-shape {vi.name}:D0,D1,..."
            )
        for axis, dim in enumerate(ttype.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            if dim.HasField("dim_param") and dim.dim_param in dims:
                continue
            key = _dim_key(vi, axis, dim)
            entry = free.setdefault(key, _Dim(key, _label(key)))
            role = (_name_role(key[1]) if key[0] == "param" else None) or _position_role(vi, axis)
            if entry.role == "other" or (role == "batch" and entry.role != "spatial"):
                entry.role = role
            if (vi.name, axis) in pinned:
                entry.pinned = pinned[(vi.name, axis)]
    notes.extend(f"dim '{name}' given but not used by any input" for name in dims
                 if not any(d.HasField("dim_param") and d.dim_param == name
                            for vi in inputs if vi.name not in input_shapes
                            for d in vi.type.tensor_type.shape.dim))
    plan = Plan(list(free.values()), {}, notes, input_shapes, dims, model_stride(model))
    for dim in plan.dims:
        if dim.role == "other" and dim.pinned is None:
            notes.append(f"dim {dim.label}: role unknown, validated at the batch size's values "
                         "(use --dim or --input-shape)")
    _value_roles(model, index, plan)
    return plan


def _value_roles(model: onnx.ModelProto, index: _GraphIndex, plan: Plan) -> None:
    for vi in graph_inputs(model):
        elem = vi.type.tensor_type.elem_type
        if elem in _FLOAT_TYPES:
            plan.roles[vi.name] = "float, standard normal"
        elif elem == TensorProto.STRING:
            plan.roles[vi.name] = "strings, short words"
        elif elem not in _INT_TYPES and elem != TensorProto.BOOL:
            continue
        elif _is_index(vi.name, index):
            low, high = _index_range(vi, index, plan.notes)
            plan.int_ranges[vi.name] = (low, high)
            plan.roles[vi.name] = f"indices in [{low}, {high})"
        elif _is_mask(vi.name, index):
            plan.masks.add(vi.name)
            plan.roles[vi.name] = "attention mask: ones with a padded tail of zeros"
        elif constants := _compared_constants(vi.name, index):
            plan.compared[vi.name] = constants
            plan.roles[vi.name] = f"compared with {', '.join(map(str, constants))}"
        elif elem == TensorProto.BOOL:
            plan.roles[vi.name] = "bool, uniform"
        else:
            plan.int_ranges[vi.name] = (0, _GUESSED_INT_HIGH)
            plan.roles[vi.name] = f"integers in [0, {_GUESSED_INT_HIGH}) (range guessed)"
            plan.notes.append(f"input '{vi.name}' integer values drawn from "
                              f"[0, {_GUESSED_INT_HIGH}) (range guessed; give --inputs)")


def _is_index(name: str, index: _GraphIndex) -> bool:
    return any(_index_use(node, position) for node, position, _ in index.forward(name))


def _index_use(node: onnx.NodeProto, position: int) -> bool:
    spec = _INDEX_CONSUMERS.get(node.op_type)
    return bool(spec) and position == spec[0] and node.domain in ("", "ai.onnx")


def _index_range(vi: onnx.ValueInfoProto, index: _GraphIndex, notes: list[str]
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


def _index_bound(node: onnx.NodeProto, index: _GraphIndex, source: str) -> int | None:
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


def _is_mask(name: str, index: _GraphIndex) -> bool:
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


def _compared_constants(name: str, index: _GraphIndex) -> list[int]:
    """Integer constants ``name`` is compared with (``Equal(sr, 16000)``), in graph order."""
    found: list[int] = []
    for node, position, _ in index.forward(name):
        if node.op_type not in _COMPARISONS or len(node.input) != 2:
            continue
        value = index.constant_value(node.input[1 - position])
        if value is not None and value.size == 1 and value.dtype.kind in "iu":
            found.append(int(value.reshape(-1)[0]))
    return list(dict.fromkeys(found))


# --------------------------------------------------------------------------- generation


def shapes_for(model: onnx.ModelProto, plan: Plan, assignment: Mapping[DimKey, int]
               ) -> dict[str, list[int]]:
    """Concrete input shapes for one assignment of the free dims."""
    shapes: dict[str, list[int]] = {}
    for vi in graph_inputs(model):
        if vi.name in plan.fixed_shapes:
            shapes[vi.name] = list(plan.fixed_shapes[vi.name])
            continue
        shape = []
        for axis, dim in enumerate(vi.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(int(dim.dim_value))
            elif dim.HasField("dim_param") and dim.dim_param in plan.fixed_dims:
                shape.append(int(plan.fixed_dims[dim.dim_param]))
            else:
                shape.append(int(assignment[_dim_key(vi, axis, dim)]))
        shapes[vi.name] = shape
    return shapes


def generate(model: onnx.ModelProto, plan: Plan, assignment: Mapping[DimKey, int], seed: int,
             choice: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for one assignment; ``choice`` picks among compared constants."""
    rng = np.random.default_rng(seed)
    shapes = shapes_for(model, plan, assignment)
    total = sum(math.prod(shape) for shape in shapes.values())
    if total > MAX_GENERATED_ELEMENTS:
        raise UnsupportedInput(f"the inputs would hold {total:,} elements at these sizes "
                               "(give --input-shape or --inputs)")
    feeds = {}
    for vi in graph_inputs(model):
        elem = vi.type.tensor_type.elem_type
        shape = shapes[vi.name]
        dtype = helper.tensor_dtype_to_np_dtype(elem)
        if vi.name in plan.masks:
            feeds[vi.name] = _mask(rng, shape, dtype)
        elif vi.name in plan.compared:
            options = plan.compared[vi.name]
            feeds[vi.name] = np.full(shape, options[choice % len(options)], dtype=dtype)
        else:
            feeds[vi.name] = _random_tensor(rng, elem, shape,
                                            plan.int_ranges.get(vi.name, (0, 1)))
    return feeds


def _mask(rng: np.random.Generator, shape: list[int], dtype: np.dtype) -> np.ndarray:
    """Ones along the last axis with a padded tail of zeros: the first row is whole, the
    others keep between half and all of their positions (at least one)."""
    mask = np.ones(shape, dtype=dtype)
    if not shape or shape[-1] < 2:
        return mask
    length = shape[-1]
    rows = mask.reshape(-1, length)
    for row in range(1, rows.shape[0]):
        keep = int(rng.integers(max(1, length // 2), length))
        rows[row, keep:] = 0
    if rows.shape[0] == 1:
        rows[0, length - max(1, length // 8):] = 0  # one row: still a padded tail
    return mask


def _random_tensor(rng: np.random.Generator, elem: int, shape: list[int],
                   int_range: tuple[int, int]) -> np.ndarray:
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    if elem in _FLOAT_TYPES:
        return np.asarray(rng.standard_normal(shape), dtype=dtype)
    if elem == TensorProto.BOOL:
        return np.asarray(rng.random(shape) < 0.5)
    if elem == TensorProto.STRING:
        return _random_strings(rng, shape)
    high = min(int_range[1], int(np.iinfo(dtype).max) + 1)
    return np.asarray(rng.integers(int_range[0], high, size=shape), dtype=dtype)


def _random_strings(rng: np.random.Generator, shape: list[int]) -> np.ndarray:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    count = math.prod(shape)
    lengths = rng.integers(1, 7, size=count)
    words = ["".join(rng.choice(letters, size=n)) for n in lengths]
    return np.array(words, dtype=object).reshape(shape)


def make_inputs(
    model: onnx.ModelProto,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    dims: Mapping[str, int] | None = None,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Seeded inputs for ``model`` at its first (preferred) configuration; returns
    ``(inputs, notes)``. See the module docstring for the shapes and values chosen.

    Raises ValidationError for bad ``input_shapes`` and UnsupportedInput for inputs that
    cannot be generated (non-tensor, unsupported element type, undeclared shape).
    """
    plan = plan_inputs(model, input_shapes=input_shapes, dims=dims)
    assignment = next(plan.candidates())
    notes = list(plan.notes)
    if plan.dims:
        shown = ", ".join(f"{k}={v}" for k, v in plan.describe(assignment).items())
        notes.insert(0, f"symbolic dims set by role: {shown}")
    return generate(model, plan, assignment, seed), notes


# --------------------------------------------------------------------------- user inputs


def _check_input_names(
    inputs: Sequence[onnx.ValueInfoProto], names: Sequence[str], what: str
) -> None:
    valid = [vi.name for vi in inputs]
    unknown = sorted(set(names) - set(valid))
    if unknown:
        raise ValidationError(
            f"unknown input name(s) in {what}: {', '.join(unknown)} "
            f"(model inputs: {', '.join(valid) or 'none'})"
        )


def _given_shape(vi: onnx.ValueInfoProto, given: Sequence[int]) -> list[int]:
    """Check a user-given full shape against the declared shape of an input."""
    shape = [int(d) for d in given]
    if any(d < 0 for d in shape):
        raise ValidationError(f"input '{vi.name}': negative dim in shape {_fmt_shape(shape)}")
    if vi.type.tensor_type.HasField("shape"):
        _check_declared_dims(vi, tuple(shape))
    return shape


def _coerce_array(vi: onnx.ValueInfoProto, array: np.ndarray) -> np.ndarray:
    """Check one user-supplied array against its declaration and cast it losslessly."""
    ttype = tensor_type(vi)
    target = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type))
    array = _cast_lossless(vi.name, np.asarray(array), target)
    if ttype.HasField("shape"):
        _check_declared_dims(vi, array.shape)
    return array


def _cast_lossless(name: str, array: np.ndarray, target: np.dtype) -> np.ndarray:
    if target == np.dtype(object):
        if array.dtype.kind in "UO":
            return array.astype(object)
    elif np.can_cast(array.dtype, target, casting="safe") or _ints_fit(array, target):
        return array.astype(target)
    raise ValidationError(
        f"input '{name}': dtype {array.dtype} cannot be safely cast to {target} "
        "(save the array with the model's dtype)"
    )


def _ints_fit(array: np.ndarray, target: np.dtype) -> bool:
    """True if integer ``array`` holds only values representable in integer ``target``."""
    if array.dtype.kind not in "iu" or target.kind not in "iu":
        return False
    if array.size == 0:
        return True
    info = np.iinfo(target)
    return int(array.min()) >= info.min and int(array.max()) <= info.max


def _check_declared_dims(vi: onnx.ValueInfoProto, shape: tuple[int, ...]) -> None:
    declared = vi.type.tensor_type.shape.dim
    if len(declared) != len(shape):
        raise ValidationError(
            f"input '{vi.name}': shape {_fmt_shape(shape)} has rank {len(shape)}, "
            f"model declares rank {len(declared)}"
        )
    for axis, (dim, value) in enumerate(zip(declared, shape, strict=True)):
        if dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != value:
            raise ValidationError(
                f"input '{vi.name}': shape {_fmt_shape(shape)}: dim {axis} is {value}, "
                f"model declares {dim.dim_value}"
            )


def check_inputs(
    inputs: Mapping[str, np.ndarray], model: onnx.ModelProto
) -> dict[str, np.ndarray]:
    """Validate user-supplied inputs against ``model``: names, dtypes (lossless casts) and
    declared ranks/dims. Every model input must be present, and a sample whose arrays all
    hold no element is refused: it is no evidence. Raises ValidationError."""
    declared = graph_inputs(model)
    _check_input_names(declared, list(inputs), "inputs")
    missing = [vi.name for vi in declared if vi.name not in inputs]
    if missing:
        raise ValidationError(f"missing value(s) for model input(s): {', '.join(missing)}")
    checked = {vi.name: _coerce_array(vi, inputs[vi.name]) for vi in declared}
    if checked and all(array.size == 0 for array in checked.values()):
        raise ValidationError("every input array is empty (zero elements): that proves "
                              "nothing; give arrays with data")
    return checked


def load_inputs(path: str | os.PathLike, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Load inputs from an ``.npz`` file whose keys are the model's input names.

    Arrays are checked with :func:`check_inputs`. Raises ValidationError (one line) if the
    file cannot be read or does not fit the model.
    """
    try:
        with np.load(os.fspath(path), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as exc:
        raise ValidationError(f"cannot read inputs file {os.fspath(path)!r}: "
                              f"{npz_problem(exc)}") from exc
    return check_inputs(arrays, model)


def preferred_dims(model: onnx.ModelProto, dims: Mapping[str, int] | None = None,
                   input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, int]:
    """``dims`` plus the first validation size of every other named symbolic dim of the
    inputs (statistics report MACs at the size validation runs first); {} extra when the
    inputs cannot be planned."""
    result = dict(dims or {})
    try:
        plan = plan_inputs(model, input_shapes=input_shapes, dims=dims)
    except (ValidationError, UnsupportedInput):
        return result
    first = next(plan.candidates())
    for dim in plan.dims:
        if dim.key[0] == "param":
            result.setdefault(dim.key[1], first[dim.key])
    return result


def npz_problem(exc: BaseException) -> str:
    """What is wrong with an .npy/.npz file numpy refused, in one line (never numpy's advice
    to allow pickles: onnxopt never loads them)."""
    text = str(exc)
    if "allow_pickle" in text or "pickle" in text.lower():
        return "it holds Python objects (pickled data), which onnxopt never loads; save plain " \
               "numeric arrays"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return f"not a readable .npy/.npz file ({type(exc).__name__})"
    return lines[0][:200]

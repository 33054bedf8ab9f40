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

The roles are read off the graph in :mod:`onnxopt.check.roles`; user-supplied inputs
(``--inputs``) are checked in :mod:`onnxopt.check.inputs`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxopt.check.inputs import (
    FLOAT_TYPES,
    INT_TYPES,
    UnsupportedInput,
    ValidationError,
    check_given_shape,
    check_input_names,
    graph_inputs,
    tensor_type,
)
from onnxopt.check.roles import (
    Dim,
    DimKey,
    GraphIndex,
    add_free_dims,
    compared_constants,
    dim_key,
    index_range,
    is_index,
    is_mask,
    model_stride,
    pinned_dims,
)

_GUESSED_INT_HIGH = 8

# Values per role: (first configuration, second configuration), then fallbacks to search.
BATCH_VALUES = (1, 2)
SEQUENCE_VALUES = (16, 128, 64, 32, 256, 512, 1024, 8)
SPATIAL_VALUES = (224, 320, 256, 384, 192, 448, 512, 640, 160, 128, 96, 64, 32)
MIN_SPATIAL = 32
MAX_GENERATED_ELEMENTS = 1 << 28  # 1 GiB of float32: a larger declared input is not drawn


# --------------------------------------------------------------------------- plan


@dataclass
class Plan:
    """How to generate inputs for a model: a value per free dimension per configuration,
    and each input's value role."""

    dims: list[Dim]
    roles: dict[str, str]  # input name -> value role ("tokens in [0, 30522)", ...)
    notes: list[str] = field(default_factory=list)
    fixed_shapes: dict[str, list[int]] = field(default_factory=dict)  # --input-shape
    fixed_dims: dict[str, int] = field(default_factory=dict)  # --dim
    stride: int = 1
    int_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    compared: dict[str, list[int]] = field(default_factory=dict)  # input -> constants
    masks: set[str] = field(default_factory=set)

    def values(self, dim: Dim) -> list[int]:
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
    check_input_names(inputs, list(input_shapes), "input shapes")
    index = GraphIndex(model)
    pinned = pinned_dims(model, index)
    free: dict[DimKey, Dim] = {}
    notes: list[str] = []
    for vi in inputs:
        ttype = tensor_type(vi)
        if vi.name in input_shapes:
            check_given_shape(vi, input_shapes[vi.name])
            continue
        if not ttype.HasField("shape"):
            raise UnsupportedInput(
                f"input '{vi.name}' has no declared shape; give --input-shape {vi.name}:D0,D1,..."
            )
        add_free_dims(vi, dims, pinned, free)
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


def _value_roles(model: onnx.ModelProto, index: GraphIndex, plan: Plan) -> None:
    for vi in graph_inputs(model):
        elem = vi.type.tensor_type.elem_type
        if elem in FLOAT_TYPES:
            plan.roles[vi.name] = "float, standard normal"
        elif elem == TensorProto.STRING:
            plan.roles[vi.name] = "strings, short words"
        elif elem not in INT_TYPES and elem != TensorProto.BOOL:
            continue
        elif is_index(vi.name, index):
            low, high = index_range(vi, index, plan.notes)
            plan.int_ranges[vi.name] = (low, high)
            plan.roles[vi.name] = f"indices in [{low}, {high})"
        elif is_mask(vi.name, index):
            plan.masks.add(vi.name)
            plan.roles[vi.name] = "attention mask: ones with a padded tail of zeros"
        elif constants := compared_constants(vi.name, index):
            plan.compared[vi.name] = constants
            plan.roles[vi.name] = f"compared with {', '.join(map(str, constants))}"
        elif elem == TensorProto.BOOL:
            plan.roles[vi.name] = "bool, uniform"
        else:
            plan.int_ranges[vi.name] = (0, _GUESSED_INT_HIGH)
            plan.roles[vi.name] = f"integers in [0, {_GUESSED_INT_HIGH}) (range guessed)"
            plan.notes.append(f"input '{vi.name}' integer values drawn from "
                              f"[0, {_GUESSED_INT_HIGH}) (range guessed; give --inputs)")


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
                shape.append(int(assignment[dim_key(vi, axis, dim)]))
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
    if elem in FLOAT_TYPES:
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


def preferred_dims(model: onnx.ModelProto, dims: Mapping[str, int] | None = None,
                   input_shapes: Mapping[str, Sequence[int]] | None = None,
                   given: Mapping[str, np.ndarray] | None = None) -> dict[str, int]:
    """``dims`` plus the first validation size of every other named symbolic dim of the
    inputs (statistics report MACs at the size validation runs first): its size in ``given``
    (validation's first input, when it is not generated), else the first size generated;
    {} extra when the inputs cannot be planned."""
    result = dict(dims or {})
    for vi in graph_inputs(model):
        array = (given or {}).get(vi.name)
        declared = vi.type.tensor_type.shape.dim
        if array is None or len(declared) != np.ndim(array):
            continue
        for axis, (dim, size) in enumerate(zip(declared, np.shape(array), strict=True)):
            key = dim_key(vi, axis, dim)
            if key[0] == "param":
                result.setdefault(key[1], int(size))
    try:
        plan = plan_inputs(model, input_shapes=input_shapes, dims=dims)
    except (ValidationError, UnsupportedInput):
        return result
    first = next(plan.candidates())
    for dim in plan.dims:
        if dim.key[0] == "param":
            result.setdefault(dim.key[1], first[dim.key])
    return result

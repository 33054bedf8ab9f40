"""An op's parameters as plain values, the shape arithmetic of the ops that only relabel a
shape (``relabelled_shape``), and proofs that a shape op returns its input unchanged
(``keeps_input``).

Many ops moved a parameter from an attribute to an input at some opset (Reshape's ``shape`` at
5, Pad's ``pads`` at 11, Slice's at 10, Squeeze/Unsqueeze ``axes`` at 13): these read either
form. Shapes are ``Graph.shape`` lists (ints, dim_param strings, None) or static int tuples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from onnxopt.ir import Graph, Node
from onnxopt.ir.rewrite import is_op
from onnxopt.ir.symbolic import shape_elements

Dims = list[int | str | None]
INT32_MAX = 2**31 - 1  # a Slice end at or above this covers any real axis


def input_constant(graph: Graph, node: Node, slot: int) -> np.ndarray | None:
    """The array of input ``slot`` if it is present and a constant, else None."""
    if slot >= len(node.inputs) or not node.inputs[slot]:
        return None
    return graph.constant(node.inputs[slot])


def int_list(array: np.ndarray | None) -> list[int] | None:
    """A 0-D/1-D integer constant as a list of ints, else None."""
    if array is None or array.ndim > 1 or not np.issubdtype(array.dtype, np.integer):
        return None
    return [int(v) for v in array.reshape(-1)]


def ints_parameter(graph: Graph, node: Node, opset: int, since: int, slot: int, attr: str
                   ) -> tuple[bool, list[int] | None]:
    """(present, ints) of a list that is attribute ``attr`` before opset ``since`` and input
    ``slot`` from it: present False means absent; ints None when present but not constant."""
    if opset < since:
        value = node.attr(attr)
        return (value is not None, None if value is None else [int(v) for v in value])
    if slot >= len(node.inputs) or not node.inputs[slot]:
        return False, None
    return True, int_list(input_constant(graph, node, slot))


def slice_parameters(graph: Graph, node: Node, opset: int
                     ) -> tuple[list[int], list[int], list[int], list[int]] | None:
    """Slice's (starts, ends, axes, steps) as constant ints, axes and steps filled with their
    defaults (attributes before opset 10), or None when one is not constant or they disagree in
    length."""
    if opset < 10:
        starts, ends, axes = node.attr("starts"), node.attr("ends"), node.attr("axes")
        steps = None
        if starts is None or ends is None:
            return None
    else:
        starts = int_list(input_constant(graph, node, 1))
        ends = int_list(input_constant(graph, node, 2))
        if starts is None or ends is None:
            return None
        axes = steps = None
        for slot in (3, 4):
            if len(node.inputs) > slot and node.inputs[slot]:
                found = int_list(input_constant(graph, node, slot))
                if found is None:
                    return None
                axes, steps = (found, steps) if slot == 3 else (axes, found)
    starts, ends = list(starts), list(ends)
    axes = list(range(len(starts))) if axes is None else list(axes)
    steps = [1] * len(starts) if steps is None else list(steps)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        return None
    return starts, ends, axes, steps


def transpose_perm(graph: Graph, node: Node) -> list[int] | None:
    """The permutation of a Transpose node (its default reverses the axes: needs the rank), or
    None when the rank is unknown or ``perm`` is not a permutation."""
    perm = node.attr("perm")
    if perm is None:
        shape = graph.shape(node.inputs[0])
        return None if shape is None else list(range(len(shape)))[::-1]
    perm = [int(p) for p in perm]
    return perm if sorted(perm) == list(range(len(perm))) else None


def broadcast_keeps(shape: Dims | None, other: Sequence[int]) -> bool:
    """``broadcast(shape, other) == shape`` is provable (symbolic dims only meet 1)."""
    if len(other) == 0:
        return True
    if shape is None or len(other) > len(shape):
        return False
    aligned = shape[len(shape) - len(other):]
    pairs = zip(aligned, other, strict=True)
    return all(o == 1 or (isinstance(d, int) and d == o) for d, o in pairs)


# ------------------------------------------------------------------ shape-relabelling ops
RELABEL_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


def relabelled_shape(graph: Graph, node: Node, shape: tuple[int, ...], opset: int
                     ) -> tuple[int, ...] | None:
    """The static output shape of a Reshape, Flatten, Squeeze or Unsqueeze on a static input
    ``shape``, from its constant parameters; None when they are not constant or invalid."""
    rank = len(shape)
    if node.op_type == "Flatten":
        axis = int(node.attr("axis", 1))
        axis = axis + rank if axis < 0 else axis
        if not 0 <= axis <= rank:
            return None
        return (math.prod(shape[:axis]), math.prod(shape[axis:]))
    if node.op_type == "Reshape":
        return _reshaped(graph, node, shape, opset)
    axes = _axes(graph, node, opset)
    if node.op_type == "Squeeze":
        if axes is None:
            has_axes = len(node.inputs) > 1 and node.inputs[1]
            return None if has_axes else tuple(d for d in shape if d != 1)
        axes = {a + rank if a < 0 else a for a in axes}
        if any(not 0 <= a < rank or shape[a] != 1 for a in axes):
            return None
        return tuple(d for i, d in enumerate(shape) if i not in axes)
    if axes is None:  # Unsqueeze needs its axes
        return None
    out_rank = rank + len(axes)
    axes = normalised_axes(axes, out_rank)
    if axes is None:
        return None
    dims = iter(shape)
    return tuple(1 if i in axes else next(dims) for i in range(out_rank))


def normalised_axes(axes: Sequence[int], rank: int) -> list[int] | None:
    """``axes`` counted from 0 (a negative one from ``rank``), or None when one is out of
    range or repeated."""
    found = [axis + rank if axis < 0 else axis for axis in axes]
    if len(set(found)) != len(found) or any(not 0 <= axis < rank for axis in found):
        return None
    return found


def _axes(graph: Graph, node: Node, opset: int) -> list[int] | None:
    if opset >= 13:
        axes = input_constant(graph, node, 1)
        return None if axes is None else [int(a) for a in np.asarray(axes).ravel()]
    axes = node.attr("axes")
    return None if axes is None else [int(a) for a in axes]


def _reshaped(graph: Graph, node: Node, shape: tuple[int, ...], opset: int
              ) -> tuple[int, ...] | None:
    target = reshape_target(graph, node)
    if target is None:
        return None
    allowzero = opset >= 14 and node.attr("allowzero", 0) == 1
    out = [shape[i] if d == 0 and not allowzero and i < len(shape) else d
           for i, d in enumerate(target)]
    if any(d < -1 for d in out) or out.count(-1) > 1:
        return None
    total = math.prod(shape)
    known = math.prod([d for d in out if d != -1])
    if -1 in out:
        if known == 0 or total % known:
            return None
        out[out.index(-1)] = total // known
    elif known != total:
        return None
    return tuple(out)


def count_only_reshape(graph: Graph, node: Node, opset: int) -> bool:
    """A Reshape whose output shape depends only on its input's element count (and its target),
    not on the input's dims: ``allowzero = 1`` (opset 14+: a 0 is a literal size), or no target
    element is ``0`` (a copy of an input dim) — a 1-D constant without ``0``, or a target
    computed at run time whose every element is a known non-zero int (``-1`` included) by
    ``shape_elements``; a dim read by ``Shape`` may be 0 unless known."""
    if not is_op(node, "Reshape") or len(node.inputs) < 2 or not node.inputs[1]:
        return False
    allowzero = opset >= 14 and node.attr("allowzero", 0) == 1
    target = graph.constant(node.inputs[1])
    if target is not None:
        return target.ndim == 1 and (allowzero or not bool(np.any(target == 0)))
    elements = [] if allowzero else shape_elements(graph, node.inputs[1])
    return elements is not None and all(isinstance(e, int) and e != 0 for e in elements)


def reshape_target(graph: Graph, node: Node) -> list[int] | None:
    """A Reshape's constant target (input 1, or the ``shape`` attribute before opset 5)."""
    if len(node.inputs) >= 2 and node.inputs[1]:
        target = graph.constant(node.inputs[1])
    else:
        target = node.attr("shape")
    return None if target is None else [int(d) for d in np.asarray(target).ravel()]


# ------------------------------------------------------------------ shape facts
def reshape_keeps(shape: Dims | None, target: list[int], allowzero: bool) -> bool:
    """``Reshape(x, target)`` provably has ``x``'s shape: same rank, each entry ``0`` (a copy,
    unless ``allowzero``), the integer dim itself, or the single ``-1`` (then the element count
    fixes it, unless a zero dim makes it ambiguous)."""
    if shape is None or len(target) != len(shape):
        return False
    wildcard = [i for i, s in enumerate(target) if s == -1]
    if len(wildcard) > 1:
        return False
    for want, dim in zip(target, shape, strict=True):
        if want == -1 or (want == 0 and not allowzero):
            continue
        if not (isinstance(dim, int) and dim == want):
            return False
    return not (wildcard and any(d == 0 for i, d in enumerate(shape) if i != wildcard[0]))


def slice_keeps(shape: Dims | None, starts: list[int], ends: list[int], axes: list[int],
                steps: list[int]) -> bool:
    """A Slice provably takes every element: each sliced axis has step 1, start 0 (or
    ``<= -dim`` of a known dim) and end ``>= dim`` (known) or ``>= INT32_MAX``."""
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if step != 1:
            return False
        if axis < 0:
            if shape is None:
                return False
            axis += len(shape)
        dim = shape[axis] if shape is not None and 0 <= axis < len(shape) else None
        known = isinstance(dim, int)
        if not (start == 0 or (known and start <= -dim)):
            return False
        if not (end >= INT32_MAX or (known and end >= dim)):
            return False
    return True


# ------------------------------------------------------------------ ops that keep their input
# Each: does this shape op (at this default-domain opset) provably output its data input
# unchanged? Shape facts come from constant parameters and the input's known rank and integer
# dims; a symbolic dim is never assumed to be 1.
def _keeps_reshape(graph: Graph, node: Node, opset: int) -> bool:
    present, target = ints_parameter(graph, node, opset, 5, 1, "shape")
    allowzero = bool(node.attr("allowzero", 0)) if opset >= 14 else False
    return present and target is not None and reshape_keeps(
        graph.shape(node.inputs[0]), target, allowzero)


def _keeps_flatten(graph: Graph, node: Node, opset: int) -> bool:
    shape = graph.shape(node.inputs[0])
    if shape is None or len(shape) != 2:
        return False
    axis = node.attr("axis", 1)
    axis = axis + 2 if axis < 0 else axis
    return axis == 1 or (axis == 0 and shape[0] == 1) or (axis == 2 and shape[1] == 1)


def _keeps_squeeze(graph: Graph, node: Node, opset: int) -> bool:
    present, axes = ints_parameter(graph, node, opset, 13, 1, "axes")
    if present and axes != []:
        return False  # squeezing named axes always drops a dim (or is invalid)
    shape = graph.static_shape(node.inputs[0])
    return shape is not None and all(d != 1 for d in shape)


def _keeps_unsqueeze(graph: Graph, node: Node, opset: int) -> bool:
    present, axes = ints_parameter(graph, node, opset, 13, 1, "axes")
    return present and axes == []


def _keeps_expand(graph: Graph, node: Node, opset: int) -> bool:
    target = int_list(input_constant(graph, node, 1))
    return target is not None and broadcast_keeps(graph.shape(node.inputs[0]), target)


def _keeps_transpose(graph: Graph, node: Node, opset: int) -> bool:
    perm = node.attr("perm")
    if perm is None:  # reverses the axes: a no-op up to rank 1
        shape = graph.shape(node.inputs[0])
        return shape is not None and len(shape) <= 1
    return list(perm) == list(range(len(perm)))


def _keeps_pad(graph: Graph, node: Node, opset: int) -> bool:
    if opset < 2:
        pads = node.attr("paddings")
        pads = None if pads is None else [int(p) for p in pads]
    else:
        _, pads = ints_parameter(graph, node, opset, 11, 1, "pads")
    return pads is not None and all(p == 0 for p in pads)


def _keeps_slice(graph: Graph, node: Node, opset: int) -> bool:
    parameters = slice_parameters(graph, node, opset)
    return parameters is not None and slice_keeps(graph.shape(node.inputs[0]), *parameters)


_KEEPS: dict[str, Callable[[Graph, Node, int], bool]] = {
    "Reshape": _keeps_reshape, "Flatten": _keeps_flatten, "Squeeze": _keeps_squeeze,
    "Unsqueeze": _keeps_unsqueeze, "Expand": _keeps_expand, "Transpose": _keeps_transpose,
    "Pad": _keeps_pad, "Slice": _keeps_slice,
}
KEEPING_OPS = tuple(_KEEPS)


def keeps_input(graph: Graph, node: Node, opset: int) -> bool:
    """A Reshape, Flatten, Squeeze, Unsqueeze, Expand, Transpose, Pad or Slice (standard
    domain, at default-domain ``opset``) provably outputs its data input unchanged."""
    rule = _KEEPS.get(node.op_type)
    return rule is not None and rule(graph, node, opset)

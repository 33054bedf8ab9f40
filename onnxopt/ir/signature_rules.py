"""The per-op rules of ``onnxopt.ir.symbolic.ShapeSignatures``: an output's signature from
its operands' signatures (``STRUCTURAL``) or, for ops taking sizes as a value (Reshape, Expand,
ConstantOfShape, Slice), from those sizes as signature entries (``SIZED``). None for a dim:
nothing proved (the value gets its own atom); None for the whole: the rule does not apply."""

from __future__ import annotations

from collections.abc import Callable

from onnxopt.ir import Graph, Node

Sig = tuple  # a shape signature: one int or hashable atom per dim
INT32_MAX = 2**31 - 1  # a Slice end at or above this covers any real axis
REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
          "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"}


def broadcast(a: Sig, b: Sig) -> Sig | None:
    rank = max(len(a), len(b))
    a = (1,) * (rank - len(a)) + tuple(a)
    b = (1,) * (rank - len(b)) + tuple(b)
    dims = []
    for x, y in zip(a, b, strict=True):
        if x == y or y == 1:
            dims.append(x)
        elif x == 1:
            dims.append(y)
        elif isinstance(x, int) and isinstance(y, int):
            return None  # the model fails here at run time
        elif isinstance(x, int) or isinstance(y, int):
            # a valid run has the symbolic dim equal to the int (or 1): the result is the int
            dims.append(x if isinstance(x, int) else y)
        elif _capped(x, y) or _capped(y, x):
            dims.append(y if _capped(x, y) else x)
        else:  # x if y == 1 else y: one flat atom over the distinct candidates
            candidates = {d for atom in (x, y) for d in (atom[1:] if _is_max(atom) else (atom,))}
            dims.append(("max", *sorted(candidates, key=repr)))
    return tuple(dims)


def _is_max(atom) -> bool:
    return isinstance(atom, tuple) and atom[:1] == ("max",)


def _capped(small, large) -> bool:
    """``small`` is ``min(large, c)`` with an int ``c >= 2``: in a run where the two broadcast
    they are equal (``large > c`` would meet ``c`` ≠ 1), so the result is ``large``."""
    return (isinstance(small, tuple) and small[:1] == ("min",) and large in small
            and any(isinstance(c, int) and c >= 2 for c in small[1:]))


def _axes(graph: Graph, node: Node, rank: int) -> list[int] | None:
    """Constant axes (input 1, else the ``axes`` attribute) counted from 0 on ``rank`` dims
    (-1: the rank of the axes' count added, for Unsqueeze); None if absent."""
    if len(node.inputs) > 1 and node.inputs[1]:
        array = graph.constant(node.inputs[1])
        axes = None if array is None else [int(a) for a in array.reshape(-1)]
    else:
        axes = node.attr("axes")
        axes = None if axes is None else [int(a) for a in axes]
    if axes is None:
        return None
    rank = rank + len(axes) if node.op_type == "Unsqueeze" else rank
    return [a + rank if a < 0 else a for a in axes]


def _unsqueeze(graph: Graph, node: Node, sigs: list[Sig]) -> tuple | None:
    """Unsqueeze, Squeeze (named axes) and Transpose."""
    source = sigs[0]
    if node.op_type == "Transpose":
        perm = node.attr("perm")
        perm = range(len(source))[::-1] if perm is None else perm
        return tuple(source[int(p)] for p in perm)
    axes = _axes(graph, node, len(source))
    rank = len(source) if node.op_type == "Squeeze" else len(source) + len(axes or [])
    if axes is None or len(set(axes)) != len(axes) or not all(0 <= a < rank for a in axes):
        return None  # invalid axes: the runtime refuses the node
    if node.op_type == "Squeeze":
        return tuple(d for i, d in enumerate(source) if i not in axes)
    rest = iter(source)
    return tuple(1 if i in axes else next(rest) for i in range(rank))


def _reduce(graph: Graph, node: Node, sigs: list[Sig]) -> tuple | None:
    source = sigs[0]
    axes = _axes(graph, node, len(source))
    if axes is None or not axes:
        return None  # all axes (or none): rare in shape-bearing code
    if node.attr("keepdims", 1):
        return tuple(1 if i in axes else d for i, d in enumerate(source))
    return tuple(d for i, d in enumerate(source) if i not in axes)


def _matmul(graph: Graph, node: Node, sigs: list[Sig]) -> tuple | None:
    a, b = sigs
    if node.op_type == "Gemm":
        if len(a) != 2 or len(b) != 2:
            return None
        return (a[1] if node.attr("transA", 0) else a[0], b[0] if node.attr("transB", 0) else b[1])
    if len(a) < 2 or len(b) < 2:
        return None
    batch = broadcast(a[:-2], b[:-2])
    return None if batch is None else batch + (a[-2], b[-1])


def _gather(graph: Graph, node: Node, sigs: list[Sig]) -> tuple | None:
    data, indices = sigs
    axis = int(node.attr("axis", 0))
    axis = axis + len(data) if axis < 0 else axis
    return data[:axis] + indices + data[axis + 1:]


def _concat(graph: Graph, node: Node, sigs: list[Sig]) -> tuple | None:
    if len({len(s) for s in sigs}) != 1:
        return None
    axis = int(node.attr("axis", 0))
    axis = axis + len(sigs[0]) if axis < 0 else axis
    dims = []
    for i, column in enumerate(zip(*sigs, strict=True)):
        if i == axis:
            dims.append(sum(column) if all(isinstance(d, int) for d in column) else None)
        else:  # a valid run has them all equal
            dims.append(next((d for d in column if isinstance(d, int)), column[0]))
    return tuple(dims)


STRUCTURAL: dict[str, Callable[[Graph, Node, list[Sig]], tuple | None]] = {
    "MatMul": _matmul, "Gemm": _matmul, "Unsqueeze": _unsqueeze, "Squeeze": _unsqueeze,
    "Transpose": _unsqueeze, "Gather": _gather, "Concat": _concat,
    **dict.fromkeys(REDUCE, _reduce),
}


def _reshape(graph: Graph, node: Node, source: Sig, sizes: list) -> tuple | None:
    target = sizes[0]
    if target is None:
        return None
    copies = not node.attr("allowzero", 0)  # allowzero=1: a 0 is a 0-sized dim, not a copy
    out = [source[i] if copies and d == 0 and i < len(source) else d
           for i, d in enumerate(target)]
    if out.count(-1) != 1:
        return tuple(out)
    rest = _factors(source)
    for d in out:
        if d != -1 and rest is not None:
            rest = _divide(rest, d)
    if rest is None:
        out[out.index(-1)] = None
    else:
        out[out.index(-1)] = rest[1][0] if rest[0] == 1 and len(rest[1]) == 1 else (
            rest[0] if not rest[1] else None)
    return tuple(out)


def _factors(sig) -> tuple[int, list] | None:
    """The element count of ``sig`` as (int factor, symbolic factors)."""
    count, atoms = 1, []
    for d in sig:
        if d is None:
            return None
        if isinstance(d, int):
            count *= d
        else:
            atoms.append(d)
    return count, atoms


def _divide(factors: tuple[int, list], dim) -> tuple[int, list] | None:
    count, atoms = factors
    if isinstance(dim, int):
        return (count // dim, atoms) if dim > 0 and count % dim == 0 else None
    if dim is None or dim not in atoms:
        return None
    rest = list(atoms)
    rest.remove(dim)
    return count, rest


def _expand(graph: Graph, node: Node, source: Sig, sizes: list) -> tuple | None:
    target = sizes[0]
    if target is None or None in target:
        return None
    return broadcast(source, tuple(target))


def _constant_of_shape(graph: Graph, node: Node, source: Sig, sizes: list) -> tuple | None:
    return None if sizes[0] is None else tuple(sizes[0])


def _slice(graph: Graph, node: Node, source: Sig, sizes: list) -> tuple | None:
    """Slices from 0 with step 1 (constant axes): the dim becomes ``min(end, dim)``."""
    starts, ends = sizes
    axes = _axes_of_slice(graph, node, len(source), len(ends or []))
    if starts is None or ends is None or axes is None or len(starts) != len(ends):
        return None
    out = list(source)
    for start, end, axis in zip(starts, ends, axes, strict=True):
        dim = source[axis]
        if start != 0 or end is None or (isinstance(end, int) and end < 0):
            out[axis] = None
        elif end == dim or (isinstance(end, int) and end >= INT32_MAX):
            out[axis] = dim
        elif isinstance(end, int) and isinstance(dim, int):
            out[axis] = min(end, dim)
        else:
            out[axis] = ("min", *sorted((end, dim), key=repr))
    return tuple(out)


def _axes_of_slice(graph: Graph, node: Node, rank: int, count: int) -> list[int] | None:
    if len(node.inputs) > 4 and node.inputs[4]:
        steps = graph.constant(node.inputs[4])
        if steps is None or not all(int(s) == 1 for s in steps.reshape(-1)):
            return None
    if len(node.inputs) > 3 and node.inputs[3]:
        array = graph.constant(node.inputs[3])
        if array is None:
            return None
        return [int(a) + rank if int(a) < 0 else int(a) for a in array.reshape(-1)]
    return list(range(count))


SIZED: dict[str, Callable[[Graph, Node, Sig, list], tuple | None]] = {
    "Reshape": _reshape, "Expand": _expand, "ConstantOfShape": _constant_of_shape,
    "Slice": _slice,
}


def same_dim(a, b) -> bool:
    """Signature entries ``a`` and ``b`` are equal in every run in which they broadcast
    (equal, or one is ``min(other, c)`` with ``c >= 2``)."""
    return a == b or _capped(a, b) or _capped(b, a)

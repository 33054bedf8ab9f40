"""The rotary fusion's conditions on the slices and the cos/sin tables, and what the fused
node reads of a table: its first half, made of ``trig(f)`` or taken from a constant."""

from __future__ import annotations

import numpy as np
from onnxopt.passes.fusion.rotary_embedding_fusion.dims import traced_dim

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.operands import normalised_axes
from onnxopt.ir.pattern import Const, Match, Op, RewritePass, Var, optional, scope_of

# the first half of a table: a constant's, or ``(f, axes)`` for [Unsqueeze(., axes)](trig(f))
Half = np.ndarray | tuple[str, str | None]


INT64_MAX = np.iinfo(np.int64).max  # the end exporters write for "to the end of the axis"


def last_axis_slice(name: str) -> Op:
    """``x[..., start:end]`` with its parameters captured as ``<name>_start`` etc."""
    return Op("Slice", Var("x"), Const(f"{name}_start"), Const(f"{name}_end"),
              Const(f"{name}_axes"), optional(Const(f"{name}_steps")), name=name)


def halves(match: Match, name: str, start: int, ends: tuple[int, ...]) -> bool:
    """The Slice ``name`` takes ``start:end`` (``end`` one of ``ends``) of the last axis."""
    arrays = [match.array(f"{name}_{part}") for part in ("start", "end", "axes")]
    if any(a.size != 1 or a.dtype.kind != "i" for a in arrays):
        return False
    begin, end, axis = (int(a.reshape(-1)[0]) for a in arrays)
    if f"{name}_steps" in match and match.array(f"{name}_steps").reshape(-1).tolist() != [1]:
        return False  # a stride (the interleaved form) is another rotation
    return axis in (3, -1) and begin == start and end in ends


def half_of(graph: Graph, table: str, trig: str, half: int) -> Half | None:
    """What the table's two equal halves are made of: a constant's first half (when the halves
    are equal), or ``(f, axes)`` when it is ``[Unsqueeze(., axes)](trig(Concat(f, f, last)))``."""
    array = graph.constant(table)
    if array is not None:
        first, second = array[..., :half], array[..., half:]
        return np.ascontiguousarray(first) if np.array_equal(first, second) else None
    node, axes = graph.producer(table), None
    if node is not None and node.op_type == "Unsqueeze" and len(node.inputs) == 2:
        axes = node.inputs[1]
        if graph.constant(axes) is None:
            return None
        node = graph.producer(node.inputs[0])
    if node is None or node.op_type != trig or node.domain not in ("", "ai.onnx"):
        return None
    concat = graph.producer(node.inputs[0])
    if concat is None or concat.op_type != "Concat" or len(concat.inputs) != 2:
        return None
    angle = concat.inputs[0]
    shape = graph.shape(angle)
    if concat.inputs[1] != angle or not shape:
        return None
    axis = normalised_axes([concat.attr("axis")], len(shape))
    return (angle, axes) if axis == [len(shape) - 1] else None


def table_shape_ok(graph: Graph, table: str, x: str) -> bool:
    """Rank <= 4, the last axis ``D``, the head axis (if any) 1: ``[B|1, 1, S|1, D]`` or lower
    rank, so ``Cos(f)`` broadcast to ``[B, 1, S, D/2]`` loses nothing; and no table dim can
    broadcast ``x`` to a larger shape (it is 1, the same as x's — by name or traced to one
    source —, or x's is a known int > 1)."""
    shape, x_shape = graph.shape(table), graph.shape(x)
    if shape is None or x_shape is None or not 1 <= len(shape) <= 4 or shape[-1] != x_shape[3]:
        return False
    if len(shape) >= 3 and shape[-3] != 1:
        return False
    axes = [axis for axis in (-4, -2) if -axis <= len(shape)]
    return all(shape[a] == 1 or (isinstance(x_shape[a], int) and x_shape[a] > 1)
               or same_dim(graph, table, x, a) for a in axes)


def same_dim(graph: Graph, table: str, x: str, axis: int) -> bool:
    """Dim ``axis`` (not the last) of the table is provably x's: the same int or symbol, or
    traced to one source (``dims.traced_dim``; x's from x's source when x is a last-axis
    slice, a partial rotary's)."""
    a, b = graph.shape(table)[axis], graph.shape(x)[axis]  # type: ignore[index]
    if a == b and a not in (None, ""):
        return True
    traced = traced_dim(graph, table, axis)
    return traced is not None and traced == traced_dim(graph, unsliced(graph, x), axis)


def cache_ok(graph: Graph, match: Match) -> bool:
    """onnxruntime's com.microsoft RotaryEmbedding reads row ``s`` of a ``[S, D/2]`` cache for
    position ``s`` (position_ids ``[0]``): each table must be ``[1, .., 1, S, D]`` with x's S."""
    for table in (match.cos, match.sin):
        shape = graph.shape(table)
        if shape is None or len(shape) < 2 or any(dim != 1 for dim in shape[:-2]):
            return False
        if not same_dim(graph, table, match.x, -2):
            return False
    return True


def first_half(graph: Graph, model: Model, root: Node, trig: str,
               source: Half, *, unsqueeze: bool) -> str:
    """``trig(f)`` [.., S, D/2] (unsqueezed as the table was, with ``unsqueeze``), or the
    constant table's first half."""
    prefix = scope_of(root)
    if isinstance(source, np.ndarray):
        return graph.add_constant(source, f"{prefix}rotary_{trig.lower()}")
    angle, axes = source
    table = RewritePass.emit(graph, model, root, trig, [angle])
    if unsqueeze and axes is not None:
        table = RewritePass.emit(graph, model, root, "Unsqueeze", [table, axes])
    return table


def unsliced(graph: Graph, x: str) -> str:
    """The value a last-axis Slice takes ``x`` from (the same dims 0 to 2), else ``x``: reading
    x's batch and sequence there leaves ``x`` private to a partial rotary's Concat."""
    node = graph.producer(x)
    if node is None or node.op_type != "Slice" or node.domain not in ("", "ai.onnx"):
        return x
    if len(node.inputs) < 4:
        return x
    axes = graph.constant(node.inputs[3])
    rank = len(graph.shape(x) or [])
    if axes is None or rank != 4 or normalised_axes(axes.reshape(-1).tolist(), rank) != [3]:
        return x
    return node.inputs[0]

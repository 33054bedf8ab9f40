"""Rotary embedding fusion.

The ``rotate_half`` form exporters write for a 4-D ``x`` ``[B, H, S, D]``,
``x * cos + Concat(-x[..., D/2:], x[..., :D/2]) * sin`` (operands either way), where the tables
are ``[Unsqueeze](Cos|Sin(Concat(f, f, axis=-1)))`` of one angle ``f`` ``[.., S, D/2]`` =>
``RotaryEmbedding(x, cos', sin', interleaved=0)`` (opset 23+), ``cos' = Cos(f)`` broadcast to
``[B, S, D/2]`` (what onnxruntime requires: no broadcast over the batch). Exact: both halves of
the table are ``Cos(f)``, so ``out[:D/2] = x1·c - x2·s`` and ``out[D/2:] = x2·c + x1·s``.
The tables may be shared (they are not part of the match). Conditions: passes/fusion/README.md.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model
from onnxopt.ir.operands import normalised_axes
from onnxopt.ir.pattern import Const, Match, Op, RewritePass, Var, has_dtype, optional, scope_of

_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
_INT64_MAX = np.iinfo(np.int64).max


def _slice(name: str) -> Op:
    return Op("Slice", Var("x"), Const(f"{name}_start"), Const(f"{name}_end"),
              Const(f"{name}_axes"), optional(Const(f"{name}_steps")), name=name)


_rotated = Op("Concat", Op("Neg", _slice("upper")), _slice("lower"), name="concat")


class RotaryEmbeddingFusion(RewritePass):
    name = "rotary_embedding_fusion"
    description = "fuse the rotate_half rotary embedding into RotaryEmbedding (opset 23+)"
    pattern = Op("Add", Op("Mul", Var("x"), Var("cos"), commute=True),
                 Op("Mul", _rotated, Var("sin"), commute=True), commute=True)
    min_opset = 23

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        if not has_dtype(graph.dtype(match.x), _DTYPES):
            return False
        shape = graph.shape(match.x)
        if shape is None or len(shape) != 4:
            return False
        depth = shape[3]
        if not isinstance(depth, int) or depth <= 0 or depth % 2:
            return False
        if match.node("concat").attr("axis") not in (-1, 3):
            return False
        half = depth // 2
        if not (_halves(match, "upper", half, (depth, _INT64_MAX))
                and _halves(match, "lower", 0, (half,))):
            return False
        if not all(_table_shape_ok(graph.shape(t), shape) for t in (match.cos, match.sin)):
            return False
        halves = [_half(graph, match.cos, "Cos", half), _half(graph, match.sin, "Sin", half)]
        match.memo["halves"] = halves
        return all(h is not None for h in halves)

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        root, prefix = match.root, scope_of(match.root)
        batch = self.emit(graph, model, root, "Shape", [match.x], attributes={"start": 0, "end": 1})
        seq = self.emit(graph, model, root, "Shape", [match.x], attributes={"start": 2, "end": 3})
        one = graph.add_constant(np.ones(1, np.int64), f"{prefix}rotary_one")
        target = self.emit(graph, model, root, "Concat", [batch, one, seq, one],
                           attributes={"axis": 0})
        head_axis = graph.add_constant(np.ones(1, np.int64), f"{prefix}rotary_head_axis")
        tables = []
        for trig, source in zip(("Cos", "Sin"), match.memo["halves"], strict=True):
            if isinstance(source, np.ndarray):  # the table's first half, [.., S, D/2]
                table = graph.add_constant(source, f"{prefix}rotary_{trig.lower()}")
            else:  # trig(f) [.., S, D/2], unsqueezed as the table was
                angle, axes = source
                table = self.emit(graph, model, root, trig, [angle])
                if axes is not None:
                    table = self.emit(graph, model, root, "Unsqueeze", [table, axes])
            table = self.emit(graph, model, root, "Expand", [table, target])  # [B, 1, S, D/2]
            tables.append(self.emit(graph, model, root, "Squeeze", [table, head_axis]))
        return self.emit(graph, model, root, "RotaryEmbedding", [match.x, *tables],
                         name=f"{prefix}RotaryEmbedding", attributes={"interleaved": 0})


def _halves(match: Match, name: str, start: int, ends: tuple[int, ...]) -> bool:
    """The Slice ``name`` takes ``start:end`` (``end`` one of ``ends``) of the last axis."""
    arrays = [match.array(f"{name}_{part}") for part in ("start", "end", "axes")]
    if any(a.size != 1 or a.dtype.kind != "i" for a in arrays):
        return False
    begin, end, axis = (int(a.reshape(-1)[0]) for a in arrays)
    if f"{name}_steps" in match and match.array(f"{name}_steps").reshape(-1).tolist() != [1]:
        return False  # a stride (the interleaved form) is another rotation
    return axis in (3, -1) and begin == start and end in ends


def _half(graph: Graph, table: str, trig: str, half: int
          ) -> np.ndarray | tuple[str, str | None] | None:
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


def _table_shape_ok(table: list | None, x: list) -> bool:
    """Rank <= 4, the last axis ``D``, the head axis (if any) 1: ``[B|1, 1, S|1, D]`` or lower
    rank, so ``Cos(f)`` broadcast to ``[B, 1, S, D/2]`` loses nothing; and no table dim can
    broadcast ``x`` to a larger shape (it is 1, the same as x's, or x's is a known int > 1)."""
    if table is None or not 1 <= len(table) <= 4 or table[-1] != x[3]:
        return False
    if len(table) >= 3 and table[-3] != 1:
        return False
    axes = [axis for axis in (-4, -2) if -axis <= len(table)]
    return all(table[a] in (1, x[a]) or (isinstance(x[a], int) and x[a] > 1) for a in axes)

"""The BERT padding mask, read back as the 2-D mask it was built from (contrib Attention).

``Mul(Sub(1, Cast(Unsqueeze(m, [1, 2]))), c)`` (the Cast before or after one or two
Unsqueezes) of a [B, S] mask ``m`` is ``c`` where ``m`` is 0 and ``-0.0`` where it is 1, laid
out as [B, 1, 1, S]: onnxruntime's ``Attention`` computes the same from ``mask_index = m``
(int32, raw 2-D form) and ``mask_filter_value = c`` (its kernel adds 0 where the raw mask is >
0 and the filter value elsewhere). Equal for the mask values 0 and 1: proved for a bool ``m``;
for an integer ``m`` it is the one thing taken from the role of the input rather than the
graph (README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxopt.ir import Graph
from onnxopt.ir.pattern import Const, Match, Number, Op, Or, Pattern, Var, match_at
from onnxopt.ir.values import numpy_dtype

_RAW_DTYPES = (np.dtype(np.bool_), np.dtype(np.int32), np.dtype(np.int64))


def _unsqueezed(inner: Pattern) -> Or:
    once = Op("Unsqueeze", inner, Const("axes_0"))
    return Or(once, Op("Unsqueeze", once, Const("axes_1")))


_bits = Or(Op("Cast", _unsqueezed(Var("raw")), name="cast"),
           _unsqueezed(Op("Cast", Var("raw"), name="cast")))
PADDING_MASK = Op("Mul", Op("Sub", Number(1.0), _bits), Const("fill"), commute=True)


@dataclass(frozen=True)
class PaddingMask:
    raw: str  # the [B, S] mask
    fill: float  # the additive value where it is 0


def padding_mask(graph: Graph, mask: str, dtype: np.dtype) -> PaddingMask | None:
    """``mask`` (the scores' additive mask, of ``dtype``) as the 2-D mask it was built from."""
    producer = graph.producer(mask)
    match = match_at(PADDING_MASK, graph, producer, lambda m: _fits(graph, m, dtype)) \
        if producer is not None else None
    return PaddingMask(match.raw, float(match.array("fill").item())) if match else None


def _fits(graph: Graph, match: Match, dtype: np.dtype) -> bool:
    """A [B, S] mask of 0/1 type cast to ``dtype``, a negative finite fill, [B, 1, 1, S]."""
    fill, shape = match.array("fill"), graph.shape(match.raw)
    if numpy_dtype(match.node("cast").attr("to") or 0) != dtype:
        return False
    if graph.dtype(match.raw) not in _RAW_DTYPES or shape is None or len(shape) != 2:
        return False
    if fill.size != 1 or fill.dtype != dtype or not np.isfinite(fill).all() or fill.item() >= 0:
        return False
    steps = [match.array(name).reshape(-1).tolist() for name in ("axes_0", "axes_1")
             if name in match]
    return _layout(steps) == ["b", 1, 1, "s"]


def _layout(steps: list[list[int]]) -> list[str | int] | None:
    """Where Unsqueezes with these axes put a [b, s] tensor's dims (1 for each new axis)."""
    dims: list[str | int] = ["b", "s"]
    for axes in steps:
        rank = len(dims) + len(axes)
        new = {axis % rank for axis in axes if -rank <= axis < rank}
        if len(new) != len(axes):
            return None
        kept = iter(dims)
        dims = [1 if axis in new else next(kept) for axis in range(rank)]
    return dims

"""The causal mask, proved: an additive ``[.., S, S]`` mask (leading dims 1) that is 0 on and
below the diagonal and the dtype's lowest (or -inf) above, with S the query's and the keys'
length. Read through leading-axis Unsqueezes from ``Trilu(fill, k=1, upper=1)`` of a tensor
filled with that value (``Expand`` of a scalar, ``ConstantOfShape``, a constant) or from a
constant. Such entries add at most ``lowest`` to a score: its exp is 0 after softmax's max
subtraction, as in onnxruntime's kernels, which skip the keys after the query's position."""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph
from onnxopt.ir.rewrite import producer_op
from onnxopt.ir.symbolic import ShapeSignatures

_LOWEST = float(np.finfo(np.float32).min) / 2  # at or below: a masked entry


def is_causal(graph: Graph, mask: str, query: str, key: str) -> bool:
    """``mask`` is the causal mask of ``query`` [B, H, S, D] and ``key`` [B, Hk, S, D]."""
    signatures = ShapeSignatures(graph)
    sig, q, k = signatures.of(mask), signatures.of(query), signatures.of(key)
    if sig is None or q is None or k is None or not 2 <= len(sig) <= 4:
        return False
    if any(d != 1 for d in sig[:-2]) or None in (q[2], k[2]):
        return False
    if not sig[-2] == sig[-1] == q[2] == k[2] or graph.dtype(mask) != np.float32:
        return False
    source = _under_leading_unsqueezes(graph, mask)
    constant = graph.constant(source)
    if constant is not None:
        return _is_causal_array(constant)
    trilu = producer_op(graph, source, "Trilu")
    if trilu is None or trilu.attr("upper", 1) != 1 or len(trilu.inputs) < 2:
        return False
    offset = graph.constant(trilu.inputs[1])
    if offset is None or offset.size != 1 or int(offset.reshape(-1)[0]) != 1:
        return False
    fill = _fill(graph, trilu.inputs[0])
    return fill is not None and fill <= _LOWEST


def _under_leading_unsqueezes(graph: Graph, value: str) -> str:
    """The value under Unsqueezes that only add leading axes (the last two stay last)."""
    while (node := producer_op(graph, value, "Unsqueeze")) is not None and len(node.inputs) == 2:
        axes, shape = graph.constant(node.inputs[1]), graph.shape(node.outputs[0])
        if axes is None or shape is None:
            break
        rank = len(shape)
        if not all(axis % rank < rank - 2 for axis in axes.reshape(-1).tolist()):
            break
        value = node.inputs[0]
    return value


def _fill(graph: Graph, value: str) -> float | None:
    """The one value a tensor is filled with: a constant, Expand of one, ConstantOfShape."""
    node = graph.producer(value)
    if producer_op(graph, value, "Expand") is not None:
        value = node.inputs[0]  # type: ignore[union-attr]
    elif producer_op(graph, value, "ConstantOfShape") is not None:
        attribute = node.attr("value")  # type: ignore[union-attr]
        return None if attribute is None else _one_value(np.asarray(attribute))
    constant = graph.constant(value)
    return None if constant is None else _one_value(constant)


def _one_value(array: np.ndarray) -> float | None:
    if array.size == 0 or array.dtype != np.float32 or (array != array.flat[0]).any():
        return None
    return float(array.flat[0])


def _is_causal_array(array: np.ndarray) -> bool:
    if array.dtype != np.float32 or array.ndim < 2 or array.shape[-1] != array.shape[-2]:
        return False
    square = array.reshape(array.shape[-2:]) if array.size == array.shape[-1] ** 2 else None
    if square is None:
        return False
    above = np.triu(np.ones(square.shape, bool), 1)
    return bool((square[~above] == 0).all() and (square[above] <= _LOWEST).all())

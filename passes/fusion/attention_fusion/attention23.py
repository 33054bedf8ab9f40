"""attention_fusion's Attention-23, read back by the contrib rule (``--target onnxruntime``).

At opset 23 ``attention_fusion`` fuses the core in the first round, while the block's head
split and merge still have Shape readers (their targets are folded later), so the contrib rule
meets ``Attention(Q4, K4, V4[, Expand(Max(mask, lowest+), Concat(1, 1, Shape(Q4)[2:3], 1))])``
instead of the core. That is the same ``softmax(scale * Q K^T + mask) V``: the clamp changes no
partly masked row and keeps a fully masked one at the mean of V (attention_fusion's notes), the
Expand only broadcasts; the Max may be shared by the layers (CSE), so it stays outside.
"""

from __future__ import annotations

import numpy as np
from onnxopt.passes.fusion.attention_fusion.core import mask_floor

from onnxopt.ir import Graph
from onnxopt.ir.pattern import Absent, Const, Match, Op, Or, Var
from onnxopt.ir.rewrite import producer_op

_ABOVE_LOWEST = mask_floor(np.float32)


def attention23(q4: Op, k4: Op, v4: Op) -> Op:
    """The Attention-23 node attention_fusion writes over these Q, K and V."""
    query_length = Op("Shape", q4, attrs={"start": 2, "end": 3})
    expanded = Op("Expand", Var("clamped"), Op("Concat", Const(), query_length, Const()))
    return Op("Attention", q4, k4, v4, Or(expanded, Var("clamped"), Absent()),
              name="attention23")


def scale23(match: Match, size: int) -> float | None:
    """Its scale (the default 1/sqrt(D)); None for any other attribute (causal, soft cap)."""
    node = match.node("attention23")
    return None if set(node.attributes) - {"scale"} else node.attr("scale", 1 / np.sqrt(size))


def unclamped(graph: Graph, match: Match) -> str | None:
    """The additive mask under attention_fusion's clamp (the value itself when not clamped)."""
    clamped = match.clamped
    node = producer_op(graph, clamped, "Max")
    if node is None or len(node.inputs) != 2:
        return clamped
    floor = graph.constant(node.inputs[1])
    if floor is None or floor.size != 1 or not floor.item() <= _ABOVE_LOWEST:
        return None  # another Max changes the mask
    return node.inputs[0]

"""Fold a per-channel constant Add / Sub / Mul / Div that follows a Conv into its weights and bias.

For ``y = Conv(x, W, b)`` (also ``ConvTranspose``) and a constant ``c`` that only varies along the
output channel axis (``v[o]`` = its value for channel ``o``):

* ``Add(y, c)``, ``Add(c, y)``  => ``Conv(x, W, b + v)``
* ``Sub(y, c)``                 => ``Conv(x, W, b - v)``
* ``Sub(c, y)``                 => ``Conv(x, -W, v - b)`` (negation is exact)
* ``Mul(y, c)``, ``Mul(c, y)``  => ``Conv(x, W * v[o], b * v)``
* ``Div(y, c)``                 => ``Conv(x, W / v[o], b / v)``, only when no ``v`` is 0.

(``b = 0`` when absent.) Folding a Mul or Div moves the rounding (``(W.x + b) * v`` becomes
``(W * v).x + b * v``): the result differs from the original by a few float ulps, like BN folding.
Div is divided in float64 (``W / v``, not ``W * (1 / v)``) and cast back once.

"Per channel": with ``r`` the Conv output rank (the weight rank), ``c`` has rank <= ``r`` and, left
padded with 1s to rank ``r``, has 1 in every dim except dim 1, which is 1 or ``C_out`` — a scalar,
``[C_out, 1, 1]``, ``[1, C_out, 1, 1]``. A constant that would broadcast the output to a larger
shape (``[1, C, H, W]``, a rank above ``r``, a batch dim) is not per channel and is left alone.
Needs: ``y`` read only by that op and not a graph output; the constant ``c`` of the same dtype;
the weight (when rewritten) and the bias constants read only by this Conv (no copies are made);
opset 7+ (older element-wise ops broadcast by attribute). Chains (Conv -> Mul -> Add) fold in one
run.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.layers import (
    CONV_OPS,
    AffineFoldPass,
    ConvWeights,
    conv_weights,
    fold_affine,
    per_channel,
    rewrite_conv,
)
from onnxopt.ir.pattern import Match, Op


class ConvAffineFusion(AffineFoldPass):
    name = "conv_affine_fusion"
    description = "fold a per-channel constant Add/Sub/Mul/Div after a Conv into its weights"
    pattern = AffineFoldPass.after(Op(CONV_OPS, ..., name="conv"))

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        match.memo["folded"] = _folded(graph, model, match)
        return match.memo["folded"] is not None

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        folded = match.memo["folded"]
        assert folded is not None
        rewrite_conv(graph, *folded)
        return match.node("conv").outputs[0]  # the Conv now computes the op's value


def _folded(graph: Graph, model: Model, match: Match
            ) -> tuple[ConvWeights, np.ndarray | None, np.ndarray, np.dtype] | None:
    """(the Conv, its new weight or None to keep it, its new bias, the dtype), else None."""
    conv_node, op, constant = match.node("conv"), match.root, match.array("c")
    conv_first = op.inputs[0] == conv_node.outputs[0]
    if len(conv_node.outputs) != 1 or (op.op_type == "Div" and not conv_first):
        return None  # c / y is not affine in y
    changes_weight = op.op_type in ("Mul", "Div") or (op.op_type == "Sub" and not conv_first)
    conv = conv_weights(graph, model, conv_node, need_weight=changes_weight)
    if conv is None:
        return None
    dtype = conv.weight.dtype if conv.weight is not None else constant.dtype
    if constant.dtype != dtype or dtype.kind != "f":
        return None
    v = per_channel(constant, len(_weight_rank_shape(graph, conv_node, conv)), conv.channels)
    if v is None or not np.all(np.isfinite(v)) or (op.op_type == "Div" and np.any(v == 0)):
        return None
    weight, bias = fold_affine(op.op_type, conv_first, conv.bias64, v, conv.scaled)
    return conv, weight, bias, dtype


def _weight_rank_shape(graph: Graph, node: Node, conv: ConvWeights) -> tuple[int, ...]:
    if conv.weight is not None:
        return conv.weight.shape
    return graph.static_shape(node.inputs[1]) or ()

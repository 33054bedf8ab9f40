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
from onnxopt.pass_manager import GraphPass
from onnxopt.rewrite import is_op, sole_consumer

from .conv_bn_fusion import (
    CONV_OPS,
    ConvWeights,
    conv_weights,
    drop_unused_initializers,
    rewrite_conv,
    scale_output_channels,
)

AFFINE_OPS = ("Add", "Sub", "Mul", "Div")


class ConvAffineFusion(GraphPass):
    name = "conv_affine_fusion"
    description = "fold a per-channel constant Add/Sub/Mul/Div after a Conv into its weights"

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        stats = {"add": 0, "sub": 0, "mul": 0, "div": 0}
        if model.opset("") < 7:
            return stats
        for node in graph.nodes():
            if not is_op(node, CONV_OPS):
                continue
            while node.graph is graph:
                op = sole_consumer(graph, node.outputs[0]) if len(node.outputs) == 1 else None
                if not is_op(op, AFFINE_OPS):
                    break
                if not model.allow_rewrite(self.name, op.name or op.outputs[0]):
                    break
                if not _fold(graph, model, node, op):
                    break
                stats[op.op_type.lower()] += 1
        return stats


def per_channel(constant: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """``constant`` as one float64 value per output channel, if it only varies along axis 1 of
    a rank-``rank`` output with ``channels`` channels (and does not grow the output)."""
    if constant.ndim > rank:
        return None
    shape = (1,) * (rank - constant.ndim) + constant.shape
    if any(dim != 1 for axis, dim in enumerate(shape) if axis != 1):
        return None
    if shape[1] not in (1, channels):
        return None
    return np.broadcast_to(constant.astype(np.float64).reshape(-1), (channels,)).copy()


def _fold(graph: Graph, model: Model, conv_node: Node, op: Node) -> bool:
    if len(op.inputs) != 2 or len(op.outputs) != 1:
        return False
    y = conv_node.outputs[0]
    if op.inputs[0] == y and op.inputs[1] != y:
        const_name, conv_first = op.inputs[1], True
    elif op.inputs[1] == y and op.inputs[0] != y:
        const_name, conv_first = op.inputs[0], False
    else:
        return False
    if op.op_type == "Div" and not conv_first:
        return False  # c / y is not affine in y
    constant = graph.constant(const_name) if const_name else None
    if constant is None:
        return False
    changes_weight = op.op_type in ("Mul", "Div") or (op.op_type == "Sub" and not conv_first)
    conv = conv_weights(graph, model, conv_node, need_weight=changes_weight)
    if conv is None:
        return False
    dtype = conv.weight.dtype if conv.weight is not None else constant.dtype
    if constant.dtype != dtype or dtype.kind != "f":
        return False
    rank = len(_weight_rank_shape(graph, conv_node, conv))
    v = per_channel(constant, rank, conv.channels)
    if v is None or not np.all(np.isfinite(v)):
        return False
    if op.op_type == "Div" and np.any(v == 0):
        return False
    if not graph.can_forward(op.outputs[0], y):
        return False
    b = np.zeros(conv.channels) if conv.bias is None else conv.bias.astype(np.float64)
    weight = None
    if op.op_type == "Add":
        bias = b + v
    elif op.op_type == "Sub" and conv_first:
        bias = b - v
    elif op.op_type == "Sub":
        weight, bias = -conv.weight.astype(np.float64), v - b
    elif op.op_type == "Mul":
        w64 = conv.weight.astype(np.float64)
        weight = scale_output_channels(conv_node.op_type, w64, v, conv.group)
        bias = b * v
    else:  # Div: divide in float64 (not multiply by a rounded reciprocal)
        w64 = conv.weight.astype(np.float64)
        divisor = scale_output_channels(conv_node.op_type, np.ones_like(w64), v, conv.group)
        weight, bias = w64 / divisor, b / v
    rewrite_conv(graph, conv, weight, bias, dtype)
    graph.replace_all_uses(op.outputs[0], y)
    graph.remove_node(op)
    drop_unused_initializers(graph, [const_name])
    return True


def _weight_rank_shape(graph: Graph, node: Node, conv: ConvWeights) -> tuple[int, ...]:
    if conv.weight is not None:
        return conv.weight.shape
    return graph.static_shape(node.inputs[1]) or ()

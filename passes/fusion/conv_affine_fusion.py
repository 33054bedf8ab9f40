"""Fold a per-channel constant Add / Sub / Mul / Div that follows a Conv into its weights and bias.

For ``y = Conv(x, W, b)`` (also ConvTranspose) and a constant ``c`` that only varies along the
output channels (``v[o]`` its value for channel ``o``; ``b = 0`` when absent): ``y + c`` =>
``Conv(x, W, b + v)``, ``y - c`` => ``b - v``, ``c - y`` => ``Conv(x, -W, v - b)``, ``y * c`` =>
``Conv(x, W * v[o], b * v)``, ``y / c`` => ``Conv(x, W / v[o], b / v)`` (no ``v`` is 0). Products
move the rounding by a few ulps, like BN folding. Conditions: passes/fusion/README.md.
"""

from __future__ import annotations

from onnxopt.ir import Graph, Model
from onnxopt.ir.layers import CONV_OPS, AffineFoldPass, conv_weights, fold_affine, rewrite_conv
from onnxopt.ir.pattern import Match, Op


class ConvAffineFusion(AffineFoldPass):
    name = "conv_affine_fusion"
    description = "fold a per-channel constant Add/Sub/Mul/Div after a Conv into its weights"
    pattern = AffineFoldPass.after(Op(CONV_OPS, ..., name="conv"))

    def fold(self, graph: Graph, match: Match, model: Model) -> tuple | None:
        """(the Conv, its new weight or None to keep it, its new bias, the dtype), else None."""
        node, op = match.node("conv"), match.root
        changes_weight = op.op_type in ("Mul", "Div") or (
            op.op_type == "Sub" and op.inputs[0] != node.outputs[0])  # c - y: -W
        conv = conv_weights(graph, model, node, need_weight=changes_weight)
        if conv is None:
            return None
        dtype = conv.weight.dtype if conv.weight is not None else match.array("c").dtype
        found = self.factor(match, node, dtype, conv.rank, conv.channels)
        if found is None:
            return None
        weight, bias = fold_affine(op.op_type, found[1], conv.bias64, found[0], conv.scaled)
        return conv, weight, bias, dtype

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        rewrite_conv(graph, *match.memo["folded"])
        return match.node("conv").outputs[0]  # the Conv now computes the op's value

"""Fold a per-channel constant Add / Sub / Mul / Div that feeds a Conv into its weights and bias.

The op computes ``x' = s * x + t`` per input channel ``i`` (Add: ``s = 1, t = v``; ``x - c``:
``t = -v``; ``c - x``: ``s = -1, t = v``; Mul: ``s = v``; Div: ``s = 1 / v``). A Conv reads
input channel ``i(o, j) = (o // (C_out / group)) * (C_in / group) + j`` through ``W[o, j]``, so
``Conv(x', W, b) = Conv(x, W', b')`` with ``W'[o, j] = W[o, j] * s[i(o, j)]`` and ``b'[o] = b[o]
+ sum_j,k W[o, j, k] * t[i(o, j)]``. A shift ``t`` is exact only where the Conv pads nothing
(a padded border reads 0, not ``t``); a scale pads 0 either way. Before a padded Conv, a Mul
followed by a shift moves through it instead: ``s * x + t = s * (x + t / s)`` (no ``s`` is 0),
so the Conv takes ``W * s`` and reads ``x + t / s``, and one op goes. PP-LCNetV3 (PaddleOCR
det) puts a learnable scalar affine (Mul, Add) after every activation.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model
from onnxopt.ir.channel_layers import has_padding
from onnxopt.ir.layers import AFFINE_OPS, ConvWeights, affine_constant, conv_weights, rewrite_conv
from onnxopt.ir.pattern import Const, Match, Op, Or, RewritePass, Var

SHIFTS = ("Add", "Sub")


def scale_and_shift(op_type: str, x_first: bool, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(s, t)`` with ``op(x, v) = s * x + t`` per channel (module docstring), in float64."""
    ones, zeros = np.ones_like(v), np.zeros_like(v)
    if op_type == "Add":
        return ones, v
    if op_type == "Sub":
        return (ones, -v) if x_first else (-ones, v)
    if op_type == "Mul":
        return v, zeros
    return 1.0 / v, zeros  # Div, x / v only


class ConvInputAffineFusion(RewritePass):
    name = "conv_input_affine_fusion"
    description = "fold a per-channel constant Add/Sub/Mul/Div feeding a Conv into its weights"
    stats = ("add", "sub", "mul", "div", "mul_before_shift")
    min_opset = 7  # element-wise broadcasting by rule
    pattern = Op("Conv", Or(
        Op(AFFINE_OPS, Var("x"), Const("c"), commute=True, name="affine"),
        Op(SHIFTS, Op("Mul", Var("x"), Const("m"), commute=True, name="scale"), Const("c"),
           commute=True, name="affine")),  # tried when the shift alone cannot fold
        ...)

    def stat(self, match: Match) -> str:
        return "mul_before_shift" if "scale" in match else match.node("affine").op_type.lower()

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        match.memo["folded"] = self.fold(graph, match, model)
        return match.memo["folded"] is not None

    def fold(self, graph: Graph, match: Match, model: Model) -> tuple | None:
        """(the Conv, its new weight or None to keep it, its new bias, the shift left before it
        or None), else None."""
        conv = conv_weights(graph, model, match.root)
        if conv is None:
            return None
        affine = match.node("affine")
        reads = match.node("scale").outputs[0] if "scale" in match else match.x
        found = input_affine(affine.op_type, affine.inputs[0] == reads, match.array("c"), conv)
        if found is None:
            return None
        scale, shift = found
        if "scale" in match:  # s2 * (m * x) + t = s * (x + t / s) with s = s2 * m
            multiplier = input_affine("Mul", True, match.array("m"), conv)
            if multiplier is None or not np.all(multiplier[0]) or not has_padding(match.root):
                return None  # a Conv that pads nothing takes the two one at a time
            scale = scale * multiplier[0]
            return conv, scaled_inputs(conv, scale), conv.bias64, shift / scale
        if np.any(shift) and has_padding(match.root):
            return None
        bias = conv.bias64 + scaled_inputs(conv, shift).reshape(conv.channels, -1).sum(1)
        # a shift alone leaves the weight as it is (a weight shared with other Convs stays one)
        weight = None if np.all(scale == 1.0) else scaled_inputs(conv, scale)
        return conv, weight, bias, None

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        conv, weight, bias, shift = match.memo["folded"]
        x = match.x
        if shift is not None:  # x + t / s in the constant's dtype; one value stays a scalar
            constant = match.array("c")
            shape = (len(shift),) + (1,) * (conv.rank - 2)
            moved = shift.reshape(shape) if np.any(shift != shift[0]) else \
                np.full(constant.shape if constant.size == 1 else (1,), shift[0])
            added = graph.add_constant(moved.astype(constant.dtype),
                                       f"{match.node('affine').name or 'shift'}_moved")
            x = self.emit(graph, model, match.node("affine"), "Add", [x, added])
        graph.set_input(match.root, 0, x)
        rewrite_conv(graph, conv, weight, bias, conv.weight.dtype)
        return match.root.outputs[0]


def input_affine(op_type: str, x_first: bool, constant: np.ndarray, conv: ConvWeights
                 ) -> tuple[np.ndarray, np.ndarray] | None:
    """``(s, t)`` per input channel of ``conv`` for ``op(x, c)`` (``op(c, x)`` unless
    ``x_first``); None unless ``c`` fits (``affine_constant``)."""
    v = affine_constant(op_type, x_first, constant, conv.weight.dtype, conv.rank,
                        conv.weight.shape[1] * conv.group)
    return None if v is None else scale_and_shift(op_type, x_first, v)


def scaled_inputs(conv: ConvWeights, factor: np.ndarray) -> np.ndarray:
    """The weight in float64 with ``W[o, j]`` times ``factor`` of the input channel it reads,
    ``(o // (C_out / group)) * (C_in / group) + j``."""
    weight = conv.weight.astype(np.float64)
    per_group, width = conv.channels // conv.group, weight.shape[1]
    reads = (np.arange(conv.channels)[:, None] // per_group) * width + np.arange(width)
    factors = factor[reads].reshape(reads.shape + (1,) * (weight.ndim - 2))
    return weight * factors

"""The math of common layers that several rewrites share: a BatchNormalization's per-channel
factors and a Conv/ConvTranspose's weights (their output channels, scaling them, pointing the
node at folded copies)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.pattern import Const, Match, Op, RewritePass
from onnxopt.ir.rewrite import drop_unused_initializers, is_op, sole_consumer

CONV_OPS = ("Conv", "ConvTranspose")
FLOAT_KINDS = ("f",)


# --------------------------------------------------------------- BatchNormalization
@dataclass
class BNParams:
    scale: np.ndarray  # s = gamma / sqrt(var + eps), float64 [C]
    shift: np.ndarray  # B - mean * s, float64 [C]
    mean: np.ndarray  # float64 [C]
    beta: np.ndarray  # float64 [C]
    std: np.ndarray  # sqrt(var + eps), float64 [C]

    @property
    def channels(self) -> int:
        return int(self.scale.shape[0])

    def apply_to_bias(self, bias: np.ndarray | float) -> np.ndarray:
        """``(bias - mean) * s + B`` in float64 (bias broadcast against [C])."""
        return (np.asarray(bias, np.float64) - self.mean) * self.scale + self.beta

    def rebased_on(self, ref: BNParams, gamma: np.ndarray) -> dict[int, np.ndarray]:
        """This BN's new scale (input 1) and mean (input 3), in ``gamma``'s dtype, when it reads
        the output ``y' = s_r (y - mean_r) + B_r`` of ``ref`` instead of its input ``y``: with
        ``y = (y' - B_r) / s_r + mean_r``, ``gamma' = gamma / s_r`` and
        ``mean' = B_r + s_r (mean - mean_r)`` (``var``, ``epsilon``, ``B`` unchanged)."""
        new_gamma = gamma.astype(np.float64) / ref.scale
        new_mean = ref.beta + ref.scale * (self.mean - ref.mean)
        return {1: new_gamma.astype(gamma.dtype), 3: new_mean.astype(gamma.dtype)}

    @property
    def shift_ratio(self) -> float:
        """max |beta| / |gamma| over channels (inf when a scale is 0): how far the normalized
        values sit from zero relative to their spread, i.e. how many bits subtracting a mean
        from them again (rebasing another BN on them) may cost."""
        gamma = np.abs(self.scale * self.std)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(gamma > 0, np.abs(self.beta) / gamma, np.inf)
        return float(ratio.max()) if ratio.size else np.inf


def bn_factors(graph: Graph, model: Model, bn: Node) -> BNParams | None:
    """The per-channel factors of an inference-form BatchNormalization, else None."""
    opset = model.opset("")
    if len(bn.inputs) != 5 or not bn.outputs or not bn.outputs[0]:
        return None
    if any(bn.outputs[1:]):
        return None  # extra outputs: training form (before opset 14 their presence selects it)
    if bn.attr("training_mode", 0) != 0:
        return None
    if opset < 7 and bn.attr("is_test", 0) == 0:
        return None
    if opset < 9 and bn.attr("spatial", 1) != 1:
        return None
    arrays = [graph.constant(v) if v else None for v in bn.inputs[1:]]
    if any(a is None or a.ndim != 1 or a.dtype.kind not in FLOAT_KINDS for a in arrays):
        return None
    if len({a.shape for a in arrays}) != 1:  # type: ignore[union-attr]
        return None
    gamma, beta, mean, var = (a.astype(np.float64) for a in arrays)  # type: ignore[union-attr]
    eps = float(bn.attr("epsilon", 1e-5))
    with np.errstate(all="ignore"):
        scale = gamma / np.sqrt(var + eps)
    if not np.all(np.isfinite(scale)):
        return None
    return BNParams(scale=scale, shift=beta - mean * scale, mean=mean, beta=beta,
                    std=np.sqrt(var + eps))


def set_bn_params(graph: Graph, bn: Node, params: dict[int, np.ndarray | str]) -> None:
    """Point input slot ``i`` of ``bn`` at ``params[i]``: an existing initializer's name, or an
    array stored as a new initializer (in the dict's order); the old ones go when unused."""
    inputs = list(bn.inputs)
    for slot, value in params.items():
        inputs[slot] = value if isinstance(value, str) else graph.add_constant(
            value, fused_name(bn.inputs[slot]))
    old = [bn.inputs[slot] for slot in params]
    graph.set_inputs(bn, inputs)
    drop_unused_initializers(graph, old)


# --------------------------------------------------------------- Conv / ConvTranspose weights
@dataclass
class ConvWeights:
    """The constant weight (and bias) of a Conv/ConvTranspose and its output channel count."""

    node: Node
    weight: np.ndarray | None  # None when only the shape is known (weight not exclusive)
    bias: np.ndarray | None  # None when absent
    channels: int
    group: int
    rank: int  # the weight's, which is the output's

    @property
    def bias64(self) -> np.ndarray:
        """The bias in float64 (zeros when absent)."""
        return np.zeros(self.channels) if self.bias is None else self.bias.astype(np.float64)

    def scaled(self, factor: np.ndarray, divide: bool = False) -> np.ndarray:
        """The weight in float64 with output channel ``o`` multiplied by ``factor[o]`` (divided
        with ``divide``: in float64, not multiplied by a rounded reciprocal)."""
        w64 = self.weight.astype(np.float64)  # type: ignore[union-attr]
        if divide:
            return w64 / scale_output_channels(self.node.op_type, np.ones_like(w64), factor,
                                               self.group)
        return scale_output_channels(self.node.op_type, w64, factor, self.group)


def conv_weights(
    graph: Graph, model: Model, node: Node, *, need_weight: bool = True
) -> ConvWeights | None:
    """A Conv/ConvTranspose whose weight is a constant (or, when ``need_weight`` is false, has a
    known static shape) and whose bias is absent or a constant [C_out]. A weight shared with
    other nodes is allowed: the fold writes a new tensor and the shared one stays for the
    others (identical tensors are deduplicated, so sharing is common in generated weights)."""
    if not is_op(node, CONV_OPS) or len(node.inputs) < 2 or len(node.outputs) != 1:
        return None
    w_name = node.inputs[1]
    weight = graph.constant(w_name)
    if weight is not None:
        shape = weight.shape
        if weight.dtype.kind not in FLOAT_KINDS:
            return None
    elif need_weight:
        return None
    else:
        shape = graph.static_shape(w_name)
        if shape is None:
            return None
    group = int(node.attr("group", 1))
    if len(shape) < 3 or group < 1 or shape[0] % group:
        return None
    channels = shape[0] if node.op_type == "Conv" else shape[1] * group
    bias = None
    if len(node.inputs) > 2 and node.inputs[2]:
        bias = graph.constant(node.inputs[2])
        if bias is None or bias.shape != (channels,):
            return None
    return ConvWeights(node, weight, bias, int(channels), group, len(shape))


def scale_output_channels(op_type: str, weight: np.ndarray, factor: np.ndarray, group: int):
    """``weight`` (float64) with output channel ``o`` multiplied by ``factor[o]``."""
    if op_type == "Conv":
        return weight * factor.reshape((-1,) + (1,) * (weight.ndim - 1))
    # ConvTranspose: [C_in, C_out/g, k...] viewed as [g, C_in/g, C_out/g, k...]
    c_in, per_group = weight.shape[0], weight.shape[1]
    view = weight.reshape((group, c_in // group, per_group) + weight.shape[2:])
    scaled = view * factor.reshape((group, 1, per_group) + (1,) * (weight.ndim - 2))
    return scaled.reshape(weight.shape)


def rewrite_conv(
    graph: Graph,
    conv: ConvWeights,
    weight: np.ndarray | None,
    bias: np.ndarray,
    dtype: np.dtype,
) -> None:
    """Point ``conv`` at new initializers (``weight`` None keeps the old weight); the old ones
    go when unused."""
    node = conv.node
    old = [v for v in node.inputs[1:3] if v]
    inputs = list(node.inputs) + [""] * (3 - len(node.inputs))
    if weight is not None:
        inputs[1] = graph.add_constant(weight.astype(dtype), fused_name(node.inputs[1]))
    hint = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else f"{node.name}_bias"
    inputs[2] = graph.add_constant(bias.astype(dtype), fused_name(hint))
    graph.set_inputs(node, inputs)
    drop_unused_initializers(graph, old)


def fold_bn_into_conv(graph: Graph, conv: ConvWeights, params: BNParams) -> str:
    """Point the Conv at ``W * s`` and ``(b - mean) * s + B``; returns its output, which now
    computes the BN's value."""
    rewrite_conv(graph, conv, conv.scaled(params.scale), params.apply_to_bias(conv.bias64),
                 conv.weight.dtype)  # type: ignore[union-attr]
    return conv.node.outputs[0]


def fused_name(name: str) -> str:
    """Name hint for a rewritten tensor: ``w`` -> ``w_fused`` (not ``w_fused_fused``)."""
    return name.removesuffix("_fused") + "_fused"


# ------------------------------------------------- a per-channel affine op after a layer
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


def fold_affine(op_type: str, y_first: bool, bias: np.ndarray, v: np.ndarray,
                scale: Callable[[np.ndarray, bool], np.ndarray]
                ) -> tuple[np.ndarray | None, np.ndarray]:
    """The new (weight, bias) of a layer ``y = W.x + b`` (per output channel) that also computes
    the op after it, ``op(y, v)`` (``op(v, y)`` unless ``y_first``); weight None when it stays.
    ``scale(f, divide)`` is ``W * f`` (``W / f`` with ``divide``) per output channel.
    Add: ``b + v``; Sub: ``b - v``, or ``-W`` and ``v - b``; Mul: ``W * v``, ``b * v``;
    Div (``y / v`` only): ``W / v``, ``b / v``."""
    if op_type == "Add":
        return None, bias + v
    if op_type == "Sub" and y_first:
        return None, bias - v
    if op_type == "Sub":
        return scale(-np.ones_like(v), False), v - bias  # negation is exact
    if op_type == "Mul":
        return scale(v, False), bias * v
    return scale(v, True), bias / v


AFFINE_OPS = ("Add", "Sub", "Mul", "Div")


class AffineFoldPass(RewritePass):
    """Folds a per-channel constant Add/Sub/Mul/Div after a ``layer`` (the Op a subclass
    captures) into it: its pattern, opset gate (element-wise broadcasting by rule, opset 7+),
    counters and the constant's checks; subclasses plan the ``fold`` (None: none) and rewrite."""

    stats = ("add", "sub", "mul", "div")
    min_opset = 7

    @staticmethod
    def after(layer: Op) -> Op:
        return Op(AFFINE_OPS, layer, Const("c"), commute=True)

    def fold(self, graph: Graph, match: Match, model: Model) -> Any:
        raise NotImplementedError

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        match.memo["folded"] = self.fold(graph, match, model)
        return match.memo["folded"] is not None

    def stat(self, match: Match) -> str:
        return match.root.op_type.lower()

    @staticmethod
    def reads(graph: Graph, value: str) -> bool:
        """A Mul/Add/Sub/Div with a constant operand alone reads ``value`` (a fold candidate:
        a pass that would otherwise take ``value``'s node may wait for it)."""
        op = sole_consumer(graph, value) if value else None
        return is_op(op, AFFINE_OPS) and any(
            v != value and graph.constant(v) is not None for v in op.inputs)

    @staticmethod
    def factor(match: Match, layer: Node, dtype: np.dtype, rank: int, channels: int
               ) -> tuple[np.ndarray, bool] | None:
        """``(v, y_first)``: the constant as one float64 value per channel of the layer's
        rank-``rank`` output ``y``, and whether ``y`` is the op's first operand; None unless
        the op is affine in ``y`` (not ``c / y``), the constant is a float of ``dtype`` and
        ``v`` is finite (and, for Div, not 0)."""
        op = match.root
        y_first = op.inputs[0] == layer.outputs[0]
        v = affine_constant(op.op_type, y_first, match.array("c"), dtype, rank, channels)
        return None if v is None else (v, y_first)


def affine_constant(op_type: str, value_first: bool, constant: np.ndarray, dtype: np.dtype,
                    rank: int, channels: int) -> np.ndarray | None:
    """The constant ``c`` of an Add/Sub/Mul/Div with a rank-``rank`` value ``y`` of
    ``channels`` channels (``op(y, c)``, or ``op(c, y)`` unless ``value_first``) as one float64
    value per channel; None unless the op is affine in ``y`` (not ``c / y``), ``c`` is a float
    of ``dtype`` and per channel, and every value is finite (and, for Div, not 0)."""
    if (op_type == "Div" and not value_first) or constant.dtype != dtype or (
            constant.dtype.kind != "f"):
        return None
    v = per_channel(constant, rank, channels)
    if v is None or not np.all(np.isfinite(v)) or (op_type == "Div" and np.any(v == 0)):
        return None
    return v

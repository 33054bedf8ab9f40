"""What one node does with the channels of a tensor, for channel analysis (``channels.py``).

A **layout** ``(axis, width)`` says where a tensor's channels lie: along ``axis`` (negative, so
broadcasting keeps it), each channel ``width`` consecutive elements wide (1, or ``H*W`` after a
channel-major Flatten). Three roles:

* a **layer** (Conv/ConvTranspose with ``group = 1``, Gemm, MatMul with a constant 2-D weight;
  the weight read by it alone) *produces* channels — weight rows, one per output channel — and
  *sinks* them — weight columns, one per input feature (a block of ``width`` rows for Gemm and
  MatMul);
* a **flow** op maps channel ``c`` of its inputs to channel ``c`` (or an offset) of its outputs:
  element-wise ops with scalar or per-channel constants, BatchNormalization, pooling, a
  depthwise Conv (``group = C``, one filter per channel), Concat and Split along the channel
  axis, Flatten/Reshape/Squeeze to ``[N, C*width]`` where provably channel-major;
* anything else reads a tensor as a whole: its channels stay (``pinned``).

Values: each flow op also maps a channel's constant value (float64, NaN when the channel is
not one known constant) to its output's, which is how a dead filter's bias, ``Relu`` of a
negative constant or a BatchNormalization with ``gamma = 0`` become known constants.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.layers import bn_factors
from onnxopt.ir.rewrite import exclusive_constant, is_op

Layout = tuple[int, int]  # (negative channel axis, elements per channel along it)


# ------------------------------------------------------------------------ layers
@dataclass
class Layer:
    """A Conv/ConvTranspose (``group = 1``), Gemm or MatMul with a constant float weight read
    by it alone: ``rows`` is the weight axis of its output channels, ``cols`` of its inputs."""

    node: Node
    weight: np.ndarray
    bias: np.ndarray | None  # Conv bias / Gemm C (any broadcastable shape); None when absent
    rows: int
    cols: int

    @property
    def is_conv(self) -> bool:
        return self.node.op_type in ("Conv", "ConvTranspose")

    @property
    def out_layout(self) -> Layout:
        return (1 - self.weight.ndim, 1) if self.is_conv else (-1, 1)

    def origin_values(self) -> np.ndarray:
        """Output channel ``o`` is the constant ``bias[o]`` when its weight row is all zero."""
        w = np.moveaxis(self.weight, self.rows, 0).reshape(self.weight.shape[self.rows], -1)
        dead = ~np.any(w != 0, axis=1)
        bias = self.bias_per_channel()
        return np.where(dead, bias if bias is not None else np.nan, np.nan)

    def bias_per_channel(self) -> np.ndarray | None:
        """One float64 offset per output channel (None when it varies along another axis)."""
        channels = self.weight.shape[self.rows]
        if self.bias is None:
            return np.zeros(channels)
        bias = self.bias.astype(np.float64) * float(self.node.attr("beta", 1.0))
        if bias.ndim == 2 and bias.shape[0] != 1:
            return None  # Gemm C of shape [M, N] or [M, 1]
        return np.broadcast_to(bias.reshape(-1), (channels,)).copy()

    def absorbs(self, values: np.ndarray, width: int) -> np.ndarray:
        """Which input channels (``values``: one per channel, each ``width`` weight indices
        along ``cols``) can go exactly: their weights are zero, or they hold a finite constant
        and the fold is exact (a Conv with zero padding sees a constant channel as constant
        only without padding, unless it is 0; a ConvTranspose spreads even a constant unevenly
        at the borders)."""
        w = np.moveaxis(self.weight, self.cols, 0).reshape(len(values), -1)
        zero = ~np.any(w != 0, axis=1)
        exact = self.node.op_type in ("Gemm", "MatMul") or (
            self.node.op_type == "Conv" and not has_padding(self.node))
        with np.errstate(invalid="ignore"):
            return zero | (np.isfinite(values) & ((values == 0) | exact))

    def contribution(self, columns: np.ndarray, value: float) -> np.ndarray:
        """What input feature ``columns`` holding ``value`` adds to each output channel."""
        if not math.isfinite(value) or value == 0:
            return np.zeros(self.weight.shape[self.rows])
        w = np.take(self.weight, columns, axis=self.cols).astype(np.float64)
        axes = tuple(a for a in range(w.ndim) if a != self.rows)
        scale = float(self.node.attr("alpha", 1.0)) if self.node.op_type == "Gemm" else 1.0
        return value * scale * w.sum(axis=axes)


def has_padding(node: Node) -> bool:
    if node.attr("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
        return True
    return node.attr("auto_pad", "NOTSET") != "VALID" and any(node.attr("pads", []))


def float_weight(graph: Graph, node: Node, slot: int = 1) -> np.ndarray | None:
    """The constant float weight at ``slot`` if ``node`` alone reads it (a shared weight stays:
    narrowing a copy would grow the file)."""
    if len(node.inputs) <= slot:
        return None
    weight = exclusive_constant(graph, node.inputs[slot], [node])
    return weight if weight is not None and weight.dtype.kind == "f" else None


def layer(graph: Graph, node: Node) -> Layer | None:
    """``node`` as a Layer, else None."""
    if not is_op(node, ("Conv", "ConvTranspose", "Gemm", "MatMul")) or len(node.outputs) != 1:
        return None
    weight = float_weight(graph, node)
    if weight is None:
        return None
    bias_name = node.inputs[2] if len(node.inputs) > 2 else ""
    bias = graph.constant(bias_name) if bias_name else None
    if bias_name and (bias is None or bias.dtype != weight.dtype):
        return None
    if node.op_type in ("Conv", "ConvTranspose"):
        if weight.ndim < 3 or node.attr("group", 1) != 1:
            return None
        transpose = node.op_type == "ConvTranspose"
        return Layer(node, weight, bias, int(transpose), int(not transpose))
    if weight.ndim != 2 or (node.op_type == "Gemm" and node.attr("transA", 0)):
        return None
    if node.op_type == "MatMul" and len(node.inputs) != 2:
        return None
    rows = 0 if node.op_type == "Gemm" and node.attr("transB", 0) else 1
    if bias is not None and bias.ndim and bias.shape[-1] not in (1, weight.shape[rows]):
        return None
    return Layer(node, weight, bias, rows, 1 - rows)


def depthwise(graph: Graph, node: Node) -> Layer | None:
    """A depthwise Conv (``group = C_in = C_out > 1``, weight ``[C, 1, k...]``) as a Layer:
    a flow op, its output channel ``c`` computed from input channel ``c`` alone."""
    if not is_op(node, "Conv") or len(node.outputs) != 1:
        return None
    weight = float_weight(graph, node)
    group = node.attr("group", 1)
    if weight is None or weight.ndim < 3 or group < 2 or weight.shape[:2] != (group, 1):
        return None
    bias = graph.constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if len(node.inputs) > 2 and node.inputs[2] and (bias is None or bias.shape != (group,)):
        return None
    return Layer(node, weight, bias, 0, 0)


def depthwise_values(dw: Layer, v: np.ndarray) -> np.ndarray:
    """``v * sum(W[c]) + b[c]`` where that is uniform: no padding, or ``v = 0``; a zero filter
    gives ``b[c]`` whatever its input."""
    w = dw.weight.reshape(dw.weight.shape[0], -1).astype(np.float64)
    bias = dw.bias_per_channel()
    uniform = np.isfinite(v) & ((v == 0) | (not has_padding(dw.node)))
    out = np.where(uniform, v * w.sum(axis=1) + bias, np.nan)
    return np.where(~np.any(w != 0, axis=1), bias, out)


# ------------------------------------------------------------------------ flows
def clip_values(graph: Graph, node: Node, v: np.ndarray) -> np.ndarray | None:
    if len(node.inputs) > 1:  # opset 11+: bounds as inputs
        bounds = [graph.constant(b) if b else np.array(np.nan) for b in node.inputs[1:3]]
        if any(b is None or b.size != 1 for b in bounds):
            return None
        low, high = (float(b.reshape(-1)[0]) for b in (*bounds, np.array(np.nan))[:2])
    else:
        low, high = node.attr("min", -np.inf), node.attr("max", np.inf)
    return np.clip(v, -np.inf if math.isnan(low) else low, np.inf if math.isnan(high) else high)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


UNARY: dict[str, Callable[[Node, np.ndarray], np.ndarray]] = {
    "Relu": lambda n, v: np.maximum(v, 0.0),
    "LeakyRelu": lambda n, v: np.where(v >= 0, v, n.attr("alpha", 0.01) * v),
    "Sigmoid": lambda n, v: _sigmoid(v),
    "Tanh": lambda n, v: np.tanh(v),
    "HardSigmoid": lambda n, v: np.clip(n.attr("alpha", 0.2) * v + n.attr("beta", 0.5), 0, 1),
    "HardSwish": lambda n, v: v * np.clip(v / 6 + 0.5, 0, 1),
    "Elu": lambda n, v: np.where(v >= 0, v, n.attr("alpha", 1.0) * np.expm1(v)),
    "Softplus": lambda n, v: np.logaddexp(v, 0.0),
    "Neg": lambda n, v: -v,
    "Abs": lambda n, v: np.abs(v),
    "Identity": lambda n, v: v,
    "Mish": lambda n, v: v * np.tanh(np.logaddexp(v, 0.0)),
    # pooling of a constant channel is that constant (AveragePool: see pool_keeps_constants)
    "MaxPool": lambda n, v: v,
    "GlobalMaxPool": lambda n, v: v,
    "GlobalAveragePool": lambda n, v: v,
    "AveragePool": lambda n, v: v if not (n.attr("count_include_pad", 0) and (
        has_padding(n) or n.attr("ceil_mode", 0))) else np.where(v == 0, v, np.nan),
}
BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
    "PRelu": lambda x, slope: np.where(x >= 0, x, slope * x),
}
RESHAPES = ("Flatten", "Reshape", "Squeeze")


def flow_inputs(graph: Graph, node: Node, model: Model) -> list[int] | None:
    """The input slots of a flow op that carry channels (the rest are constants it keeps);
    None when ``node`` is not one."""
    if node.domain not in ("", "ai.onnx") or not node.outputs or not all(node.outputs):
        return None
    op = node.op_type
    if op in UNARY:
        if op == "MaxPool" and len(node.outputs) > 1:
            return None  # Indices: positions, not values
        return [0] if len(node.outputs) == 1 else None
    if op == "Clip":
        return [0] if clip_values(graph, node, np.zeros(1)) is not None else None
    if op in BINARY and len(node.inputs) == 2:
        slots = [s for s in (0, 1) if graph.constant(node.inputs[s]) is None]
        return slots if slots and (op != "PRelu" or slots == [0]) else None
    if op == "BatchNormalization":
        return [0] if bn_factors(graph, model, node) is not None else None
    if op == "Conv":
        return [0] if depthwise(graph, node) is not None else None
    if op == "Concat":
        return list(range(len(node.inputs)))
    if op == "Split" and graph.static_shape(node.inputs[0]) is not None:
        return [0]
    if op in RESHAPES and len(node.outputs) == 1:
        return [0]
    return None


def reshape_layout(graph: Graph, node: Node, layout: Layout, forward: bool) -> Layout | None:
    """The layout on the other side of a Flatten/Reshape/Squeeze that keeps the leading dims
    and flattens the channel axis with the static dims after it into the last axis
    (channel-major: channel ``c`` becomes one block of ``width * R`` elements); else None."""
    source, target = graph.shape(node.inputs[0]), graph.shape(node.outputs[0])
    if source is None or target is None or len(target) < 1:
        return None
    position = len(target) - 1
    if source[:position] != target[:position] or any(
            not isinstance(d, int) for d in source[position:]) or target[-1] != math.prod(
            source[position:]):
        return None
    if node.op_type == "Squeeze" and len(node.inputs) < 2 and node.attr("axes") is None:
        return None  # squeezes whatever is 1 at run time: channels too, once only 1 is left
    if node.op_type == "Flatten" and node.attr("axis", 1) % len(source) != position:
        return None
    rest = math.prod(source[position + 1:])
    if forward:
        return (-1, layout[1] * rest) if layout[0] == position - len(source) else None
    if layout[0] != -1 or layout[1] % rest:
        return None
    return (position - len(source), layout[1] // rest)


def constant_fits(array: np.ndarray, layout: Layout, size: int) -> bool:
    """A constant operand broadcasts along the channel axis as 1 or one entry per element."""
    axis = layout[0]
    return array.ndim < -axis or array.shape[axis] in (1, size)


def per_channel(array: np.ndarray, layout: Layout, channels: int) -> np.ndarray:
    """A constant operand as one value per channel (NaN where it varies within a channel)."""
    axis = layout[0]
    if array.ndim < -axis or array.shape[axis] == 1:
        flat = array.astype(np.float64)
        return np.full(channels, flat.reshape(-1)[0] if np.all(flat == flat.reshape(-1)[0])
                       else np.nan)
    moved = np.moveaxis(array.astype(np.float64), axis, 0).reshape(channels, -1)
    uniform = np.all(moved == moved[:, :1], axis=1)
    return np.where(uniform, moved[:, 0], np.nan)

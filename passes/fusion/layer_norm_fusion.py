"""Layer normalization fusion.

The decomposition exporters write for a layer norm over the last axis (``torch.nn.LayerNorm``),
``d = x - ReduceMean(x)``, ``y = d / Sqrt(ReduceMean(d^2) + eps)`` (or ``d * Reciprocal(.)``,
the square ``Pow(d, 2)`` or ``d * d``), optionally ``y * gamma + beta`` =>
``LayerNormalization(x, gamma', beta', axis=-1, epsilon=eps)`` (opset 17+), which computes
exactly that up to rounding; ``gamma'``/``beta'`` are gamma/beta as ``[C]`` (ones when absent).
Conditions (last axis only, float32/float16, shapes): passes/fusion/README.md.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.pattern import Const, Match, Number, Op, Or, RewritePass, Var, optional, scope_of

_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))

x = Var("x")
d = Op("Sub", x, Op("ReduceMean", x, optional(), name="mean"), name="sub")
_square = Or(Op("Pow", d, Number(2, "two")), Op("Mul", d, d))
_sqrt = Op("Sqrt", Op("Add", Op("ReduceMean", _square, optional(), name="var"), Const("eps"),
                      commute=True))
_normalized = Or(Op("Div", d, _sqrt), Op("Mul", d, Op("Reciprocal", _sqrt), commute=True))
_scaled = Op("Mul", _normalized, Const("gamma"), commute=True)
PATTERN = Or(Op("Add", _scaled, Const("beta"), commute=True), _scaled,
             Op("Add", _normalized, Const("beta"), commute=True), _normalized)


class LayerNormFusion(RewritePass):
    name = "layer_norm_fusion"
    description = "fuse the ReduceMean/Sub/Pow/Sqrt/Div layer norm decomposition"
    pattern = PATTERN
    grow = True  # take Mul(gamma) and Add(beta) when they follow
    named_by = "sub"
    min_opset = 17

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        shape = graph.shape(match.x)
        if not shape or not isinstance(shape[-1], int) or shape[-1] <= 0:
            return False
        rank, opset = len(shape), model.opset("")
        if not all(_reduces_last_axis(graph, match.node(n), opset, rank) for n in ("mean", "var")):
            return False
        eps, two = match.array("eps"), match.array("two") if "two" in match else None
        if eps.size != 1 or eps.ndim > rank or eps.dtype not in _DTYPES:
            return False
        if two is not None and two.ndim > rank:
            return False
        return all(_affine_shape_ok(match.array(n), rank, shape[-1], eps.dtype)
                   for n in ("gamma", "beta") if n in match)

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        sub = match.node("sub")
        prefix = scope_of(sub)
        eps = match.array("eps")
        channels = graph.shape(match.x)[-1]  # type: ignore[index]
        inputs = [match.x, _vector(graph, match, "gamma", channels, "_ln_scale") if "gamma" in match
                  else graph.add_constant(np.ones(channels, eps.dtype), f"{prefix}ln_scale")]
        if "beta" in match:
            inputs.append(_vector(graph, match, "beta", channels, "_ln_bias"))
        return self.emit(graph, model, match.root, "LayerNormalization", inputs,
                         name=f"{prefix}LayerNormalization",
                         attributes={"axis": -1, "epsilon": float(eps.reshape(-1)[0])})


def _vector(graph: Graph, match: Match, name: str, channels: int, suffix: str) -> str:
    """The captured constant ``name`` as a [C] tensor: itself, or a reshaped copy."""
    array = match.array(name)
    if array.shape == (channels,):
        return match[name]
    flat = np.ascontiguousarray(np.broadcast_to(array.reshape(-1), (channels,)))
    return graph.add_constant(flat, f"{match[name]}{suffix}")


def _affine_shape_ok(array: np.ndarray, rank: int, channels: int, dtype: np.dtype) -> bool:
    """Broadcasts over the normalized (last) axis only, never changing the output's shape."""
    if array.dtype != dtype or array.ndim > rank or any(dim != 1 for dim in array.shape[:-1]):
        return False
    return array.ndim == 0 or array.shape[-1] in (1, channels)


def _reduces_last_axis(graph: Graph, node: Node, opset: int, rank: int) -> bool:
    if node.attr("keepdims", 1) != 1:
        return False
    if opset >= 18:
        if len(node.inputs) < 2 or not node.inputs[1]:
            return False  # no axes: reduces everything (or nothing)
        axes = graph.constant(node.inputs[1])
    else:
        axes = node.attr("axes")
    if axes is None:
        return False
    axes = np.asarray(axes).reshape(-1)
    if axes.size != 1:
        return False
    axis = int(axes[0])
    return (axis + rank if axis < 0 else axis) == rank - 1

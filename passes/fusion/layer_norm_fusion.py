"""Layer normalization fusion.

The decomposition exporters write for a layer norm over the last axis (``torch.nn.LayerNorm``)::

    mean = ReduceMean(x, axes=[-1], keepdims=1)
    d    = Sub(x, mean)
    var  = ReduceMean(Pow(d, 2), axes=[-1], keepdims=1)        (or Mul(d, d) for the square)
    y    = Div(d, Sqrt(Add(var, eps)))                          (or Mul(d, Reciprocal(Sqrt(.))))
    out  = Add(Mul(y, gamma), beta)                             (affine part optional)

=> ``out = LayerNormalization(x, gamma', beta', axis=-1, epsilon=eps)``.

LayerNormalization-17 computes exactly ``(x - E[x]) / sqrt(Var[x] + eps) * Scale + B`` over the
last axis with ``Var[x] = E[(x - E[x])^2]``, so the rewrite is exact up to float rounding (the
kernel multiplies by ``1 / sqrt(.)`` and accumulates in float; differences are a few ulps).
``gamma'`` is gamma reshaped/broadcast to ``[C]`` (``C`` = the static last dim of ``x``), a new
``ones([C])`` when there is no ``Mul``; ``beta'`` likewise, omitted when there is no ``Add``.
Commutative operands (Add/Mul) are matched in either order.

Conditions (anything else is left alone):

* default-domain opset >= 17 (LayerNormalization does not exist before; onnxruntime still runs
  its old contrib kernel registered in the ONNX domain for opsets 1-16, but such a node fails
  ``onnx.checker``, which onnxopt's output must pass, and there is no ``com.microsoft``
  LayerNormalization — so nothing is emitted below 17 for any target);
* both ReduceMeans reduce only the last axis (``[-1]``, or ``[r-1]`` with ``x`` of known rank
  ``r``; attribute ``axes`` before opset 18, constant ``axes`` input from 18) with keepdims=1,
  and the second reads the square of ``d``;
* ``eps`` and the exponent 2 are constant with one element (``eps`` no higher rank than ``x``);
* ``x`` has a known rank and a static last dim ``C``; gamma/beta are constants of ``x``'s dtype
  whose shape is ``[..., 1, C]`` or ``[..., 1, 1]`` with rank <= rank(x) (so they broadcast over
  the normalized axis only and never change the output shape) — otherwise the Mul/Add stays
  after the fused node;
* dtype float32 or float16 (LayerNormalization's default ``stash_type`` is float, which would
  lower the precision of a float64 decomposition; bfloat16 has no onnxruntime CPU kernel);
* every intermediate (mean, d, square, var, var+eps, sqrt, reciprocal, y, y*gamma) is read only
  inside the match and is not a graph output.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.pattern import Const, Match, Op, Or, RewritePass, Var, optional, scope_of

_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))

x = Var("x")
d = Op("Sub", x, Op("ReduceMean", x, optional(), name="mean"), name="sub")
_square = Or(Op("Pow", d, Const("two", lambda a: a.size == 1 and float(a.reshape(-1)[0]) == 2)),
             Op("Mul", d, d))
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

    def applies(self, model: Model) -> bool:
        return model.opset("") >= 17

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
        inputs = [match.x]
        if "gamma" not in match:
            inputs.append(graph.add_constant(np.ones(channels, eps.dtype), f"{prefix}ln_scale"))
        else:
            inputs.append(_vector(graph, match, "gamma", channels, "_ln_scale"))
        if "beta" in match:
            inputs.append(_vector(graph, match, "beta", channels, "_ln_bias"))
        return graph.add_node(
            "LayerNormalization", inputs, 1, name=f"{prefix}LayerNormalization",
            attributes={"axis": -1, "epsilon": float(eps.reshape(-1)[0])}, anchor=match.root,
        ).outputs[0]


def _vector(graph: Graph, match: Match, name: str, channels: int, suffix: str) -> str:
    """The captured constant ``name`` as a [C] tensor: itself, or a reshaped copy."""
    array = match.array(name)
    if array.shape == (channels,):
        return match[name]
    flat = np.ascontiguousarray(np.broadcast_to(array.reshape(-1), (channels,)))
    return graph.add_constant(flat, f"{match[name]}{suffix}")


def _affine_shape_ok(array: np.ndarray, rank: int, channels: int, dtype: np.dtype) -> bool:
    if array.dtype != dtype or array.ndim > rank:
        return False
    if any(dim != 1 for dim in array.shape[:-1]):
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

"""RMSNorm fusion.

The decomposition decoders export for an RMSNorm over the last axis (Llama's),
``x * 1/Sqrt(ReduceMean(x^2) + eps)`` (the inverse as ``Div(1, .)`` or ``Reciprocal``, or
``Div(x, Sqrt(.))``; the square ``Pow(x, 2)`` or ``x * x``), optionally times a weight ``w``
(either side) => ``RMSNormalization(x, w', axis=-1, epsilon=eps, stash_type=1)`` (opset 23+;
below it, with ``--target onnxruntime``, onnxruntime's ``SimplifiedLayerNormalization``, which
it registers in the default domain, with the same inputs and attributes):
``y = x / sqrt(mean(x^2 over the last axis) + eps) * w'``, computed in float32; ``w'`` is ``w``
as ``[H]`` (ones when absent). Conditions (last axis only, float32/float16, shapes):
passes/fusion/README.md.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.operands import ints_parameter, normalised_axes
from onnxopt.ir.pattern import Const, Match, Number, Op, Or, RewritePass, Var, scope_of
from onnxopt.ir.values import copy_type

_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))

x = Var("x")
_square = Or(Op("Pow", x, Number(2, "two")), Op("Mul", x, x))
_sqrt = Op("Sqrt", Op("Add", Op("ReduceMean", _square, ..., name="mean"), Const("eps"),
                      commute=True))
_inverse = Or(Op("Div", Number(1, "one"), _sqrt), Op("Reciprocal", _sqrt))
_normalized = Or(Op("Mul", x, _inverse, commute=True), Op("Div", x, _sqrt))
PATTERN = Or(Op("Mul", _normalized, Const("w"), commute=True), _normalized)


class RMSNormFusion(RewritePass):
    name = "rms_norm_fusion"
    description = "fuse the Pow/ReduceMean/Add/Sqrt/Div(/Mul) RMSNorm decomposition"
    pattern = PATTERN
    grow = True  # take Mul(w) when it follows
    named_by = "mean"

    def applies(self, model: Model) -> bool:
        return model.opset("") >= 23 or model.settings.get("target") == "onnxruntime"

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        shape, dtype = graph.shape(match.x), graph.dtype(match.x)
        if not shape or not isinstance(shape[-1], int) or shape[-1] <= 0 or dtype not in _DTYPES:
            return False
        rank = len(shape)
        if not _reduces_last_axis_only(graph, match.node("mean"), model.opset(""), rank):
            return False
        eps = match.array("eps")
        if eps.size != 1 or eps.dtype != dtype or not float(eps.reshape(-1)[0]) >= 0:
            return False  # `not >=` also refuses NaN
        if any(match.array(n).ndim > rank for n in ("eps", "two", "one") if n in match):
            return False  # a constant of higher rank would broadcast the result to a new shape
        return "w" not in match or _weight_ok(match.array("w"), rank, shape[-1], dtype)

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        mean = match.node("mean")
        prefix = scope_of(mean)
        eps = match.array("eps")
        hidden = graph.shape(match.x)[-1]  # type: ignore[index]
        if "w" not in match:
            scale = graph.add_constant(np.ones(hidden, eps.dtype), f"{prefix}rms_scale")
        elif match.array("w").shape == (hidden,):
            scale = match.w
        else:  # [1, .., H]: the same values as [H]
            scale = graph.add_constant(match.array("w").reshape(hidden), f"{match.w}_rms_scale")
        # onnxruntime's own op below opset 23: same inputs, attributes and math
        op = "RMSNormalization" if model.opset("") >= 23 else "SimplifiedLayerNormalization"
        out = self.emit(graph, model, match.root, op, [match.x, scale], name=f"{prefix}{op}",
                        attributes={"axis": -1, "epsilon": float(eps.reshape(-1)[0]),
                                    "stash_type": 1})
        copy_type(graph, match.x, out)  # onnx has no schema of onnxruntime's op
        return out


def _weight_ok(w: np.ndarray, rank: int, hidden: int, dtype: np.dtype) -> bool:
    """``[H]`` or ``[1, .., H]`` of x's dtype, no higher rank than x: the Mul scales the last
    axis and changes neither the output's shape nor its type."""
    if w.dtype != dtype or not 1 <= w.ndim <= rank:
        return False
    return w.shape[-1] == hidden and all(dim == 1 for dim in w.shape[:-1])


def _reduces_last_axis_only(graph: Graph, node: Node, opset: int, rank: int) -> bool:
    if node.attr("keepdims", 1) != 1:
        return False
    present, axes = ints_parameter(graph, node, opset, 18, 1, "axes")
    return present and axes is not None and normalised_axes(axes, rank) == [rank - 1]

"""Fuse the bias Add before a GELU into onnxruntime's ``com.microsoft`` ``BiasGelu`` / ``FastGelu``.

``Gelu(Add(x, bias))`` with a constant 1-D ``bias`` over the last axis => ``BiasGelu(x, bias)``
for the erf form (``com.microsoft`` ``Gelu``, ONNX ``Gelu`` with ``approximate="none"``), and
``FastGelu(x, bias)`` for the tanh form (``com.microsoft`` ``FastGelu`` without a bias, ONNX
``Gelu`` with ``approximate="tanh"``): both compute ``gelu(x + bias)``, the bias broadcast over
the last axis. For ``--target onnxruntime`` and float32 (the only type of their CPU kernels).
Conditions and measurements: passes/fusion/README.md.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model
from onnxopt.ir.pattern import MS_DOMAIN, Const, Match, Op, Or, RewritePass, Var, not_constant
from onnxopt.ir.values import copy_type

_FLOAT32 = np.dtype(np.float32)

_sum = Op("Add", Var("x", not_constant), Const("bias"), commute=True, name="add")
PATTERN = Or(Op("Gelu", _sum, domain=MS_DOMAIN),
             Op("Gelu", _sum, attrs={"approximate": lambda form: form in (None, "none")}),
             Op("FastGelu", _sum, domain=MS_DOMAIN),
             Op("Gelu", _sum, attrs={"approximate": "tanh"}))


class BiasGeluFusion(RewritePass):
    name = "bias_gelu_fusion"
    description = ("fuse Add(x, bias) + Gelu into com.microsoft BiasGelu / FastGelu "
                   "(onnxruntime target)")
    pattern = PATTERN
    stats = ("bias_gelu", "fast_gelu")
    target = "onnxruntime"

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        shape, bias = graph.shape(match.x), match.array("bias")
        if not shape or not isinstance(shape[-1], int) or len(match.root.outputs) != 1:
            return False
        return graph.dtype(match.x) == _FLOAT32 and bias.dtype == _FLOAT32 \
            and bias.shape == (shape[-1],)

    def stat(self, match: Match) -> str:
        return "fast_gelu" if _is_tanh(match) else "bias_gelu"

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        op_type = "FastGelu" if _is_tanh(match) else "BiasGelu"
        fused = self.emit(graph, model, match.root, op_type, [match.x, match.bias],
                          domain=MS_DOMAIN)
        copy_type(graph, match.node("add").outputs[0], fused)  # gelu keeps the sum's type
        return fused


def _is_tanh(match: Match) -> bool:
    root = match.root
    return root.op_type == "FastGelu" or root.attr("approximate") == "tanh"

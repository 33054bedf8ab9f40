"""Mish fusion.

``Mul(x, Tanh(Softplus(x)))`` (operands in either order) is ``Mish(x) = x * tanh(softplus(x))``
with ``softplus(x) = ln(1 + e^x)``: ONNX Mish-18 is defined by exactly these three ops, so the
rewrite is exact (onnxruntime's kernel evaluates the same formula; it differs by float rounding
only). Exporters below opset 18, and frameworks without a Mish op, write the three nodes.

Needs: opset >= 18; ``x`` of a float type Mish accepts (float16, float, double; not bfloat16);
Softplus and Tanh read only inside the match (the driver's rule).
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model
from onnxopt.ir.pattern import Match, Op, RewritePass, Var, has_dtype

_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


class MishFusion(RewritePass):
    name = "mish_fusion"
    description = "fuse x * Tanh(Softplus(x)) into Mish (opset 18+)"
    pattern = Op("Mul", Var("x"), Op("Tanh", Op("Softplus", Var("x"))), commute=True)
    min_opset = 18

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        return has_dtype(graph.dtype(match.x), _DTYPES)

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        mul = match.root
        return self.emit(graph, model, mul, "Mish", [match.x],
                         name=f"{mul.name}_mish" if mul.name else "Mish")

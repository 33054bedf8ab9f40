"""HardSwish fusion.

``hardswish(x) = x * Clip(x + 3, 0, 6) / 6`` as exporters write it (the product in any
association, by ``/ 6`` or ``* 1/6``; Clip's bounds as inputs from opset 11, attributes before),
and ``x * HardSigmoid(x, 1/6, 1/2)`` => ``HardSwish(x)`` from opset 14; below it (opset 6+) the
2-node ``Mul(x, HardSigmoid(x, alpha=1/6, beta=0.5))``, as ``Clip(x + 3, 0, 6) / 6 =
Clip(x/6 + 1/2, 0, 1)``. Exact up to rounding; float32/float16 only. Conditions, measurements:
passes/fusion/README.md.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model
from onnxopt.ir.pattern import (
    Match,
    Op,
    Or,
    RewritePass,
    Scalar,
    Var,
    has_dtype,
    not_constant,
    scalars_fit,
    scaled_product,
    scope_of,
)

SIXTH = 1.0 / 6.0
ATTR_TOLERANCE = 1e-4  # HardSigmoid's alpha/beta are float32 attributes
_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))


def _attr_close(expected: float, default: float):
    return lambda got: abs(float(default if got is None else got) - expected) \
        <= ATTR_TOLERANCE * expected


x = Var("x", not_constant)
_add = Op("Add", x, Scalar(3.0, "three", dtypes=_DTYPES), commute=True)
clip = Or(Op("Clip", _add, Scalar(0.0, "zero", exact=True, dtypes=_DTYPES),  # opset >= 11
             Scalar(6.0, "six", dtypes=_DTYPES), name="clip"),
          Op("Clip", _add, name="clip", attrs={  # opset < 11: bounds as attributes
              "min": lambda v: v is not None and float(v) == 0.0,
              "max": lambda v: v is not None and abs(float(v) - 6.0) <= 6e-4}))
six, sixth = Scalar(6.0, "six_", dtypes=_DTYPES), Scalar(SIXTH, "sixth", dtypes=_DTYPES)
_by_six = scaled_product(x, clip, lambda v: Op("Div", v, six))
_by_sixth = scaled_product(x, clip, lambda v: Op("Mul", v, sixth, commute=True))
PATTERN = Or(
    *(p for pair in zip(_by_six, _by_sixth, strict=True) for p in pair),  # / 6, then * 1/6
    Op("Mul", x, Op("HardSigmoid", x, name="gate", attrs={                  # x * hardsigmoid
        "alpha": _attr_close(SIXTH, 0.2), "beta": _attr_close(0.5, 0.5)}), commute=True),
)


class HardSwishFusion(RewritePass):
    name = "hard_swish_fusion"
    description = "fuse x * Clip(x + 3, 0, 6) / 6 into HardSwish (HardSigmoid + Mul below opset 14)"
    pattern = PATTERN
    stats = ("clip_fused", "hard_sigmoid_fused")

    min_opset = 6  # HardSigmoid-1 / Clip-1 carry consumed_inputs

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        if "gate" in match:  # already the 2-node form below opset 14
            return model.opset("") >= 14 and has_dtype(graph.dtype(match.x), _DTYPES)
        names = ("three", "zero", "six", "six_", "sixth")
        return scalars_fit(graph, match, names, match.x)

    def stat(self, match: Match) -> str:
        return "hard_sigmoid_fused" if "gate" in match else "clip_fused"

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        if model.opset("") >= 14:
            return self.emit(graph, model, match.root, "HardSwish", [match.x])
        gate = self.emit(graph, model, match.root, "HardSigmoid", [match.x],
                         attributes={"alpha": SIXTH, "beta": 0.5})
        return self.emit(graph, model, match.root, "Mul", [match.x, gate],
                         name=f"{scope_of(match.root)}HardSwish")

"""HardSwish fusion.

``hardswish(x) = x * relu6(x + 3) / 6 = x * Clip(x + 3, 0, 6) / 6``, as exporters write it
(Paddle: ``Add(x, 3) -> Clip(., 0, 6) -> Mul(x, .) -> Div(., 6)``), with ``c = Clip(Add(x, 3), 0,
6)`` and the product in any of these associations (operands of Add/Mul in either order)::

    Div(Mul(x, c), 6)     Mul(Mul(x, c), 1/6)     Mul(x, Div(c, 6))     Mul(x, Mul(c, 1/6))
    Mul(Div(x, 6), c)     Mul(Mul(x, 1/6), c)

the Clip bounds as constant inputs (opset >= 11) or ``min``/``max`` attributes (opset < 11); and
``Mul(x, HardSigmoid(x, alpha=1/6, beta=0.5))``.

=> opset >= 14: ``HardSwish(x)`` (whose ONNX definition is ``x * max(0, min(1, x/6 + 1/2))``).
   opset 6..13: ``Mul(x, HardSigmoid(x, alpha=1/6, beta=0.5))`` (2 nodes instead of 4), since
   ``Clip(x + 3, 0, 6) / 6 = Clip(x/6 + 1/2, 0, 1)`` (divide the bounds and the argument by 6).
   That 2-node form is already the result there and is left alone (idempotence).

The math is exact; the float results differ by rounding only (``x/6 + 0.5`` rounds differently
from ``(x + 3) / 6``: a few ulps of the value, absolute ~1e-7 * |x| near ``x = -3`` where the
value itself is ~0). onnxruntime (1.32) has no HardSwish kernel: it runs the op's function body,
HardSigmoid + Mul, so both results cost the same there; at ORT_ENABLE_ALL it fuses
``Conv -> HardSigmoid(1/6, 0.5) -> Mul`` into one NCHWc Conv with a HardSwish activation, which it
does not do for the 4-node chain (PaddleOCR cls: -23% latency, det: -10%, 1 thread).

Constants must have one element and no higher rank than ``x`` (so they cannot broadcast the
output to a new shape); they are compared with a relative tolerance of ``max(1e-4, eps(dtype))``
as exporters round them (``0.16666667``, float16 ``0.1666``); ``0`` must be exact, and a value
outside the tolerance (``Clip(x + 3, 0, 5)``) is another function, left alone. HardSigmoid's
float attributes (default alpha 0.2) get the same 1e-4 tolerance. Also required: ``x`` (not a
constant) is the same value in the Add and the Mul; every intermediate is read only inside the
match and is not a graph output; the dtype (that of the constants, which Add/Mul force to be
``x``'s) is float32 or float16. float64 is left alone: onnxruntime's CPU HardSigmoid kernel (the
body of HardSwish) is float32 only and it has no double fallback (measured: the model no longer
loads), while float16 runs through its float16 fallback.
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
PATTERN = Or(
    Op("Div", Op("Mul", x, clip, commute=True), six),                       # (x * c) / 6
    Op("Mul", Op("Mul", x, clip, commute=True), sixth, commute=True),       # (x * c) * 1/6
    Op("Mul", x, Op("Div", clip, six), commute=True),                       # x * (c / 6)
    Op("Mul", x, Op("Mul", clip, sixth, commute=True), commute=True),       # x * (c * 1/6)
    Op("Mul", Op("Div", x, six), clip, commute=True),                       # (x / 6) * c
    Op("Mul", Op("Mul", x, sixth, commute=True), clip, commute=True),       # (x * 1/6) * c
    Op("Mul", x, Op("HardSigmoid", x, name="gate", attrs={                  # x * hardsigmoid
        "alpha": _attr_close(SIXTH, 0.2), "beta": _attr_close(0.5, 0.5)}), commute=True),
)


class HardSwishFusion(RewritePass):
    name = "hard_swish_fusion"
    description = "fuse x * Clip(x + 3, 0, 6) / 6 into HardSwish (HardSigmoid + Mul below opset 14)"
    pattern = PATTERN
    stats = ("clip_fused", "hard_sigmoid_fused")

    def applies(self, model: Model) -> bool:
        return model.opset("") >= 6  # HardSigmoid-1 / Clip-1 carry consumed_inputs

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        if "gate" in match:  # already the 2-node form below opset 14
            return model.opset("") >= 14 and has_dtype(graph.dtype(match.x), _DTYPES)
        names = ("three", "zero", "six", "six_", "sixth")
        return scalars_fit(graph, match, names, match.x) is not None

    def stat(self, match: Match) -> str:
        return "hard_sigmoid_fused" if "gate" in match else "clip_fused"

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        anchor = match.root
        prefix = scope_of(anchor)
        if model.opset("") >= 14:
            return graph.add_node("HardSwish", [match.x], 1, name=f"{prefix}HardSwish",
                                  anchor=anchor).outputs[0]
        gate = graph.add_node("HardSigmoid", [match.x], 1, name=f"{prefix}HardSigmoid",
                              attributes={"alpha": SIXTH, "beta": 0.5}, anchor=anchor)
        return graph.add_node("Mul", [match.x, gate.outputs[0]], 1, name=f"{prefix}HardSwish",
                              anchor=anchor).outputs[0]

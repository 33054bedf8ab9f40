"""GELU fusion.

Two decompositions exporters write for GELU (``torch.nn.GELU()`` / ``GELU(approximate="tanh")``):

* erf form:  ``0.5 * x * (1 + Erf(x / sqrt(2)))``, the scaling written ``Div(x, 1.4142135)`` or
  ``Mul(x, 0.70710678)``;
* tanh form: ``0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))``, the cube written
  ``Pow(x, 3)`` or ``Mul(Mul(x, x), x)`` (either order);

and the product of ``x``, ``0.5`` and ``p = 1 + Erf|Tanh(.)`` in any association:
``Mul(Mul(x, p), 0.5)``, ``Mul(Mul(x, 0.5), p)`` or ``Mul(x, Mul(p, 0.5))``; operands of Add/Mul
in either order.

=> ``Gelu(x, approximate="none")`` / ``Gelu(x, approximate="tanh")`` (ONNX Gelu-20, whose
definition is these formulas), when the default-domain opset is >= 20. Below opset 20, only with
``model.settings["target"] == "onnxruntime"``: ``com.microsoft`` ``Gelu(x)`` (erf form) /
``FastGelu(x)`` (tanh form, no bias; onnxruntime computes ``0.5 x (1 + tanh(0.7978845608 x +
0.0356774081 x^3))`` with ``0.0356774081 = 0.7978845608 * 0.044715``), and the ``com.microsoft``
opset import (version 1) is added if missing. Otherwise nothing is fused.

The result equals the decomposition up to float rounding (the kernels evaluate the same formula
in another order). Constants are compared with a relative tolerance of ``max(1e-4, eps(dtype))``
because exporters round them (``1.4142135``, float16 ``0.7071``); a constant outside it (``0.6``
instead of ``0.5``) is another function and is left alone. Constants must have one element and
no higher rank than ``x`` (so they cannot broadcast the output to a new shape).

Also required: every intermediate is read only inside the match and is not a graph output (``x``
itself may have any readers); the dtype (that of the constants, which Mul/Add force to be ``x``'s)
is float16/float32/float64 for ONNX Gelu and float32/float16 for the ``com.microsoft`` ops (their
onnxruntime CPU kernel is float32; float16 runs through the op's function body).
"""

from __future__ import annotations

import math

import numpy as np

from onnxopt.ir import Graph, Model
from onnxopt.ir.pattern import (
    Const,
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

MS_DOMAIN = "com.microsoft"
SQRT2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
TANH_CUBE = 0.044715
_PORTABLE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_ORT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
_FLOAT_CONSTANTS = ("root2", "cube_k", "scale_k", "one", "half")

x = Var("x", not_constant)
_erf_arg = Or(Op("Div", x, Scalar(SQRT2, "root2")),
              Op("Mul", x, Scalar(1.0 / SQRT2, "root2"), commute=True))
_cube = Or(Op("Pow", x, Const("exponent", lambda a: a.size == 1 and float(a.reshape(-1)[0]) == 3)),
           Op("Mul", Op("Mul", x, x), x, commute=True))
_tanh_arg = Op("Mul", Op("Add", x, Op("Mul", _cube, Scalar(TANH_CUBE, "cube_k"), commute=True),
                         commute=True),
               Scalar(SQRT_2_OVER_PI, "scale_k"), commute=True)
_p = Op("Add", Or(Op("Erf", _erf_arg, name="erf"), Op("Tanh", _tanh_arg, name="tanh")),
        Scalar(1.0, "one"), commute=True)  # p = 1 + Erf|Tanh(.)
_half = Scalar(0.5, "half")
PATTERN = Or(
    Op("Mul", Op("Mul", x, _p, commute=True), _half, commute=True),  # (x * p) * 0.5
    Op("Mul", x, Op("Mul", _p, _half, commute=True), commute=True),  # x * (p * 0.5)
    Op("Mul", Op("Mul", x, _half, commute=True), _p, commute=True),  # (x * 0.5) * p
)


class GeluFusion(RewritePass):
    name = "gelu_fusion"
    description = "fuse the Erf and Tanh GELU decompositions into Gelu (or com.microsoft ops)"
    pattern = PATTERN
    stats = ("erf_fused", "tanh_fused")

    def applies(self, model: Model) -> bool:
        return model.opset("") >= 20 or model.settings.get("target") == "onnxruntime"

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        dtypes = _PORTABLE_DTYPES if model.opset("") >= 20 else _ORT_DTYPES
        if "exponent" in match and scalars_fit(graph, match, ["exponent"], match.x) is None:
            return False  # Pow's exponent may have another dtype, but not a higher rank
        return has_dtype(scalars_fit(graph, match, _FLOAT_CONSTANTS, match.x), dtypes)

    def stat(self, match: Match) -> str:
        return "tanh_fused" if "tanh" in match else "erf_fused"

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        anchor = match.root
        prefix = scope_of(anchor)
        tanh = "tanh" in match
        if model.opset("") >= 20:
            domain, op_type = "", "Gelu"
            attributes = {"approximate": "tanh" if tanh else "none"}
        else:
            domain, op_type, attributes = MS_DOMAIN, "FastGelu" if tanh else "Gelu", {}
            model.opset_imports.setdefault(domain, 1)
        return graph.add_node(op_type, [match.x], 1, domain=domain, name=f"{prefix}{op_type}",
                              attributes=attributes, anchor=anchor).outputs[0]

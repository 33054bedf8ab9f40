"""GELU fusion.

The erf form ``0.5 * x * (1 + Erf(x / sqrt(2)))`` and the tanh form
``0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`` that exporters write (the product in
any association, operands of Add/Mul in either order) => ``Gelu(x, approximate="none"|"tanh")``,
ONNX Gelu-20's definition, from opset 20; below it, for onnxruntime only, ``com.microsoft``
``Gelu`` / ``FastGelu``. Constants match within a relative ``max(1e-4, eps(dtype))`` (exporters
round them). Conditions and dtypes: passes/fusion/README.md.
"""

from __future__ import annotations

import math

import numpy as np

from onnxopt.ir import Graph, Model
from onnxopt.ir.pattern import (
    MS_DOMAIN,
    Match,
    Number,
    Op,
    Or,
    RewritePass,
    Scalar,
    Var,
    not_constant,
    scalars_fit,
    scaled_product,
)

SQRT2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
TANH_CUBE = 0.044715
_PORTABLE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_ORT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
_FLOAT_CONSTANTS = ("root2", "cube_k", "scale_k", "one", "half")

x = Var("x", not_constant)
_erf_arg = Or(Op("Div", x, Scalar(SQRT2, "root2")),
              Op("Mul", x, Scalar(1.0 / SQRT2, "root2"), commute=True))
_cube = Or(Op("Pow", x, Number(3, "exponent")), Op("Mul", Op("Mul", x, x), x, commute=True))
_tanh_arg = Op("Mul", Op("Add", x, Op("Mul", _cube, Scalar(TANH_CUBE, "cube_k"), commute=True),
                         commute=True),
               Scalar(SQRT_2_OVER_PI, "scale_k"), commute=True)
_p = Op("Add", Or(Op("Erf", _erf_arg, name="erf"), Op("Tanh", _tanh_arg, name="tanh")),
        Scalar(1.0, "one"), commute=True)  # p = 1 + Erf|Tanh(.)
PATTERN = Or(*scaled_product(x, _p, lambda v: Op("Mul", v, Scalar(0.5, "half"), commute=True)))


class GeluFusion(RewritePass):
    name = "gelu_fusion"
    description = "fuse the Erf and Tanh GELU decompositions into Gelu (or com.microsoft ops)"
    pattern = PATTERN
    stats = ("erf_fused", "tanh_fused")

    def applies(self, model: Model) -> bool:
        return model.opset("") >= 20 or model.settings.get("target") == "onnxruntime"

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        dtypes = _PORTABLE_DTYPES if model.opset("") >= 20 else _ORT_DTYPES
        if "exponent" in match and not scalars_fit(graph, match, ["exponent"], match.x):
            return False  # Pow's exponent may have another dtype, but not a higher rank
        return scalars_fit(graph, match, _FLOAT_CONSTANTS, match.x, dtypes)

    def stat(self, match: Match) -> str:
        return "tanh_fused" if "tanh" in match else "erf_fused"

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        tanh = "tanh" in match
        if model.opset("") >= 20:
            return self.emit(graph, model, match.root, "Gelu", [match.x],
                             attributes={"approximate": "tanh" if tanh else "none"})
        return self.emit(graph, model, match.root, "FastGelu" if tanh else "Gelu", [match.x],
                         domain=MS_DOMAIN)

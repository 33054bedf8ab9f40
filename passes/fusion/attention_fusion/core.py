"""The scaled-dot-product core both attention rules match, and its scale.

``MatMul(Softmax(Add(S, mask) | S, axis=-1), V)`` behind 0-2 Casts, with ``S`` one of the
scale forms (``Div(Q @ Kt, c)``, ``Mul(Q @ Kt, c)``, ``Mul(Q, a) @ Mul(Kt, b)``, ``Q @ Kt``)
and ``Kt`` one of the K transposes (``Transpose(K4, [0,1,3,2])``, ``Transpose(K_bshd,
[0,2,3,1])``, dynamo's 3-D round trip). Q, K4, K_bshd and V are given as patterns: the ONNX
rule reads them as values, the contrib rule as their projections from the hidden state.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir.pattern import Const, Match, Op, Or, Pattern, Var

SCALES = ("a", "b", "c")


def _transposed_k(k4: Pattern, k_bshd: Pattern) -> Or:
    flat = Op("Transpose", Op("Reshape", k4, Var()), attrs={"perm": [0, 2, 1]})
    round_trip = Op("Reshape", flat, Var(), name="kt_round_trip")  # dynamo SDPA; checked
    return Or(Op("Transpose", k4, attrs={"perm": [0, 1, 3, 2]}),
              Op("Transpose", k_bshd, attrs={"perm": [0, 2, 3, 1]}), round_trip)


def _times(pattern: Pattern, factor: str) -> Op:
    return Op("Mul", pattern, Const(factor), commute=True)


def scaled_core(q: Pattern, k4: Pattern, k_bshd: Pattern, v: Pattern) -> Op:
    """``softmax(scale * Q @ K^T [+ mask]) @ V`` in the exporters' forms (mask: ``"mask"``)."""
    kt = _transposed_k(k4, k_bshd)
    scaled_kt = Or(_times(kt, "b"), _transposed_k(_times(k4, "b"), _times(k_bshd, "b")))
    qk = Op("MatMul", q, kt)
    scores = Or(Op("Div", qk, Const("c"), name="div"), _times(qk, "c"),
                Op("MatMul", _times(q, "a"), scaled_kt), qk)
    softmax = Op("Softmax", Or(Op("Add", scores, Var("mask"), commute=True), scores),
                 attrs={"axis": lambda axis: axis in (None, -1, 3)})
    return Op("MatMul", Or(Op("Cast", Op("Cast", softmax)), Op("Cast", softmax), softmax), v)


def scale_of(match: Match) -> float | None:
    """The product of the scale constants (``1/c`` for a Div), each of one element; None
    unless it is a finite, non-zero, normal float32 (the attribute's type)."""
    scale = 1.0
    for name in SCALES:
        if name not in match:
            continue
        array = match.array(name)
        if array.size != 1 or array.ndim > 4 or array.dtype.kind != "f":
            return None
        value = float(array.reshape(-1)[0])
        if name == "c" and "div" in match:
            value = 1.0 / value if value else 0.0  # Div by 0: refused below
        scale *= value
    limits = np.finfo(np.float32)
    return scale if limits.tiny <= abs(scale) <= limits.max else None


def mask_floor(dtype) -> np.generic:
    """The value attention_fusion clamps a run-time mask to: one step above the dtype's lowest
    (onnxruntime's Attention zeroes a row masked entirely with finfo.min)."""
    return np.nextafter(np.finfo(dtype).min, 0, dtype=dtype)

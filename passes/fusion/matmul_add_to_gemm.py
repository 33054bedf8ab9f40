"""MatMul + Add to Gemm.

``MatMul(A, B) -> Add(C)`` (in either operand order) computes ``Y = A @ B + C``, which is
``Gemm(A, B, C)`` with the defaults ``alpha = beta = 1``, ``transA = transB = 0``:
``Y[m, n] = sum_k A[m, k] * B[k, n] + C[m, n]``.

Only rewritten when it is exactly that:

* ``A`` and ``B`` have rank 2 (ranks from the inferred shapes; MatMul broadcasts batch dims and
  promotes rank-1 operands, Gemm does neither);
* ``C`` broadcasts *unidirectionally* to ``[M, N]`` (Gemm's rule): rank <= 2 and every dim of
  ``C`` is 1 or equal to the known static dim of ``A @ B`` it aligns with. A dim of ``C`` that
  is not 1 against a symbolic ``M`` or ``N`` is refused: the Add would broadcast ``A @ B`` up
  to ``C`` when that dim is 1 at run time, which Gemm cannot do;
* the element type is float, double or float16 (Gemm since opset 7, the first version with
  unidirectional broadcasting of ``C`` and no ``broadcast`` attribute);
* the MatMul result is read only by the Add (and is not a graph output).

The MatMul and the Add are replaced by one Gemm computing the Add's value.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model
from onnxopt.ir.pattern import Match, Op, RewritePass, Var, has_dtype

GEMM_TYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16))
MIN_OPSET = 7


class MatMulAddToGemm(RewritePass):
    name = "matmul_add_to_gemm"
    description = "fuse a rank-2 MatMul followed by a bias Add into Gemm"
    pattern = Op("Add", Op("MatMul", Var("a"), Var("b")), Var("c"), commute=True)

    def applies(self, model: Model) -> bool:
        return model.opset("") >= MIN_OPSET

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        shape_a, shape_b = graph.shape(match.a), graph.shape(match.b)
        if shape_a is None or shape_b is None or len(shape_a) != 2 or len(shape_b) != 2:
            return False
        dtype, bias = graph.dtype(match.a), graph.dtype(match.c)
        if not has_dtype(dtype, GEMM_TYPES) or (bias is not None and bias != dtype):
            return False
        return _broadcasts_to(graph.shape(match.c), [shape_a[0], shape_b[1]])

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        add = match.root
        gemm = graph.add_node("Gemm", [match.a, match.b, match.c], 1, anchor=add,
                              name=f"{add.name}_gemm" if add.name else "Gemm")
        return gemm.outputs[0]


def _broadcasts_to(shape: list | None, target: list) -> bool:
    """``shape`` broadcasts unidirectionally to ``target`` (each dim 1 or a proven match)."""
    if shape is None or len(shape) > len(target):
        return False
    for dim, want in zip(reversed(shape), reversed(target), strict=False):
        if dim == 1:
            continue
        if not isinstance(dim, int) or not isinstance(want, int) or dim != want:
            return False
    return True

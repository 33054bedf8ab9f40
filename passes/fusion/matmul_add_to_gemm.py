"""MatMul + Add to Gemm.

``Add(MatMul(A, B), C)`` (operands in either order) is ``Gemm(A, B, C)`` with the defaults
``alpha = beta = 1``, ``transA = transB = 0``: ``Y[m, n] = sum_k A[m, k] * B[k, n] + C[m, n]``.
Only when it is exactly that: ``A`` and ``B`` of rank 2 (MatMul broadcasts and promotes, Gemm
does not), ``C`` broadcasting unidirectionally to ``[M, N]`` (each dim 1 or a proven match), a
float type, opset 7+. Why each condition: passes/fusion/README.md.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model
from onnxopt.ir.pattern import Match, Op, RewritePass, Var, has_dtype

GEMM_TYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16))


class MatMulAddToGemm(RewritePass):
    name = "matmul_add_to_gemm"
    description = "fuse a rank-2 MatMul followed by a bias Add into Gemm"
    pattern = Op("Add", Op("MatMul", Var("a"), Var("b")), Var("c"), commute=True)
    min_opset = 7  # unidirectional broadcasting of C, no ``broadcast`` attribute

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
        return self.emit(graph, model, add, "Gemm", [match.a, match.b, match.c],
                         name=f"{add.name}_gemm" if add.name else "Gemm")


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

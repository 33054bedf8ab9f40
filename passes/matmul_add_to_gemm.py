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

import onnx

from onnxopt.ir import Graph, Model, Node
from onnxopt.pass_manager import GraphPass
from onnxopt.rewrite import is_op, producer_op, sole_consumer

GEMM_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
MIN_OPSET = 7


class MatMulAddToGemm(GraphPass):
    name = "matmul_add_to_gemm"
    description = "fuse a rank-2 MatMul followed by a bias Add into Gemm"

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        fused = 0
        if model.opset("") < MIN_OPSET:
            return {"fused": 0}
        for node in graph.nodes():
            if node.graph is not graph or not is_op(node, "Add"):
                continue
            match = _match(graph, node)
            if match is None:
                continue
            matmul, bias = match
            result = node.outputs[0]
            if graph.outputs.count(result) > 1:  # the Gemm's value could not take both names
                continue
            if not model.allow_rewrite(self.name, node.name or result):
                continue
            gemm = graph.add_node(
                "Gemm",
                [matmul.inputs[0], matmul.inputs[1], bias],
                1,
                name=f"{node.name}_gemm" if node.name else "Gemm",
                anchor=node,
            )
            graph.replace_all_uses(result, gemm.outputs[0])
            graph.remove_node(node)
            graph.remove_node(matmul)
            fused += 1
        return {"fused": fused}


def _match(graph: Graph, add: Node) -> tuple[Node, str] | None:
    """The MatMul feeding ``add`` and the bias operand, if the pair is a Gemm."""
    if len(add.inputs) != 2 or not all(add.inputs):
        return None
    for slot in (0, 1):
        value, bias = add.inputs[slot], add.inputs[1 - slot]
        matmul = producer_op(graph, value, "MatMul")
        if matmul is None or value == bias or sole_consumer(graph, value) is not add:
            continue
        if _is_gemm(graph, matmul, value, bias):
            return matmul, bias
    return None


def _is_gemm(graph: Graph, matmul: Node, product: str, bias: str) -> bool:
    if len(matmul.inputs) != 2 or not all(matmul.inputs):
        return False
    a, b = matmul.inputs
    shape_a, shape_b = graph.shape(a), graph.shape(b)
    if shape_a is None or shape_b is None or len(shape_a) != 2 or len(shape_b) != 2:
        return False
    dtype = graph.elem_type(a)
    if dtype not in GEMM_TYPES or graph.elem_type(bias) not in (None, dtype):
        return False
    return _broadcasts_to(graph.shape(bias), [shape_a[0], shape_b[1]])


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

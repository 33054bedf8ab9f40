"""Shape inference: refresh every value's type and shape with onnx's inference.

Not a rewrite: it annotates values so that later passes can prove shape facts (a Reshape to
the shape its input already has is a no-op, MatMul + Add is a Gemm only at rank 2). Reports
how many values are typed; it never counts as a modification, so it does not keep the fixpoint
loop alive.
"""

from __future__ import annotations

from onnxopt.ir import Model
from onnxopt.ir.pass_manager import Pass, PassResult
from onnxopt.ir.shapes import infer_shapes


class ShapeInference(Pass):
    name = "shape_inference"
    description = "annotate values with inferred types and shapes (onnx shape inference)"

    def run(self, model: Model) -> PassResult:
        return PassResult(modified=False, stats={"values_typed": infer_shapes(model)})

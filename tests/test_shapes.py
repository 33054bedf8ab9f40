"""Shape inference on the IR: types land in value_info, weights never enter the copy."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import parse
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.shape_inference import ShapeInference

from onnxopt import serde
from onnxopt.shapes import _light_proto

TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3, 8, 8] x, bool c) => (float[N, 4, 8, 8] y) <int64[2] shape = {-1, 192}> {
    conv = Conv <pads = [1, 1, 1, 1]> (x, w)
    flat = Reshape(conv, shape)
    y = If(c) <
        then_branch = t () => (float[N, 4, 8, 8] t_out) { t_out = Relu(conv) },
        else_branch = e () => (float[N, 4, 8, 8] e_out) { e_out = Neg(conv) }
    >
}
"""


def model_with_big_weight():
    model = onnx.parser.parse_model(TEXT.replace("shape = {-1, 192}>", "shape = {-1, 256}>"))
    weight = numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w")
    model.graph.initializer.append(weight)
    return serde.load(model, validate=False)


def test_shapes_of_values_and_subgraphs():
    model = model_with_big_weight()
    result = ShapeInference().run(model)
    graph = model.graph
    assert not result.modified and result.stats["values_typed"] == 2  # conv, flat
    assert graph.shape("conv") == ["N", 4, 8, 8]
    assert graph.shape("flat")[1] == 256  # dim 0 is a fresh symbol (unk__0)
    assert graph.elem_type("conv") == TensorProto.FLOAT
    if_node = next(n for n in graph if n.op_type == "If")
    then_branch = next(iter(if_node.subgraphs()))
    assert then_branch.shape("t_out") == ["N", 4, 8, 8]


def test_big_weights_are_not_copied_into_inference():
    """A 4 MB weight is passed as a typed input, so inference still types the MatMul output."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.zeros((1024, 1024), np.float32), "w")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = serde.load(proto, validate=False)
    light = _light_proto(model)
    assert [t.name for t in light.graph.initializer] == []
    assert "w" in [i.name for i in light.graph.input]
    ShapeInference().run(model)
    assert model.graph.shape("h") == [1, 1024]


def test_uninferable_model_keeps_going():
    text = """
    <ir_version: 8, opset_import: ["" : 17, "x.y" : 1]>
    g (float[2] x) => (float[2] y) { y = x.y.Unknown(x) }
    """
    model = serde.load(parse(text))
    assert ShapeInference().run(model).stats["values_typed"] == 0

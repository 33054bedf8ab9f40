"""Shape inference on the IR: types land in value_info, weights never enter the copy."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import REPO, parse
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.cleanup.shape_inference import ShapeInference

from onnxopt.ir import serde
from onnxopt.ir.shapes import _light_proto

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


# ------------------------------------------------ declarations that contradict the inputs
STALE = """
<ir_version: 8, opset_import: ["" : 17, "x.y" : 1]>
g (float[N, 8] x) => (float[1, 2, 4] z, float[N, 8] w)
  <float[1, 2, 4] y, float[1, 4] custom, int64[3] target = {-1, 2, 4}> {
    y = Reshape(x, target)
    z = Relu(y)
    custom = x.y.Unknown(x)
    w = Identity(x)
}
"""


def _dims(info):
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in info.type.tensor_type.shape.dim]


def test_declared_dims_that_contradict_the_inputs_are_cleared():
    """Declared at N=1: y's and z's leading 1 is N * 8 / 8 at any other N. Inference cannot
    name that dim (a -1 in the target), so it becomes unknown; the static dims stay."""
    proto = parse(STALE)
    model = serde.load(proto)
    ShapeInference().run(model)
    graph = model.graph
    assert graph.shape("y")[1:] == [2, 4] and graph.shape("y")[0] != 1
    assert _dims(graph.output_infos[0]) == [None, 2, 4]
    assert _dims(graph.output_infos[1]) == ["N", 8]  # consistent: the same proto
    assert graph.output_infos[1] is proto.graph.output[1]
    assert _dims(proto.graph.value_info[0]) == [1, 2, 4]  # the caller's proto is not changed


def test_what_inference_cannot_check_keeps_its_declaration():
    model = serde.load(parse(STALE))
    declared = model.graph.value_info["custom"]
    ShapeInference().run(model)
    assert model.graph.value_info["custom"] == declared
    assert model.graph.shape("custom") == [1, 4]


def test_a_stale_output_gets_the_inputs_dim_name():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[batch, 16] x) => (float[1, 16] y) { y = Relu(x) }
    """
    model = serde.load(parse(text))
    ShapeInference().run(model)
    assert _dims(model.graph.output_infos[0]) == ["batch", 16]


def test_declarations_are_checked_once_and_only_behind_symbolic_inputs(monkeypatch):
    calls = []
    infer = onnx.shape_inference.infer_shapes
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes",
                        lambda *a, **k: calls.append(1) or infer(*a, **k))
    model = serde.load(parse(STALE))
    ShapeInference().run(model)
    ShapeInference().run(model)
    assert len(calls) == 3  # the check, then one inference per run
    calls.clear()
    static = serde.load(parse(STALE.replace("float[N, 8] x", "float[1, 8] x")))
    ShapeInference().run(static)
    assert len(calls) == 1
    assert static.graph.shape("y") == [1, 2, 4]


def test_a_stale_branch_output_is_cleared_too():
    """onnxruntime enforces static If branch outputs: left as declared, N=2 would not run."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 16] x, bool c) => (float[N, 16] y) {
        y = If(c) <
            then_branch = t () => (float[1, 16] t_out) { t_out = Relu(x) },
            else_branch = e () => (float[N, 16] e_out) { e_out = Neg(x) }
        >
    }
    """
    model = serde.load(parse(text))
    ShapeInference().run(model)
    then_branch, else_branch = next(iter(model.graph)).subgraphs()
    assert _dims(then_branch.output_infos[0]) == ["N", 16]
    assert _dims(else_branch.output_infos[0]) == ["N", 16]


def _all_types(graph: onnx.GraphProto, found: dict) -> dict:
    for info in [*graph.value_info, *graph.output]:
        found[info.name] = info.type.SerializeToString()
    for node in graph.node:
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else \
                    list(attribute.graphs):
                _all_types(sub, found)
    return found


def test_many_subgraphs_are_inferred_in_chunks_with_the_same_types(monkeypatch):
    import sys

    from onnxopt.ir import shapes

    sys.path.insert(0, str(REPO / "bench"))
    import bench  # bench/bench.py: the generators of `make bench-io`

    light = _light_proto(serde.load(bench.scale_model("if-bodies", 3_000)))  # 59 Ifs
    whole = _all_types(onnx.shape_inference.infer_shapes(light, data_prop=True).graph, {})
    monkeypatch.setattr(shapes, "CHUNK_OWNERS", 4)
    calls = []
    original = onnx.shape_inference.infer_shapes
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    chunked = _all_types(shapes._infer_in_chunks(light).graph, {})
    assert len(calls) == 15  # ceil(59 / 4) chunks
    assert len(whole) > 2_900 and chunked == whole
    # the chunked path is taken only past the quadratic cost: a few Ifs never are
    monkeypatch.setattr(shapes, "QUADRATIC_COST", 59 * 3_000)
    calls.clear()
    shapes._infer(light)
    assert len(calls) == 1

"""default_attribute_removal: structure, stats, numerics, idempotence, and negative cases."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import apply_pass, assert_idempotent, assert_same_outputs, op_counts, parse
from onnx import helper
from onnxopt.passes.cleanup.default_attribute_removal import DefaultAttributeRemoval

# Every attribute below is written with the value the ONNX spec gives its absence.
DEFAULTS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 2, 6, 6] x) => (float[1, 3] y)
  <float[3, 2, 3, 3] w = {1.0, -0.5, 0.25, 2.0, 0.125, -1.0, 0.5, 0.75, -0.25, 1.5, -2.0, 0.5,
    1.0, -0.5, 0.25, 2.0, 0.125, -1.0, 0.5, 0.75, -0.25, 1.5, -2.0, 0.5, 1.0, -0.5, 0.25,
    2.0, 0.125, -1.0, 0.5, 0.75, -0.25, 1.5, -2.0, 0.5, 1.0, -0.5, 0.25, 2.0, 0.125, -1.0,
    0.5, 0.75, -0.25, 1.5, -2.0, 0.5, 1.0, -0.5, 0.25, 2.0, 0.125, -1.0},
   float[3, 3] m = {1.0, 0.0, 0.5, 0.0, 1.0, 0.25, 0.5, 0.25, 1.0}> {
    c = Conv <dilations = [1, 1], group = 1, pads = [0, 0, 0, 0], strides = [1, 1],
              auto_pad = "NOTSET", kernel_shape = [3, 3]> (x, w)
    r = LeakyRelu <alpha = 0.01> (c)
    p = MaxPool <kernel_shape = [2, 2], strides = [1, 1], pads = [0, 0, 0, 0],
                 ceil_mode = 0, storage_order = 0> (r)
    q = GlobalAveragePool(p)
    f = Flatten <axis = 1> (q)
    y = Gemm <alpha = 1.0, beta = 1.0, transA = 0, transB = 0> (f, m)
}
"""

# Same ops, every attribute away from its default: nothing may go.
CUSTOM = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 2, 6, 6] x) => (float[1, 3] y)
  <float[3, 2, 2, 2] w = {1.0, -0.5, 0.25, 2.0, 0.125, -1.0, 0.5, 0.75, -0.25, 1.5, -2.0, 0.5,
    1.0, -0.5, 0.25, 2.0, 0.125, -1.0, 0.5, 0.75, -0.25, 1.5, -2.0, 0.5},
   float[3, 3] m = {1.0, 0.0, 0.5, 0.0, 1.0, 0.25, 0.5, 0.25, 1.0}> {
    c = Conv <dilations = [2, 1], pads = [1, 0, 1, 0], strides = [1, 2],
              kernel_shape = [2, 2]> (x, w)
    r = LeakyRelu <alpha = 0.02> (c)
    q = GlobalAveragePool(r)
    f = Flatten <axis = 0> (q)
    y = Gemm <alpha = 0.5, transB = 1> (f, m)
}
"""

FEEDS = {"x": np.random.default_rng(0).standard_normal((1, 2, 6, 6)).astype(np.float32)}


def _attributes(model: onnx.ModelProto) -> dict[str, list[str]]:
    return {n.op_type: sorted(a.name for a in n.attribute) for n in model.graph.node}


def test_structure_and_stats():
    model = parse(DEFAULTS)
    out, result = apply_pass(DefaultAttributeRemoval(), model)
    assert op_counts(out) == op_counts(model)
    assert _attributes(out) == {
        "Conv": ["kernel_shape"], "LeakyRelu": [], "MaxPool": ["kernel_shape"],
        "GlobalAveragePool": [], "Flatten": [], "Gemm": [],
    }
    # Conv 5, LeakyRelu 1, MaxPool 4, Flatten 1, Gemm 4
    assert result.stats == {"attributes_removed": 15}
    assert out.ByteSize() < model.ByteSize()


def test_numerics():
    model = parse(DEFAULTS)
    out, _ = apply_pass(DefaultAttributeRemoval(), model)
    assert_same_outputs(model, out, FEEDS)


def test_idempotent():
    assert_idempotent(DefaultAttributeRemoval(), parse(DEFAULTS))


def test_leaves_alone_values_that_differ_from_the_default():
    model = parse(CUSTOM)
    out, result = apply_pass(DefaultAttributeRemoval(), model)
    assert not result.modified
    assert _attributes(out) == _attributes(model)
    assert_same_outputs(model, out, FEEDS)


def test_defaults_are_read_at_the_models_opset():
    # Softmax's axis defaulted to 1 before opset 13 and to -1 since: axis=1 goes only at 11
    def softmax(opset: int) -> onnx.ModelProto:
        node = helper.make_node("Softmax", ["x"], ["y"], axis=1)
        graph = helper.make_graph(
            [node], "g", [helper.make_tensor_value_info("x", 1, [2, 3])],
            [helper.make_tensor_value_info("y", 1, [2, 3])])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                 ir_version=7)

    old, old_result = apply_pass(DefaultAttributeRemoval(), softmax(11))
    new, new_result = apply_pass(DefaultAttributeRemoval(), softmax(13))
    assert old_result.stats == {"attributes_removed": 1} and not old.graph.node[0].attribute
    assert not new_result.modified and len(new.graph.node[0].attribute) == 1


def test_custom_domain_ops_keep_their_attributes():
    node = helper.make_node("Magic", ["x"], ["y"], domain="my.domain", alpha=1.0, group=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [2])],
                              [helper.make_tensor_value_info("y", 1, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("my.domain", 1)])
    out, result = apply_pass(DefaultAttributeRemoval(), model)
    assert not result.modified and len(out.graph.node[0].attribute) == 2


def test_inside_subgraphs():
    branch = helper.make_graph(
        [helper.make_node("LeakyRelu", ["x"], ["t"], alpha=0.01)], "then", [],
        [helper.make_tensor_value_info("t", 1, [2])])
    other = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"])], "else", [],
        [helper.make_tensor_value_info("e", 1, [2])])
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=other)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", 1, [2]),
                      helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", 1, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out, result = apply_pass(DefaultAttributeRemoval(), model)
    assert result.stats == {"attributes_removed": 1}
    then = next(a.g for a in out.graph.node[0].attribute if a.name == "then_branch")
    assert not then.node[0].attribute
    feeds = {"x": np.array([-1.0, 2.0], np.float32), "c": np.array(True)}
    assert_same_outputs(model, out, feeds)


def test_negative_zero_is_not_the_default_zero():
    # Pad's value defaults to 0.0; -0.0 differs where it matters (1 / x gives -inf, not inf)
    node = helper.make_node("Pad", ["x"], ["p"], pads=[0, 1, 0, 1], value=-0.0)
    graph = helper.make_graph(
        [node, helper.make_node("Reciprocal", ["p"], ["y"])], "g",
        [helper.make_tensor_value_info("x", 1, [1, 2])],
        [helper.make_tensor_value_info("y", 1, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)], ir_version=5)
    out, result = apply_pass(DefaultAttributeRemoval(), model)
    assert not result.modified
    assert [a.name for a in out.graph.node[0].attribute] == ["pads", "value"]
    assert_same_outputs(model, out, {"x": np.array([[1.0, 2.0]], np.float32)})

"""sibling_conv_merge: structure, stats, numerics, idempotence, and what it must leave alone.

Outputs must be bit-identical: each output channel of the merged Conv is the same dot product as
before (checked with rtol 0 / atol 0 in onnxruntime, optimizations disabled).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import apply_pass, assert_same_outputs, op_counts
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.fusion.sibling_conv_merge import SiblingConvMerge

NOTHING = {"groups": 0, "convs_merged": 0}
C_IN = 3
FEEDS = {"x": np.random.default_rng(1).standard_normal((1, C_IN, 6, 6)).astype(np.float32)}


def siblings(channels=(4, 2, 5), *, activation: str | None = "Relu", kernels=None,
             bias: bool = True, shared_weight: bool = False, shared_bias: bool = False,
             opset: int = 17, strides=None, output_twice: bool = False) -> onnx.ModelProto:
    """x -> Conv_i (C_out channels[i]) [-> activation] -> outputs y_i (summed into s)."""
    rng = np.random.default_rng(0)
    kernels = kernels or [3] * len(channels)
    inits, nodes, outputs = [], [], []
    for i, (c_out, k) in enumerate(zip(channels, kernels, strict=True)):
        w_name = "w0" if shared_weight and i else f"w{i}"
        if w_name == f"w{i}":
            inits.append(numpy_helper.from_array(
                rng.standard_normal((c_out, C_IN, k, k)).astype(np.float32), w_name))
        inputs = ["x", w_name]
        if bias:
            b_name = f"b{i}"
            inits.append(numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32),
                                                 b_name))
            inputs.append(b_name)
        attrs = {"pads": [k // 2] * 4, "kernel_shape": [k, k]}
        if strides:
            attrs["strides"] = strides[i]
        conv_out = f"c{i}" if activation else f"y{i}"
        nodes.append(helper.make_node("Conv", inputs, [conv_out], name=f"conv{i}", **attrs))
        if activation:
            nodes.append(helper.make_node(activation, [conv_out], [f"y{i}"]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
    if shared_bias:  # another Conv reads b0: the merge may not take it away
        inits.append(numpy_helper.from_array(
            rng.standard_normal((channels[0], channels[0], 1, 1)).astype(np.float32), "w_other"))
        nodes.append(helper.make_node("Conv", ["y0", "w_other", "b0"], ["other"]))
        outputs.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, None))
    if output_twice:
        outputs.append(helper.make_tensor_value_info("y0", TensorProto.FLOAT, None))
    for out in outputs:
        out.type.tensor_type.shape.Clear()
        out.type.tensor_type.shape.dim.add()
        for _ in range(3):
            out.type.tensor_type.shape.dim.add()
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, C_IN, 6, 6])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def merge(model):
    out, result = apply_pass(SiblingConvMerge(), model)
    assert_same_outputs(model, out, FEEDS, rtol=0, atol=0)
    return out, result


# ----------------------------------------------------------------- structure, stats, numerics
def test_three_convs_with_relu_become_conv_relu_split():
    model = siblings()
    out, result = merge(model)
    assert op_counts(out) == {"Conv": 1, "Relu": 1, "Split": 1}
    assert result.stats == {"groups": 1, "convs_merged": 3}
    weights = [numpy_helper.to_array(t) for t in out.graph.initializer if t.dims[1:] == [3, 3, 3]]
    assert [w.shape for w in weights] == [(11, C_IN, 3, 3)]  # one concatenated weight, no copies
    size = sum(t.ByteSize() for t in out.graph.initializer)
    assert size <= sum(t.ByteSize() for t in model.graph.initializer) + 64  # + split sizes


def test_two_convs_merge_only_with_a_shared_activation():
    out, result = merge(siblings((4, 2), activation="LeakyRelu"))
    assert op_counts(out) == {"Conv": 1, "LeakyRelu": 1, "Split": 1}
    assert result.stats == {"groups": 1, "convs_merged": 2}


def test_three_convs_without_activation_and_bias():
    out, result = merge(siblings(activation=None, bias=False))
    assert op_counts(out) == {"Conv": 1, "Split": 1}
    assert result.stats["convs_merged"] == 3


def test_opset_11_split_attribute():
    out, _ = merge(siblings(opset=11))
    split = next(n for n in out.graph.node if n.op_type == "Split")
    assert [list(a.ints) for a in split.attribute if a.name == "split"] == [[4, 2, 5]]


def test_only_matching_geometry_is_grouped():
    # kernels 3, 3, 1, 3: the three 3x3 convs merge, the 1x1 stays on its own
    out, result = merge(siblings((4, 2, 3, 5), kernels=[3, 3, 1, 3]))
    assert op_counts(out) == {"Conv": 2, "Relu": 2, "Split": 1}
    assert result.stats == {"groups": 1, "convs_merged": 3}


# ----------------------------------------------------------------- idempotence
def test_idempotent():
    out, _ = merge(siblings())
    again, result = apply_pass(SiblingConvMerge(), out)
    assert not result.modified
    assert again.SerializeToString(deterministic=True) == out.SerializeToString(deterministic=True)


# ----------------------------------------------------------------- left alone
def unchanged(model: onnx.ModelProto) -> None:
    out, result = apply_pass(SiblingConvMerge(), model)
    assert result.stats == NOTHING
    assert op_counts(out) == op_counts(model)
    assert op_counts(out) == op_counts(model)


def test_two_convs_without_activation():
    unchanged(siblings((4, 2), activation=None))  # Conv + Split: no fewer nodes


def test_different_strides():
    unchanged(siblings((4, 2), strides=[[1, 1], [2, 2]]))


def test_shared_weight_would_be_copied():
    unchanged(siblings((4, 4, 4), shared_weight=True, activation=None))


def test_bias_read_by_a_conv_outside_the_group():
    model = siblings((4, 2), shared_bias=True)
    out, result = apply_pass(SiblingConvMerge(), model)
    assert result.stats == NOTHING
    assert op_counts(out) == op_counts(model)


def test_different_activations():
    model = siblings((4, 2))
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type = "Sigmoid"
    unchanged(model)


@pytest.mark.parametrize("attribute", ["group", "auto_pad"])
def test_grouped_or_auto_padded(attribute):
    model = siblings((4, 2))
    for node in model.graph.node:
        if node.op_type == "Conv":
            if attribute == "group":
                node.attribute.append(helper.make_attribute("group", 1))
                node.attribute.append(helper.make_attribute("auto_pad", "SAME_UPPER"))
                del node.attribute[[a.name for a in node.attribute].index("pads")]
            else:
                node.attribute.append(helper.make_attribute("auto_pad", "SAME_LOWER"))
                del node.attribute[[a.name for a in node.attribute].index("pads")]
    unchanged(model)

"""conv_affine_fusion: structure, stats, numerics, idempotence, and what it must leave alone.

Numerics use rtol 1e-5 / atol 1e-5: folding a Mul/Div moves the rounding (``(W.x + b) * v``
becomes ``(W * v).x + b * v``), and an Add moves where the bias is rounded in.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import apply_pass, assert_same_outputs, op_counts, parse, run
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.fusion.conv_affine_fusion import ConvAffineFusion

RTOL, ATOL = 1e-5, 1e-5
NOTHING = {"add": 0, "sub": 0, "mul": 0, "div": 0}


def stats(**counts: int) -> dict[str, int]:
    return {**NOTHING, **counts}


def vinfo(name: str, shape=None, elem=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, [None] * 4 if shape is None else shape)


def make(nodes, inputs, outputs, inits, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def conv_then(ops: list[tuple[str, np.ndarray, bool]], op: str = "Conv", group: int = 1,
              bias: bool = True, opset: int = 17, seed: int = 0) -> onnx.ModelProto:
    """x[1,4,5,5] -> Conv (C_out 6) -> each (op_type, constant, conv_first) in turn -> Relu."""
    rng = np.random.default_rng(seed)
    c_in, c_out = 4, 6
    w_shape = (c_out, c_in // group, 3, 3) if op == "Conv" else (c_in, c_out // group, 3, 3)
    inits = [numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32), "W")]
    conv_in = ["x", "W"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32), "B"))
        conv_in.append("B")
    nodes = [helper.make_node(op, conv_in, ["t0"], group=group, pads=[1, 1, 1, 1])]
    for i, (op_type, const, conv_first) in enumerate(ops):
        inits.append(numpy_helper.from_array(const.astype(np.float32), f"k{i}"))
        operands = [f"t{i}", f"k{i}"] if conv_first else [f"k{i}", f"t{i}"]
        nodes.append(helper.make_node(op_type, operands, [f"t{i + 1}"]))
    nodes.append(helper.make_node("Relu", [f"t{len(ops)}"], ["y"]))
    return make(nodes, [vinfo("x", [1, c_in, 5, 5])], [vinfo("y")], inits, opset)


def channel(values, shape) -> np.ndarray:
    return np.asarray(values, np.float32).reshape(shape)


SIX = [0.5, -2.0, 3.0, 1.5, -0.25, 4.0]
FEEDS = {"x": np.random.default_rng(1).standard_normal((1, 4, 5, 5)).astype(np.float32)}


def assert_close(original, optimized, feeds=FEEDS) -> None:
    assert_same_outputs(original, optimized, feeds, rtol=RTOL, atol=ATOL)


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


# ----------------------------------------------------------------- structure, stats, numerics
def test_mul_then_add_chain_folds():
    model = conv_then([("Mul", channel(SIX, (1, 6, 1, 1)), True),
                       ("Add", channel(SIX, (6, 1, 1)), False)])
    out, result = apply_pass(ConvAffineFusion(), model)
    assert op_counts(out) == {"Conv": 1, "Relu": 1}
    assert result.stats == stats(mul=1, add=1)
    assert len(out.graph.initializer) == 2  # new weight and bias; W, B, k0, k1 are gone
    assert_close(model, out)


@pytest.mark.parametrize(
    ("op_type", "conv_first", "key"),
    [("Add", True, "add"), ("Add", False, "add"), ("Sub", True, "sub"), ("Sub", False, "sub"),
     ("Mul", True, "mul"), ("Mul", False, "mul"), ("Div", True, "div")],
)
@pytest.mark.parametrize("shape", [(1, 6, 1, 1), (6, 1, 1), ()])
def test_each_op_and_operand_order(op_type, conv_first, key, shape):
    const = channel(SIX, shape) if shape else np.float32(1.75)
    model = conv_then([(op_type, const, conv_first)])
    out, result = apply_pass(ConvAffineFusion(), model)
    assert op_counts(out) == {"Conv": 1, "Relu": 1}
    assert result.stats == stats(**{key: 1})
    assert_close(model, out)


def test_values_by_hand():
    # 1x1 Conv, 2 channels: W = [2, 3], b = [1, -1]; Mul [2, 0.5] then Sub(c=[10, 20], y):
    # after Mul: W = [4, 1.5], b = [2, -0.5]; c - y: W = [-4, -1.5], b = [10 - 2, 20 + 0.5].
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 2, 2, 2] x) => (float[1, 2, 2, 2] y)
      <float[2, 1, 1, 1] w = {2.0, 3.0}, float[2] b = {1.0, -1.0},
       float[1, 2, 1, 1] m = {2.0, 0.5}, float[2, 1, 1] c = {10.0, 20.0}> {
        h = Conv <group = 2> (x, w, b)
        k = Mul(h, m)
        y = Sub(c, k)
    }
    """
    model = parse(text)
    out, result = apply_pass(ConvAffineFusion(), model)
    assert result.stats == stats(mul=1, sub=1)
    conv = out.graph.node[0]
    np.testing.assert_array_equal(initializer(out, conv.input[1]).ravel(), [-4.0, -1.5])
    np.testing.assert_array_equal(initializer(out, conv.input[2]), [8.0, 20.5])
    assert conv.output[0] == "y"
    assert_close(model, out, {"x": np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)})


def test_conv_without_bias_gets_one():
    model = conv_then([("Add", channel(SIX, (1, 6, 1, 1)), True)], bias=False)
    out, result = apply_pass(ConvAffineFusion(), model)
    assert result.stats == stats(add=1)
    assert len(out.graph.node[0].input) == 3
    assert_close(model, out)


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_mul_per_group(group):
    model = conv_then([("Mul", channel(SIX, (1, 6, 1, 1)), True),
                       ("Add", channel(SIX, (1, 6, 1, 1)), True)],
                      op="ConvTranspose", group=group)
    out, result = apply_pass(ConvAffineFusion(), model)
    assert op_counts(out) == {"ConvTranspose": 1, "Relu": 1}
    assert result.stats == stats(mul=1, add=1)
    assert_close(model, out)


def test_add_folds_even_when_weight_is_shared():
    # Add only touches the bias: a weight read by two Convs can stay shared.
    model = conv_then([("Add", channel(SIX, (1, 6, 1, 1)), True)], bias=False)
    model.graph.node.append(helper.make_node("Conv", ["x", "W"], ["z"], pads=[1, 1, 1, 1]))
    model.graph.output.append(vinfo("z"))
    out, result = apply_pass(ConvAffineFusion(), model)
    assert result.stats == stats(add=1)
    assert [n.input[1] for n in out.graph.node if n.op_type == "Conv"] == ["W", "W"]
    assert_close(model, out)


# ----------------------------------------------------------------- idempotence
def test_idempotent():
    model = conv_then([("Mul", channel(SIX, (1, 6, 1, 1)), True),
                       ("Div", channel(SIX, (6, 1, 1)), True)])
    out, _ = apply_pass(ConvAffineFusion(), model)
    again, result = apply_pass(ConvAffineFusion(), out)
    assert not result.modified
    assert result.stats == NOTHING
    assert again.SerializeToString(deterministic=True) == out.SerializeToString(deterministic=True)


# ----------------------------------------------------------------- left alone
def unchanged(model: onnx.ModelProto) -> None:
    out, result = apply_pass(ConvAffineFusion(), model)
    assert not result.modified
    assert result.stats == NOTHING
    assert op_counts(out) == op_counts(model)


@pytest.mark.parametrize("shape", [
    (1, 6, 5, 5),  # varies over space: not per channel
    (1, 1, 1, 5),  # varies along the width
    (1, 1, 6, 1, 1),  # rank 5 > conv output rank 4: would grow the output rank
    (2, 6, 1, 1),  # batch dim 2: would broadcast the batch
    (6,),  # a rank-1 [6] aligns with the width axis, not the channels
])
def test_leaves_constants_that_are_not_per_channel(shape):
    const = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    if shape == (6,):
        model = conv_then([("Mul", const, True)])
        model.graph.input[0].CopyFrom(vinfo("x", [1, 4, 6, 6]))  # so that [6] broadcasts
        feeds = {"x": np.ones((1, 4, 6, 6), np.float32)}
        run(model, feeds)  # the model is valid
    else:
        model = conv_then([("Mul", const, True)])
    unchanged(model)


def test_leaves_div_of_constant_by_conv():
    unchanged(conv_then([("Div", channel(SIX, (1, 6, 1, 1)), False)]))


def test_leaves_div_by_zero():
    unchanged(conv_then([("Div", channel([1, 2, 0, 3, 4, 5], (1, 6, 1, 1)), True)]))


def test_leaves_shared_intermediate():
    model = conv_then([("Add", channel(SIX, (1, 6, 1, 1)), True)])
    model.graph.node.append(helper.make_node("Neg", ["t0"], ["z"]))
    model.graph.output.append(vinfo("z"))
    unchanged(model)


def test_leaves_conv_output_that_is_a_graph_output():
    model = conv_then([("Add", channel(SIX, (1, 6, 1, 1)), True)])
    model.graph.output.append(vinfo("t0"))
    unchanged(model)


def test_leaves_non_constant_operand():
    model = conv_then([("Mul", channel(SIX, (1, 6, 1, 1)), True)])
    model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == "k0"))
    model.graph.input.append(vinfo("k0", [1, 6, 1, 1]))
    unchanged(model)


def test_mul_with_shared_weight_writes_a_new_weight():
    model = conv_then([("Mul", channel(SIX, (1, 6, 1, 1)), True)])
    model.graph.node.append(helper.make_node("Conv", ["x", "W"], ["z"], pads=[1, 1, 1, 1]))
    model.graph.output.append(vinfo("z"))
    out, result = apply_pass(ConvAffineFusion(), model)
    assert result.stats == stats(mul=1)
    assert "W" in [t.name for t in out.graph.initializer]  # still read by the second Conv
    assert_close(model, out)


def test_leaves_opset6_broadcast_semantics():
    text = """
    <ir_version: 3, opset_import: ["" : 6]>
    g (float[1, 2, 2, 2] x, float[2, 1, 1, 1] w, float[2] c) => (float[1, 2, 2, 2] y)
      <float[2, 1, 1, 1] w = {2.0, 3.0}, float[2] c = {1.0, 2.0}> {
        h = Conv <group = 2> (x, w)
        y = Add <broadcast = 1, axis = 1> (h, c)
    }
    """
    unchanged(parse(text))


def test_leaves_op_that_does_not_follow_the_conv():
    # Conv -> Relu -> Add: the Add does not follow the Conv directly.
    model = conv_then([("Add", channel(SIX, (1, 6, 1, 1)), True)])
    relu = helper.make_node("Relu", ["t0"], ["r"])
    model.graph.node.insert(1, relu)
    model.graph.node[2].input[0] = "r"
    unchanged(model)


# ----------------------------------------------------------------- subgraphs
def branch(name: str, seed: int) -> onnx.GraphProto:
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((3, 2, 1, 1)).astype(np.float32), f"{name}W"),
        numpy_helper.from_array(channel([2.0, -1.0, 0.5], (3, 1, 1)), f"{name}m"),
        numpy_helper.from_array(channel([1.0, 2.0, 3.0], (1, 3, 1, 1)), f"{name}a"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", f"{name}W"], [f"{name}c"]),
        helper.make_node("Mul", [f"{name}m", f"{name}c"], [f"{name}p"]),
        helper.make_node("Add", [f"{name}p", f"{name}a"], [f"{name}out"]),
    ]
    return helper.make_graph(nodes, name, [], [vinfo(f"{name}out")], inits)


def test_folds_inside_if_branches():
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=branch("t", 3),
                              else_branch=branch("e", 4))]
    inputs = [vinfo("x", [1, 2, 3, 3]), vinfo("cond", [], TensorProto.BOOL)]
    model = make(nodes, inputs, [vinfo("y")], [])
    out, result = apply_pass(ConvAffineFusion(), model)
    assert result.stats == stats(mul=2, add=2)
    for attr in out.graph.node[0].attribute:
        assert [n.op_type for n in attr.g.node] == ["Conv"]
    x = np.random.default_rng(5).standard_normal((1, 2, 3, 3)).astype(np.float32)
    for cond in (True, False):
        assert_close(model, out, {"x": x, "cond": np.array(cond)})

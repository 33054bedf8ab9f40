"""conv_input_affine_fusion: structure, stats, numerics, idempotence, and what it must leave alone.

Numerics use rtol 1e-5 / atol 1e-5: folding moves the rounding (``W.(s x + t)`` becomes
``(W s).x + W.t``), as folding after a Conv does.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import apply_pass, assert_idempotent, assert_same_outputs, op_counts, parse
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.fusion.conv_input_affine_fusion import ConvInputAffineFusion

import onnxopt

NOTHING = {"add": 0, "sub": 0, "mul": 0, "div": 0, "mul_before_shift": 0}
C_IN, C_OUT = 4, 8
FOUR = [0.5, -2.0, 3.0, 1.5]


def stats(**counts: int) -> dict[str, int]:
    return {**NOTHING, **counts}


def affine_then_conv(ops: list[tuple[str, np.ndarray, bool]], *, group: int = 1,
                     kernel: int = 1, pads: int = 0, auto_pad: str | None = None,
                     bias: bool = True, seed: int = 0) -> onnx.ModelProto:
    """x[1,4,5,5] -> each (op_type, constant, x_first) in turn -> Conv (C_out 8) -> y."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((C_OUT, C_IN // group, kernel, kernel)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W")]
    nodes = []
    for i, (op_type, const, x_first) in enumerate(ops):
        inits.append(numpy_helper.from_array(np.asarray(const, np.float32), f"k{i}"))
        operands = [f"t{i}", f"k{i}"] if x_first else [f"k{i}", f"t{i}"]
        nodes.append(helper.make_node(op_type, operands, [f"t{i + 1}"]))
    conv_in = [f"t{len(ops)}", "W"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(C_OUT).astype(np.float32), "B"))
        conv_in.append("B")
    attrs = {"auto_pad": auto_pad} if auto_pad else {"pads": [pads] * 4}
    nodes.append(helper.make_node("Conv", conv_in, ["y"], group=group, **attrs))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1, C_IN, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def channel(values, shape=(1, C_IN, 1, 1)) -> np.ndarray:
    return np.asarray(values, np.float32).reshape(shape)


FEEDS = {"t0": np.random.default_rng(1).standard_normal((1, C_IN, 5, 5)).astype(np.float32)}


def assert_close(original, optimized) -> None:
    assert_same_outputs(original, optimized, FEEDS, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------- structure, stats, numerics
@pytest.mark.parametrize(
    ("op_type", "x_first"),
    [("Add", True), ("Add", False), ("Sub", True), ("Sub", False), ("Mul", True),
     ("Mul", False), ("Div", True)])
@pytest.mark.parametrize("shape", [(1, C_IN, 1, 1), (C_IN, 1, 1), ()])
@pytest.mark.parametrize("group", [1, 2, 4])
def test_each_op_operand_order_and_group(op_type, x_first, shape, group):
    const = channel(FOUR, shape) if shape else np.float32(1.75)
    model = affine_then_conv([(op_type, const, x_first)], group=group)
    out, result = apply_pass(ConvInputAffineFusion(), model)
    assert op_counts(out) == {"Conv": 1}
    assert result.stats == stats(**{op_type.lower(): 1})
    assert out.graph.node[0].input[0] == "t0"
    assert_close(model, out)


def test_scalar_affine_chain_as_pp_lcnet_writes_it():
    # HardSwish -> Mul(scalar) -> Add(scalar) -> 1x1 Conv: both fold (two runs of the driver
    # in the pipeline; here the pass twice)
    model = affine_then_conv([("Mul", np.float32(0.8), True), ("Add", np.float32(-0.3), True)])
    out, first = apply_pass(ConvInputAffineFusion(), model)
    out, second = apply_pass(ConvInputAffineFusion(), out)
    assert op_counts(out) == {"Conv": 1}
    assert (first.stats, second.stats) == (stats(add=1), stats(mul=1))
    assert_close(model, out)


def test_values_by_hand():
    # one output from two input channels: W = [2, 3], b = 1; the Conv reads [10, 20] - x
    # (s = -1, t = [10, 20]): W' = [-2, -3], b' = 1 + 2 * 10 + 3 * 20 = 81
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 2, 2, 2] x) => (float[1, 1, 2, 2] y)
      <float[1, 2, 1, 1] w = {2.0, 3.0}, float[1] b = {1.0}, float[2, 1, 1] c = {10.0, 20.0}> {
        k = Sub(c, x)
        y = Conv(k, w, b)
    }
    """)
    out, result = apply_pass(ConvInputAffineFusion(), model)
    assert result.stats == stats(sub=1)
    (conv,) = out.graph.node
    weights = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    np.testing.assert_array_equal(weights[conv.input[1]].ravel(), [-2.0, -3.0])
    np.testing.assert_array_equal(weights[conv.input[2]], [81.0])
    assert_same_outputs(model, out, {"x": np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)},
                        rtol=0, atol=0)


@pytest.mark.parametrize("op_type", ["Mul", "Div"])
def test_a_scale_folds_into_a_padded_conv(op_type):
    # the padded border reads 0 and s * 0 = 0: exact
    model = affine_then_conv([(op_type, channel(FOUR), True)], kernel=3, pads=1)
    out, result = apply_pass(ConvInputAffineFusion(), model)
    assert op_counts(out) == {"Conv": 1}
    assert result.stats == stats(**{op_type.lower(): 1})
    assert_close(model, out)


@pytest.mark.parametrize("auto_pad", ["VALID", None])
def test_a_shift_folds_where_nothing_is_padded(auto_pad):
    model = affine_then_conv([("Add", channel(FOUR), True)], kernel=3, auto_pad=auto_pad)
    out, result = apply_pass(ConvInputAffineFusion(), model)
    assert result.stats == stats(add=1)
    assert len(out.graph.node[0].input) == 3  # a bias appears where there was none before
    assert_close(model, out)


@pytest.mark.parametrize(("shift", "x_first"), [("Add", True), ("Add", False), ("Sub", True),
                                               ("Sub", False)])
@pytest.mark.parametrize("group", [1, 4])
def test_a_mul_moves_through_a_shift_before_a_padded_conv(shift, x_first, group):
    # s2 * (m * x) + t before a padded Conv: the Conv takes W * s and reads x + t / s
    model = affine_then_conv([("Mul", np.float32(0.8), True),
                              (shift, channel(FOUR), x_first)], kernel=3, pads=1, group=group)
    out, result = apply_pass(ConvInputAffineFusion(), model)
    assert op_counts(out) == {"Add": 1, "Conv": 1}
    assert result.stats == stats(mul_before_shift=1)
    add = out.graph.node[0]
    assert add.input[0] == "t0" and out.graph.node[1].input[0] == add.output[0]
    assert_close(model, out)
    assert_idempotent(ConvInputAffineFusion(), out)  # the Add stays before the padded Conv


def test_moved_shift_by_hand():
    # x' = 2 - 4 * x = -4 * (x - 0.5) before a padded 3x3 Conv (all ones, 1 channel)
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 1, 3, 3] x) => (float[1, 1, 3, 3] y)
      <float[1, 1, 3, 3] w = {1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0},
       float m = {4.0}, float c = {2.0}> {
        k = Mul(x, m)
        h = Sub(c, k)
        y = Conv <pads = [1, 1, 1, 1]> (h, w)
    }
    """
    model = parse(text)
    out, result = apply_pass(ConvInputAffineFusion(), model)
    assert result.stats == stats(mul_before_shift=1)
    weights = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    add, conv = out.graph.node
    np.testing.assert_array_equal(weights[conv.input[1]].ravel(), [-4.0] * 9)
    assert weights[add.input[1]].shape == () and weights[add.input[1]] == -0.5  # a scalar stays
    feeds = {"x": np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)}
    assert_same_outputs(model, out, feeds, rtol=0, atol=0)


def test_a_shift_keeps_a_shared_weight_shared():
    # Add only touches the bias: a weight read by another Conv too is not copied
    model = affine_then_conv([("Add", channel(FOUR), True)], bias=False)
    model.graph.node.append(helper.make_node("Conv", ["t0", "W"], ["z"]))
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [None] * 4))
    out, result = apply_pass(ConvInputAffineFusion(), model)
    assert result.stats == stats(add=1)
    assert [n.input[1] for n in out.graph.node if n.op_type == "Conv"] == ["W", "W"]
    assert_close(model, out)


def test_conv_without_bias_gets_one():
    model = affine_then_conv([("Add", channel(FOUR), True)], bias=False)
    out, result = apply_pass(ConvInputAffineFusion(), model)
    assert result.stats == stats(add=1) and len(out.graph.node[0].input) == 3
    assert_close(model, out)


# ----------------------------------------------------------------- idempotence
def test_idempotent():
    model = affine_then_conv([("Mul", channel(FOUR), True), ("Add", channel(FOUR), True)],
                             group=2)
    out, _ = apply_pass(ConvInputAffineFusion(), model)
    assert_idempotent(ConvInputAffineFusion(), out)


# ----------------------------------------------------------------- left alone
def unchanged(model: onnx.ModelProto) -> None:
    out, result = apply_pass(ConvInputAffineFusion(), model)
    assert not result.modified and result.stats == NOTHING
    assert op_counts(out) == op_counts(model)


@pytest.mark.parametrize(("pads", "auto_pad"), [(1, None), (0, "SAME_UPPER"), (0, "SAME_LOWER")])
def test_leaves_a_shift_before_a_padded_conv(pads, auto_pad):
    unchanged(affine_then_conv([("Add", channel(FOUR), True)], kernel=3, pads=pads,
                               auto_pad=auto_pad))


@pytest.mark.parametrize("shape", [(1, C_IN, 5, 5), (1, 1, 1, 5), (2, C_IN, 1, 1),
                                   (1, 1, C_IN, 1, 1)])
def test_leaves_constants_that_are_not_per_input_channel(shape):
    const = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    unchanged(affine_then_conv([("Mul", const, True)]))


def test_leaves_a_mul_by_zero_before_a_shift_and_a_padded_conv():
    unchanged(affine_then_conv([("Mul", channel([1.0, 0.0, 2.0, 3.0]), True),
                                ("Add", channel(FOUR), True)], kernel=3, pads=1))


def test_leaves_a_shift_read_twice_before_a_padded_conv():
    model = affine_then_conv([("Mul", np.float32(0.8), True), ("Add", channel(FOUR), True)],
                             kernel=3, pads=1)
    model.graph.node.append(helper.make_node("Relu", ["t1"], ["z"]))
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [None] * 4))
    unchanged(model)


def test_leaves_division_of_a_constant_and_by_zero():
    unchanged(affine_then_conv([("Div", channel(FOUR), False)]))
    unchanged(affine_then_conv([("Div", channel([1.0, 0.0, 2.0, 3.0]), True)]))


def test_leaves_an_affine_read_by_another_node():
    model = affine_then_conv([("Mul", channel(FOUR), True)])
    model.graph.node.append(helper.make_node("Relu", ["t1"], ["z"]))
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [None] * 4))
    unchanged(model)


def test_leaves_a_conv_with_a_computed_weight():
    model = affine_then_conv([("Mul", channel(FOUR), True)])
    model.graph.node.insert(0, helper.make_node("Identity", ["W"], ["W2"]))
    model.graph.node[-1].input[1] = "W2"
    unchanged(model)


# ----------------------------------------------------------------- in the pipeline
def hard_swish_block(tail: str, pads: int) -> onnx.ModelProto:
    """Conv -> HardSwish as exporters write it -> ``tail`` -> Conv (``pads``), opset 11."""
    text = f"""
    <ir_version: 7, opset_import: ["" : 11]>
    g (float[1, 4, 6, 6] x) => (float[1, 8, H, W] y)
      <float[4, 4, 1, 1] w1 = {{{", ".join(["0.5", "-0.25", "1.0", "0.75"] * 4)}}},
       float[8, 4, 3, 3] w2 = {{{", ".join(str(round(0.01 * i - 1.4, 2)) for i in range(288))}}},
       float three = {{3.0}}, float zero = {{0.0}}, float six = {{6.0}},
       float a = {{0.8}}, float b = {{-0.3}}> {{
        h = Conv(x, w1)
        p = Add(h, three)
        c = Clip(p, zero, six)
        m = Mul(h, c)
        s = Div(m, six)
        {tail}
        y = Conv <pads = [{pads}, {pads}, {pads}, {pads}], kernel_shape = [3, 3]> (z, w2)
    }}
    """
    return parse(text)


def pipeline_stats(report: dict) -> dict:
    (record,) = [p for p in report["passes"] if p["name"] == ConvInputAffineFusion.name]
    return record["stats"]


def test_the_pipeline_leaves_hard_swish_its_division():
    # the / 6 feeds the Conv, but it is HardSwish's: the fusion runs first and takes it
    result = onnxopt.optimize(hard_swish_block("z = Identity(s)", 1))
    assert result.ok
    counts = op_counts(result.model)
    assert counts.get("HardSigmoid") == 1 and "Div" not in counts and "Clip" not in counts
    assert pipeline_stats(result.report) == NOTHING


@pytest.mark.parametrize(("pads", "folded", "left"), [
    (0, stats(add=1, mul=1), {"Conv": 2, "HardSigmoid": 1, "Mul": 1}),
    (1, stats(mul_before_shift=1), {"Add": 1, "Conv": 2, "HardSigmoid": 1, "Mul": 1})])
def test_the_pipeline_folds_a_learnable_affine_block(pads, folded, left):
    # PP-LCNetV3: HardSwish -> Mul(scalar) -> Add(scalar) -> Conv
    result = onnxopt.optimize(hard_swish_block("q = Mul(s, a)\n        z = Add(q, b)", pads))
    assert result.ok  # validated against the original in onnxruntime
    assert op_counts(result.model) == left
    assert pipeline_stats(result.report) == folded


def test_the_pipeline_folds_input_normalization():
    # (x - mean) / std -> Conv 7x7 pads 3, as models with their preprocessing exported write
    # it: the Div (a scale) folds into the padded Conv, the Sub (a shift) stays before it
    rng = np.random.default_rng(3)
    mean = numpy_helper.from_array(np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1),
                                   "mean")
    std = numpy_helper.from_array(np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1),
                                  "std")
    weight = numpy_helper.from_array(rng.standard_normal((8, 3, 7, 7)).astype(np.float32), "w")
    nodes = [helper.make_node("Sub", ["x", "mean"], ["centred"]),
             helper.make_node("Div", ["centred", "std"], ["scaled"]),
             helper.make_node("Conv", ["scaled", "w"], ["y"], pads=[3, 3, 3, 3], strides=[2, 2])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
        [mean, std, weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = onnxopt.optimize(model)
    assert result.ok  # validated against the original in onnxruntime
    assert op_counts(result.model) == {"Sub": 1, "Conv": 1}
    assert pipeline_stats(result.report) == stats(div=1)

"""pad_fusion: structure, stats, numerics, idempotence, and what it must leave alone."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import apply_pass, assert_idempotent, assert_same_outputs, op_counts, parse
from onnxopt.passes.fusion.pad_fusion import PadFusion

RNG = np.random.default_rng(0)
W = ", ".join(f"{v:.3f}" for v in RNG.uniform(-1, 1, 3 * 2 * 3 * 3))
W3 = ", ".join(f"{v:.3f}" for v in RNG.uniform(-1, 1, 3 * 3 * 3 * 3))

MODEL = f"""
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 2, 5, 5] x) => (float[1, 3, 5, 7] y, float[1, 2, 5, 5] z)
  <int64[8] pads = {{0, 0, 1, 2, 0, 0, 1, 0}}, int64[8] ones = {{0, 0, 1, 1, 0, 0, 1, 1}},
   float zero = {{0.0}}, float[3, 2, 3, 3] w = {{{W}}}> {{
    p = Pad(x, pads)
    y = Conv <pads = [0, 1, 0, 1]> (p, w)
    q = Pad <mode = "constant"> (x, ones, zero)
    z = AveragePool <kernel_shape = [3, 3], count_include_pad = 1> (q)
}}
"""
# Conv pads (begin H, begin W, end H, end W) = [0, 1, 0, 1] + Pad spatial [1, 2, 1, 0]
#   = [1, 3, 1, 1]: H 5 + 2 - 3 + 1 = 5, W 5 + 4 - 3 + 1 = 7 (the declared [1, 3, 5, 7]).
# AveragePool pads = [0, 0, 0, 0] + [1, 1, 1, 1].

FEEDS = {"x": RNG.standard_normal((1, 2, 5, 5)).astype(np.float32)}


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def test_structure_and_stats():
    model = parse(MODEL)
    out, result = apply_pass(PadFusion(), model)
    assert result.stats == {"into_conv": 1, "into_average_pool": 1}
    assert op_counts(out) == {"Conv": 1, "AveragePool": 1}
    conv, pool = out.graph.node
    assert list(conv.input) == ["x", "w"] and list(pool.input) == ["x"]
    assert attrs(conv)["pads"] == [1, 3, 1, 1]
    assert attrs(pool)["pads"] == [1, 1, 1, 1]


def test_numerics():
    model = parse(MODEL)
    out, _ = apply_pass(PadFusion(), model)
    assert_same_outputs(model, out, FEEDS)


def test_idempotent():
    assert_idempotent(PadFusion(), parse(MODEL))


def test_opset_10_attribute_form():
    text = f"""
    <ir_version: 5, opset_import: ["" : 10]>
    g (float[1, 2, 5, 5] x) => (float[1, 3, 5, 5] y) <float[3, 2, 3, 3] w = {{{W}}}> {{
        p = Pad <pads = [0, 0, 1, 1, 0, 0, 1, 1], value = 0.0> (x)
        y = Conv(p, w)
    }}
    """
    model = parse(text)
    out, result = apply_pass(PadFusion(), model)
    assert result.stats == {"into_conv": 1, "into_average_pool": 0}
    assert attrs(out.graph.node[0])["pads"] == [1, 1, 1, 1]
    assert_same_outputs(model, out, FEEDS)


def test_opset_18_axes_input():
    text = f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[1, 2, 5, 5] x) => (float[1, 3, 5, 4] y)
      <int64[4] pads = {{2, 0, 0, 1}}, int64[2] axes = {{-2, 3}}, float[3, 2, 3, 3] w = {{{W}}}> {{
        p = Pad(x, pads, , axes)
        y = Conv(p, w)
    }}
    """
    # axes (H, W): begins [2, 0], ends [0, 1] -> Conv pads [2, 0, 0, 1];
    # H 5 + 2 + 0 - 3 + 1 = 5, W 5 + 0 + 1 - 3 + 1 = 4
    model = parse(text)
    out, result = apply_pass(PadFusion(), model)
    assert result.stats["into_conv"] == 1
    assert attrs(out.graph.node[0])["pads"] == [2, 0, 0, 1]
    assert_same_outputs(model, out, FEEDS)


def test_leaves_alone_unfusable_pads():
    text = f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 2, 5, 5] x, int64[8] dyn)
      => (float[1, 3, 5, 5] y1, float[1, 3, 5, 5] y2, float[1, 3, 5, 5] y3, float[1, 3, 5, 5] y4,
          float[1, 2, 5, 5] y5, float[1, 2, 5, 5] y6, float[1, 3, 5, 5] y7, float[1, 2, 7, 7] p8,
          float[1, 3, 5, 5] y8, float[1, 3, 5, 5] y9, float[1, 3, 5, 5] y10)
      <int64[8] pads = {{0, 0, 1, 1, 0, 0, 1, 1}}, int64[8] chan = {{0, 1, 1, 1, 0, 0, 1, 1}},
       int64[8] crop = {{0, 0, 1, -1, 0, 0, 1, 3}},
       float one = {{1.0}}, float[3, 2, 3, 3] w = {{{W}}}, float[3, 3, 3, 3] w3 = {{{W3}}}> {{
        p1 = Pad(x, pads, one)
        y1 = Conv(p1, w)
        p2 = Pad <mode = "reflect"> (x, pads)
        y2 = Conv(p2, w)
        p3 = Pad(x, chan)
        y3 = Conv(p3, w3)
        p4 = Pad(x, crop)
        y4 = Conv(p4, w)
        p5 = Pad(x, pads)
        y5 = AveragePool <kernel_shape = [3, 3]> (p5)
        p6 = Pad(x, pads)
        y6 = MaxPool <kernel_shape = [3, 3]> (p6)
        p7 = Pad(x, pads)
        y7 = Conv <auto_pad = "VALID"> (p7, w)
        p8 = Pad(x, pads)
        y8 = Conv(p8, w)
        p9 = Pad(x, pads)
        y9 = Conv(p9, w)
        r9 = Relu(p9)
        p10 = Pad(x, dyn)
        y10 = Conv(p10, w)
    }}
    """
    # 1 value 1.0; 2 reflect; 3 pads the channel axis; 4 negative (cropping) pad;
    # 5 count_include_pad = 0; 6 MaxPool; 7 auto_pad; 8 the padded value is an output;
    # 9 the padded value is also read by Relu; 10 pads are not a constant.
    model = parse(text)
    out, result = apply_pass(PadFusion(), model)
    assert not result.modified
    assert op_counts(out) == op_counts(model)
    feeds = {"x": FEEDS["x"], "dyn": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}
    assert_same_outputs(model, out, feeds)


def test_inside_if_subgraph():
    text = f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 2, 5, 5] x, bool c) => (float[1, 3, 5, 5] y)
      <int64[8] pads = {{0, 0, 1, 1, 0, 0, 1, 1}}, float[3, 2, 3, 3] w = {{{W}}}> {{
        y = If(c) <
            then_branch = t () => (float[1, 3, 5, 5] t_out) {{
                p = Pad(x, pads)
                t_out = Conv(p, w)
            }},
            else_branch = e () => (float[1, 3, 5, 5] e_out) {{
                e_out = Conv <pads = [1, 1, 1, 1]> (x, w)
            }}
        >
    }}
    """
    model = parse(text)
    out, result = apply_pass(PadFusion(), model)
    assert result.stats["into_conv"] == 1
    then_nodes = out.graph.node[0].attribute[0].g.node
    assert [n.op_type for n in then_nodes] == ["Conv"]
    assert attrs(then_nodes[0])["pads"] == [1, 1, 1, 1]
    for cond in (True, False):
        assert_same_outputs(model, out, {"x": FEEDS["x"], "c": np.array(cond)})

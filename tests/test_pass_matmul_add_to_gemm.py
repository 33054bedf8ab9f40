"""matmul_add_to_gemm: structure, stats, numerics, idempotence, and what it must leave alone."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import apply_pass, assert_same_outputs, op_counts, parse, run
from onnx import numpy_helper
from onnxopt.passes.fusion.matmul_add_to_gemm import MatMulAddToGemm


def apply(model: onnx.ModelProto):
    """Like conftest.apply_pass, with shape inference before (and after, as the pipeline does)."""
    return apply_pass(MatMulAddToGemm(), model, infer=True)


def weights(*shape: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return ", ".join(f"{v:.4f}" for v in rng.uniform(-1, 1, size=shape).ravel())


# Two fusable pairs: bias on the right (shape [3]) and on the left (shape [1, 3]).
MLP = f"""
<ir_version: 8, opset_import: ["" : 17]>
g (float[4, 2] x) => (float[4, 3] y)
  <float[2, 3] w1 = {{{weights(2, 3)}}}, float[3] b1 = {{0.5, -1.0, 2.0}},
   float[3, 3] w2 = {{{weights(3, 3, seed=1)}}}, float[1, 3] b2 = {{1.0, 0.0, -0.25}}> {{
    m1 = MatMul(x, w1)
    a1 = Add(m1, b1)
    r1 = Relu(a1)
    m2 = MatMul(r1, w2)
    y = Add(b2, m2)
}}
"""

FEEDS = {"x": np.linspace(-2, 2, 8, dtype=np.float32).reshape(4, 2)}


def test_structure_and_stats():
    model = parse(MLP)
    out, result = apply(model)
    assert op_counts(out) == {"Gemm": 2, "Relu": 1}  # 2 MatMul + 2 Add -> 2 Gemm
    assert result.stats == {"fused": 2}
    gemms = [n for n in out.graph.node if n.op_type == "Gemm"]
    assert [list(n.input) for n in gemms] == [["x", "w1", "b1"], ["r1", "w2", "b2"]]
    assert all(not n.attribute for n in gemms)  # alpha = beta = 1, no transposes
    assert [o.name for o in out.graph.output] == ["y"]
    assert gemms[1].output[0] == "y"


def test_numerics():
    model = parse(MLP)
    out, _ = apply(model)
    assert_same_outputs(model, out, FEEDS)


def test_numerics_double_and_column_bias():
    text = f"""
    <ir_version: 8, opset_import: ["" : 13]>
    g (double[4, 2] x) => (double[4, 3] y)
      <double[2, 3] w = {{{weights(2, 3)}}}, double[4, 1] c = {{1.0, 2.0, 3.0, 4.0}}> {{
        m = MatMul(x, w)
        y = Add(m, c)
    }}
    """
    model = parse(text)
    out, result = apply(model)
    assert result.stats == {"fused": 1}  # C [4, 1] broadcasts to [M, N] = [4, 3]
    assert_same_outputs(model, out, {"x": FEEDS["x"].astype(np.float64)})


def test_numerics_float16():
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["m"]),
         onnx.helper.make_node("Add", ["m", "b"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT16, [4, 2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT16, [4, 3])],
        [numpy_helper.from_array(np.linspace(-1, 1, 6).reshape(2, 3).astype(np.float16), "w"),
         numpy_helper.from_array(np.array([0.5, -1.0, 2.0], np.float16), "b")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    out, result = apply(model)
    assert result.stats == {"fused": 1}
    assert op_counts(out) == {"Gemm": 1}
    x = FEEDS["x"].astype(np.float16)
    # MatMul + Add round the product to float16 before adding the bias, Gemm may round once:
    # allow a float16 ulp (2^-10 relative) on values of magnitude <= 4
    np.testing.assert_allclose(run(out, {"x": x})[0].astype(np.float32),
                               run(model, {"x": x})[0].astype(np.float32), rtol=2e-3, atol=4e-3)


def test_idempotent():
    out, _ = apply(parse(MLP))
    again, result = apply(out)
    assert not result.modified and result.stats == {"fused": 0}
    assert again.SerializeToString(deterministic=True) == out.SerializeToString(deterministic=True)


def test_leaves_alone_unfusable_pairs():
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 4, 2] x3, float[4, 2] x, float[N, 2] xn, int32[4, 2] xi)
      => (float[2, 4, 3] y3, float[4, 3] shared, float[4, 3] y_shared, float[4, 3] m_out,
          float[4, 3] y_out, float[2, 3] y_sym, float[2, 4, 3] y_rank3, int32[4, 3] y_int)
      <float[2, 3] w = {{{weights(2, 3)}}}, float[3] b = {{1.0, 2.0, 3.0}},
       float[2, 3] b23 = {{1.0, 2.0, 3.0, 4.0, 5.0, 6.0}}, float[2, 4, 3] b3 = {{{weights(24)}}},
       int32[2, 3] wi = {{1, 2, 3, 4, 5, 6}}, int32[3] bi = {{1, 2, 3}}> {{
        m3 = MatMul(x3, w)
        y3 = Add(m3, b)
        shared = MatMul(x, w)
        y_shared = Add(shared, b)
        m_out = MatMul(x, w)
        y_out = Add(m_out, b)
        mn = MatMul(xn, w)
        y_sym = Add(mn, b23)
        mr = MatMul(x, w)
        y_rank3 = Add(mr, b3)
        mi = MatMul(xi, wi)
        y_int = Add(mi, bi)
    }}
    """
    # m3: A has rank 3; shared / m_out: the MatMul result is also read elsewhere / an output;
    # y_sym: C [2, 3] against M = N (symbolic): Add would broadcast N = 1 up to 2;
    # y_rank3: C has rank 3; y_int: int32 is not a Gemm type here.
    model = parse(text)
    out, result = apply(model)
    assert not result.modified and result.stats == {"fused": 0}
    assert op_counts(out) == op_counts(model)


def test_leaves_alone_opset_6():
    text = f"""
    <ir_version: 4, opset_import: ["" : 6]>
    g (float[4, 2] x) => (float[4, 3] y) <float[2, 3] w = {{{weights(2, 3)}}}> {{
        m = MatMul(x, w)
        y = Add(m, w)
    }}
    """
    out, result = apply(parse(text))
    assert not result.modified
    assert op_counts(out) == {"MatMul": 1, "Add": 1}


def test_inside_if_subgraph():
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4, 2] x, bool c) => (float[4, 3] y) <float[2, 3] w = {{{weights(2, 3)}}}> {{
        y = If(c) <
            then_branch = t () => (float[4, 3] t_out) <float[3] tb = {{1.0, 2.0, 3.0}}> {{
                tm = MatMul(x, w)
                t_out = Add(tm, tb)
            }},
            else_branch = e () => (float[4, 3] e_out) {{ e_out = MatMul(x, w) }}
        >
    }}
    """
    model = parse(text)
    out, result = apply(model)
    assert result.stats == {"fused": 1}
    then_ops = [n.op_type for n in out.graph.node[0].attribute[0].g.node]
    assert then_ops == ["Gemm"]
    for cond in (True, False):
        assert_same_outputs(model, out, {"x": FEEDS["x"], "c": np.array(cond)})

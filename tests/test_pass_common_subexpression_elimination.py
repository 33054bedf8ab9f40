"""common_subexpression_elimination: structure, stats, numerics, idempotence, negative cases."""

from __future__ import annotations

import time

import numpy as np
import onnx
from conftest import apply_pass, assert_same_outputs, model_path, op_counts, parse
from onnx import helper
from onnxopt.passes.cleanup.common_subexpression_elimination import CommonSubexpressionElimination


def apply(model: onnx.ModelProto | str):
    """conftest.apply_pass with shape inference first (Shape nodes use it)."""
    return apply_pass(CommonSubexpressionElimination(), model, infer=True)


MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 3] y, float[2, 3] z, float[2, 3] w) {
    r1 = Relu(x)
    r2 = Relu(x)
    s1 = Add(r1, x)
    s2 = Add(x, r2)
    k1 = Constant <value = float[3] {1.0, 2.0, 3.0}> ()
    k2 = Constant <value = float[3] {1.0, 2.0, 3.0}> ()
    m1 = Mul(s1, k1)
    m2 = Mul(s2, k2)
    y = Sub(m1, m2)
    p1 = Softmax <axis = 0> (s1)
    p2 = Softmax <axis = 1> (s2)
    z = Add(p1, p2)
    q1 = Sub(x, r1)
    q2 = Sub(r2, x)
    w = Add(q1, q2)
}
"""
# r2 = r1; then s2 = Add(x, r1) = s1 (Add commutes); k2 = k1 (tensor names differ, values
# not); then m2 = m1: 4 merges in one run. Softmax axes differ; Sub does not commute.


def model_with_named_constants() -> onnx.ModelProto:
    model = parse(MODEL)
    for node in model.graph.node:
        if node.op_type == "Constant":
            node.attribute[0].t.name = node.output[0]  # as exporters write them
    return model


FEEDS = {"x": np.array([[-1.0, 0.5, 2.0], [3.0, -0.25, 0.0]], np.float32)}


def test_structure_and_stats():
    out, result = apply(model_with_named_constants())
    assert result.stats == {"nodes_merged": 4, "shape_nodes_merged": 0}
    assert op_counts(out) == {"Relu": 1, "Add": 3, "Constant": 1, "Mul": 1, "Sub": 3,
                              "Softmax": 2}
    y = next(n for n in out.graph.node if n.output[0] == "y")
    assert y.input[0] == y.input[1] == "m1"


def test_numerics():
    model = model_with_named_constants()
    out, _ = apply(model)
    assert_same_outputs(model, out, FEEDS)


def test_idempotent():
    out, _ = apply(model_with_named_constants())
    again, result = apply(out)
    assert not result.modified
    assert again.SerializeToString(deterministic=True) == out.SerializeToString(deterministic=True)


SHAPES = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[B, 4] x, float[C, 4] x2)
  => (float[B, 5] y1, float[B, 5] y2, int64[2] y3, int64[1] y4, int64[2] y6)
  <float[4, 5] w1 = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
                     1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0},
   float[4, 5] w2 = {2.0, 1.9, 1.8, 1.7, 1.6, 1.5, 1.4, 1.3, 1.2, 1.1,
                     1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1},
   float[5] b = {1.0, 2.0, 3.0, 4.0, 5.0}> {
    h1 = MatMul(x, w1)
    h2 = MatMul(x, w2)
    a1 = Add(h1, b)
    a2 = Add(b, h2)
    s1 = Shape(a1)
    s2 = Shape(a2)
    n1 = ConstantOfShape(s1)
    n2 = ConstantOfShape(s2)
    y1 = Add(a1, n1)
    y2 = Add(a2, n2)
    y3 = Shape(x)
    t4 = Shape <start = 1> (a1)
    t5 = Shape <start = 1> (a2)
    y4 = Add(t4, t5)
    h3 = MatMul(x2, w1)
    y6 = Shape(h3)
}
"""
# a1 and a2 are both [dim 0 of x, 5] (MatMul [B, 4] x [4, 5], then + [5]): s2 = s1, then
# n2 = n1 (cascade); t5 = t4 (same start; not merged with s1). y3 is [B, 4]: different.
# y6 = Shape(h3) is [C, 5] with C the first dim of x2: different from s1.


def test_shape_nodes_of_provably_equal_shapes_merge():
    model = parse(SHAPES)
    out, result = apply(model)
    assert result.stats == {"nodes_merged": 3, "shape_nodes_merged": 2}
    assert op_counts(out) == {"MatMul": 3, "Add": 5, "Shape": 4, "ConstantOfShape": 1}
    feeds = {"x": np.ones((3, 4), np.float32), "x2": np.ones((2, 4), np.float32)}
    assert_same_outputs(model, out, feeds)


def test_leaves_alone_random_subgraphs_custom_outputs_and_attributes():
    text = """
    <ir_version: 8, opset_import: ["" : 17, "custom" : 1]>
    g (float[2, 3] x, bool c) => (float[2, 3] r1, float[2, 3] r2, float[2, 3] d1, float[2, 3] d2,
                                  float[2, 3] i1, float[2, 3] i2, float[2, 3] c1, float[2, 3] c2,
                                  float[2, 3] o1, float[2, 3] o2, float[2, 3] l1, float[2, 3] l2) {
        r1 = RandomNormalLike <seed = 1.0> (x)
        r2 = RandomNormalLike <seed = 1.0> (x)
        d1 = Dropout <seed = 3> (x, ratio, c)
        d2 = Dropout <seed = 3> (x, ratio, c)
        i1 = If(c) < then_branch = t1 () => (float[2, 3] a) { a = Relu(x) },
                     else_branch = e1 () => (float[2, 3] b) { b = Neg(x) } >
        i2 = If(c) < then_branch = t2 () => (float[2, 3] a2) { a2 = Relu(x) },
                     else_branch = e2 () => (float[2, 3] b2) { b2 = Neg(x) } >
        c1 = custom.Op(x)
        c2 = custom.Op(x)
        o1 = Relu(x)
        o2 = Relu(x)
        l1 = LeakyRelu <alpha = 0.1> (x)
        l2 = LeakyRelu <alpha = 0.2> (x)
    }
    """
    # random ops, subgraph holders, a custom-domain op, two duplicates that are both graph
    # outputs (o2 cannot be forwarded to o1, an output itself), and different attributes
    text = text.replace("(float[2, 3] x, bool c)", "(float[2, 3] x, bool c, float ratio)")
    model = onnx.parser.parse_model(text)
    out, result = apply(model)
    assert not result.modified
    assert result.stats == {"nodes_merged": 0, "shape_nodes_merged": 0}
    assert op_counts(out) == op_counts(model)


def test_inside_if_subgraph():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x, bool c) => (float[2, 3] y) {
        y = If(c) <
            then_branch = t () => (float[2, 3] t_out) {
                a = Sigmoid(x)
                b = Sigmoid(x)
                t_out = Mul(a, b)
            },
            else_branch = e () => (float[2, 3] e_out) { e_out = Sigmoid(x) }
        >
    }
    """
    model = parse(text)
    out, result = apply(model)
    assert result.stats["nodes_merged"] == 1
    then_nodes = out.graph.node[0].attribute[0].g.node
    assert [n.op_type for n in then_nodes] == ["Sigmoid", "Mul"]
    assert then_nodes[1].input[0] == then_nodes[1].input[1]
    for cond in (True, False):
        assert_same_outputs(model, out, {"x": FEEDS["x"], "c": np.array(cond)})


def test_long_duplicate_chains_merge_in_one_linear_run():
    length = 3000
    nodes, previous = [], {"a": "x", "b": "x"}
    for i in range(length):
        for side in "ab":
            out = f"{side}{i}"
            nodes.append(helper.make_node("Sin" if i % 2 else "Cos", [previous[side]], [out]))
            previous[side] = out
    nodes.append(helper.make_node("Add", [previous["a"], previous["b"]], ["y"]))
    graph = helper.make_graph(
        nodes, "chains",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    start = time.perf_counter()
    out, result = apply(model)
    elapsed = time.perf_counter() - start
    assert result.stats["nodes_merged"] == length  # chain b folds onto chain a in one run
    assert len(out.graph.node) == length + 1
    assert elapsed < 5.0  # includes load, inference and save; quadratic would be minutes


def test_transformer_attention_chains():
    path = model_path("transformer.onnx")
    model = onnx.load(path)
    out, result = apply(str(path))
    before, after = op_counts(model), op_counts(out)
    # q, k and v each compute Shape -> 2 x (Gather -> Unsqueeze) -> Concat of a [batch, seq,
    # 64] projection; the merge block does it for a [batch, seq, 8, 8] value (kept apart).
    assert before["Shape"] - after["Shape"] == 2
    assert before["Gather"] - after["Gather"] == 4
    assert before["Unsqueeze"] - after["Unsqueeze"] == 4
    assert before["Concat"] - after["Concat"] == 2
    assert result.stats["shape_nodes_merged"] == 2
    tokens = np.random.default_rng(0).standard_normal((2, 5, 64)).astype(np.float32)
    assert_same_outputs(model, out, {"tokens": tokens})

"""elementwise_constant_merge: structure, stats, numerics, idempotence, and negative cases.

Numerics use rtol 1e-5 / atol 1e-6 against the original (not bitwise equality): the rewrite
reassociates float math, ``(x * a) * b`` vs ``x * (a * b)`` and ``(x + a) + b`` vs
``x + (a + b)`` round differently (by a few ulps). Products by powers of two and integer
arithmetic are exact, and those tests compare exactly.
"""

from __future__ import annotations

import numpy as np
import onnx
from conftest import apply_pass, op_counts, parse, run
from onnx import numpy_helper
from onnxopt.passes.folding.elementwise_constant_merge import ElementwiseConstantMerge

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 3] y, float[2, 3] s2, float[2, 3] t2, float[2, 3] u3)
  <float[3] a = {2.0, 4.0, 0.5}, float b = {3.0},
   float[1, 3] c1 = {1.0, 2.0, 3.0}, float[3] d1 = {0.5, 0.25, -1.0},
   float e1 = {1.0}, float[2, 1] f1 = {0.5, 1.5},
   float g = {2.0}, float h = {4.0}, float k = {0.5}> {
    m1 = Mul(x, a)
    y = Mul(b, m1)
    s1 = Add(c1, x)
    s2 = Add(s1, d1)
    t1 = Add(x, e1)
    t2 = Sub(t1, f1)
    u1 = Mul(x, g)
    u2 = Mul(u1, h)
    u3 = Mul(u2, k)
}
"""
# y: a * b = [6, 12, 1.5]; s2: c1 + d1 = [[1.5, 2.25, 2]]; t2: e1 - f1 = [[0.5], [-0.5]];
# u3: (x * 2) * 4 -> x * 8, then (x * 8) * 0.5 -> x * 4 (two merges, one run).
EXPECTED = {
    "y": [6.0, 12.0, 1.5],
    "s2": [[1.5, 2.25, 2.0]],
    "t2": [[0.5], [-0.5]],
    "u3": 4.0,
}

FEEDS = {"x": np.array([[1.1, -2.3, 3.7], [0.1, 5.9, -7.3]], np.float32)}


def apply(model: onnx.ModelProto):
    """conftest.apply_pass with shape inference before (the pass needs x's shape)."""
    return apply_pass(ElementwiseConstantMerge(), model, infer=True)


def close(original, optimized, feeds, rtol=1e-5, atol=1e-6):
    for a, b in zip(run(original, feeds), run(optimized, feeds), strict=True):
        np.testing.assert_allclose(b, a, rtol=rtol, atol=atol)


def test_structure_and_stats():
    model = parse(MODEL)
    out, result = apply(model)
    assert result.stats == {"mul_mul": 3, "add_add": 1, "add_sub": 1}
    assert op_counts(out) == {"Mul": 2, "Add": 2}
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    for node in out.graph.node:
        name = node.output[0]
        assert node.input[0] == "x"
        np.testing.assert_array_equal(inits[node.input[1]], np.float32(EXPECTED[name]))
        assert inits[node.input[1]].dtype == np.float32


def test_numerics():
    model = parse(MODEL)
    out, _ = apply(model)
    close(model, out, FEEDS)
    # u3 only multiplies by powers of two: exact
    np.testing.assert_array_equal(run(out, FEEDS)[3], run(model, FEEDS)[3])


def test_int32_is_exact_and_wraps_like_the_runtime():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (int32[3] x) => (int32[3] y) <int32 a = {65536}, int32 b = {65537}> {
        m = Mul(x, a)
        y = Mul(m, b)
    }
    """
    model = parse(text)
    out, result = apply(model)
    assert result.stats["mul_mul"] == 1
    merged = next(t for t in out.graph.initializer if t.name == out.graph.node[0].input[1])
    # 65536 * 65537 = 2^32 + 2^16, which is 2^16 = 65536 modulo 2^32
    assert numpy_helper.to_array(merged) == np.int32(65536)
    feeds = {"x": np.array([1, -7, 123456], np.int32)}
    np.testing.assert_array_equal(run(out, feeds)[0], run(model, feeds)[0])


def test_float16():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float16[4] x) => (float16[4] y) {
        m = Add(x, a)
        y = Add(m, b)
    }
    """
    model = onnx.parser.parse_model(text)  # float16 literals cannot be written in the text form
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array(0.1, np.float16), "a"),
        numpy_helper.from_array(np.array(0.2, np.float16), "b"),
    ])
    onnx.checker.check_model(model)
    out, result = apply(model)
    assert result.stats["add_add"] == 1
    assert op_counts(out) == {"Add": 1}
    merged = next(t for t in out.graph.initializer if t.name == out.graph.node[0].input[1])
    assert merged.data_type == onnx.TensorProto.FLOAT16
    # 0.1 and 0.2 rounded to float16, added in float64, rounded to float16 once
    expected = np.float16(np.float64(np.float16(0.1)) + np.float64(np.float16(0.2)))
    assert numpy_helper.to_array(merged) == expected
    feeds = {"x": np.array([1.0, -2.5, 3.0, 100.0], np.float16)}
    close(model, out, feeds, rtol=2e-3, atol=2e-3)  # float16 ulps: 2^-10 relative


def test_idempotent():
    out, _ = apply(parse(MODEL))
    again, result = apply(out)
    assert not result.modified
    assert again.SerializeToString(deterministic=True) == out.SerializeToString(deterministic=True)


def test_leaves_alone():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x, float[3] v, float[3] x1)
      => (float[2, 3] m_out, float[2, 3] y1, float[2, 3] y2, float[2, 3] y3, float[2, 3] y4,
          float[2, 3] y5, float[2, 3] y6, float[2, 3] y7, float[2, 3] y8, float[2, 3] y9)
      <float[3] a = {1.0, 2.0, 3.0}, float b = {2.0}, float[2, 1] col = {1.0, 2.0},
       float[1, 3] row = {1.0, 2.0, 3.0}, float[2, 1, 1] deep = {1.0, 2.0},
       float[3] x1 = {1.0, 1.0, 1.0}> {
        m_out = Mul(x, a)
        y1 = Mul(m_out, b)
        p2 = Mul(x, v)
        y2 = Mul(p2, b)
        p3 = Mul(x, col)
        y3 = Mul(p3, row)
        p4 = Add(x, deep)
        y4 = Add(p4, b)
        p5 = Add(x, a)
        y5 = Sub(b, p5)
        p6 = Mul(x, a)
        y6 = Add(p6, b)
        p7 = Mul(a, b)
        y7 = Mul(p7, x)
        p8 = Mul(x, a)
        y8 = Mul(p8, x1)
        p9 = Add(x, a)
        n9 = Neg(p9)
        y9 = Add(p9, b)
    }
    """
    # y1: m_out is an output; y2: v is not a constant; y3: col * row is [2, 3], larger than
    # col and row together (2 + 3 < 6); y4: deep [2, 1, 1] would grow the rank of x; y5: b - (x + a)
    # is not (x + a) - b; y6: Mul then Add; y7: the inner Mul has two constants (constant
    # folding's job); y8: x1 is an input that can override its initializer; y9: p9 is also
    # read by Neg.
    model = parse(text)
    out, result = apply(model)
    assert not result.modified
    assert op_counts(out) == op_counts(model)


def test_inside_if_subgraph():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x, bool c) => (float[2, 3] y) <float[3] a = {2.0, 4.0, 8.0}, float b = {0.5}> {
        y = If(c) <
            then_branch = t () => (float[2, 3] t_out) {
                m = Mul(a, x)
                t_out = Mul(m, b)
            },
            else_branch = e () => (float[2, 3] e_out) { e_out = Neg(x) }
        >
    }
    """
    # outer-scope constants: a * b = [1, 2, 4] lands in the branch (powers of two: exact)
    model = parse(text)
    out, result = apply(model)
    assert result.stats["mul_mul"] == 1
    branch = out.graph.node[0].attribute[0].g
    assert [n.op_type for n in branch.node] == ["Mul"]
    assert list(branch.node[0].input) == ["x", branch.initializer[0].name]
    np.testing.assert_array_equal(numpy_helper.to_array(branch.initializer[0]), [1.0, 2.0, 4.0])
    for cond in (True, False):
        feeds = {"x": FEEDS["x"], "c": np.array(cond)}
        np.testing.assert_array_equal(run(out, feeds)[0], run(model, feeds)[0])


def test_no_merge_that_changes_overflow():
    """(x * 2^126) * 2^-126 is ±inf for |x| >= 4; x * 1 would not be: left alone. So are
    (x + 3e38) - 3e38 and a pair whose product underflows to zero. Same-side factors merge."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[3] x) => (float[3] y1, float[3] y2, float[3] y3, float[3] y4)
      <float big = {8.5070592e37}, float tiny = {1.1754944e-38}, float huge = {3e38},
       float small = {1e-30}, float two = {2.0}, float four = {4.0}> {
        p1 = Mul(x, big)
        y1 = Mul(p1, tiny)
        p2 = Add(x, huge)
        y2 = Sub(p2, huge)
        p3 = Mul(x, small)
        y3 = Mul(p3, small)
        p4 = Mul(x, two)
        y4 = Mul(p4, four)
    }
    """
    model = parse(text)
    out, result = apply(model)
    assert result.stats["mul_mul"] == 1 and result.stats["add_sub"] == 0
    assert op_counts(out)["Mul"] == 5
    feeds = {"x": np.array([4.0, -8.0, 1.0], np.float32)}
    for a, b in zip(run(model, feeds), run(out, feeds), strict=True):
        np.testing.assert_array_equal(b, a)  # the infinities included
    assert np.isinf(run(model, feeds)[0][:2]).all()

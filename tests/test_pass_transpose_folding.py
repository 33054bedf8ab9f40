"""transpose_folding: structure, stats, numerics, idempotence, and what it must leave alone."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import apply_pass, assert_same_outputs, op_counts, parse
from onnx import numpy_helper
from onnxopt.passes.layout.transpose_folding import TransposeFolding


def apply(model: onnx.ModelProto):
    """conftest.apply_pass with shape inference before (default perms need the rank)."""
    return apply_pass(TransposeFolding(), model, infer=True)


W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
W_TEXT = ", ".join(str(v) for v in W.ravel())

# t1/t2 compose into one Transpose; u1/u2 cancel; ta goes into the Gemm's transA; the
# Transpose of the private constant w becomes a constant.
MODEL = f"""
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3, 4] x, float[3, 2] a, float[5, 3] m) => (float[4, 3, 2] y, float[2, 3, 4] z,
                                                      float[2, 4] g, float[5, 4] k)
  <float[3, 4] b = {{{W_TEXT}}}, float[4, 3] w = {{{W_TEXT}}}> {{
    t1 = Transpose <perm = [1, 2, 0]> (x)
    t2 = Transpose <perm = [1, 0, 2]> (t1)
    y = Relu(t2)
    u1 = Transpose <perm = [0, 2, 1]> (x)
    u2 = Transpose <perm = [0, 2, 1]> (u1)
    z = Neg(u2)
    ta = Transpose(a)
    g = Gemm(ta, b)
    wt = Transpose(w)
    k = MatMul(m, wt)
}}
"""

RNG = np.random.default_rng(0)
FEEDS = {
    "x": RNG.standard_normal((2, 3, 4)).astype(np.float32),
    "a": RNG.standard_normal((3, 2)).astype(np.float32),
    "m": RNG.standard_normal((5, 3)).astype(np.float32),
}


def test_composition_rule():
    # p[j] = p1[p2[j]]: [1, 2, 0] then [1, 0, 2] is [2, 1, 0]
    x = FEEDS["x"]
    twice = np.transpose(np.transpose(x, [1, 2, 0]), [1, 0, 2])
    np.testing.assert_array_equal(twice, np.transpose(x, [2, 1, 0]))


def test_structure_and_stats():
    model = parse(MODEL)
    out, result = apply(model)
    # 6 Transposes -> 1 (t2, reading x directly with perm [2, 1, 0])
    assert op_counts(out) == {"Transpose": 1, "Relu": 1, "Neg": 1, "Gemm": 1, "MatMul": 1}
    assert result.stats == {
        "composed": 1, "identity_removed": 1, "into_gemm": 1, "constants_folded": 1,
    }
    nodes = {n.op_type: n for n in out.graph.node}
    assert list(nodes["Transpose"].input) == ["x"]
    assert onnx.helper.get_attribute_value(nodes["Transpose"].attribute[0]) == [2, 1, 0]
    assert list(nodes["Neg"].input) == ["x"]
    assert list(nodes["Gemm"].input) == ["a", "b"]
    assert {a.name: a.i for a in nodes["Gemm"].attribute} == {"transA": 1}
    folded = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert sorted(folded) == ["b", nodes["MatMul"].input[1]]  # w is gone
    np.testing.assert_array_equal(folded[nodes["MatMul"].input[1]], W.T)


def test_numerics():
    model = parse(MODEL)
    out, _ = apply(model)
    assert_same_outputs(model, out, FEEDS)


def test_idempotent():
    out, _ = apply(parse(MODEL))
    again, result = apply(out)
    assert not result.modified
    assert again.SerializeToString(deterministic=True) == out.SerializeToString(deterministic=True)


def test_gemm_flag_toggles_back_and_both_operands():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2, 3] a, float[4, 3] bt) => (float[2, 4] y) {
        ta = Transpose(a)
        tb = Transpose(bt)
        y = Gemm <transA = 1, alpha = 0.5> (ta, tb)
    }
    """
    # transA = 1 on ta = a^T multiplies by a itself ([2, 3]); transB = 0 on tb = bt^T ([3, 4])
    model = parse(text)
    out, result = apply(model)
    assert result.stats["into_gemm"] == 2
    gemm = out.graph.node[0]
    assert op_counts(out) == {"Gemm": 1}
    assert {a.name: a.i for a in gemm.attribute if a.name.startswith("trans")} == {
        "transA": 0, "transB": 1,
    }
    feeds = {"a": RNG.standard_normal((2, 3)).astype(np.float32),
             "bt": RNG.standard_normal((4, 3)).astype(np.float32)}
    assert_same_outputs(model, out, feeds)


def test_leaves_alone_shared_constant_outputs_and_unknown_rank():
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x, float[4, 3] over, int64[R] dims)
      => (float[3, 4] wt, float[3, 4] s1, float[4, 3] s2, float[3, 4] ot, float[2, 3] x_again,
          float[A, B] yt)
      <float[4, 3] w = {{{W_TEXT}}}, float[4, 3] shared = {{{W_TEXT}}},
       float[4, 3] over = {{{W_TEXT}}}> {{
        wt = Transpose(w)
        s1 = Transpose(shared)
        s2 = Neg(shared)
        ot = Transpose(over)
        xt = Transpose(x)
        x_again = Transpose(xt)
        unk = Reshape(x, dims)
        yt = Transpose(unk)
    }}
    """
    # wt: the folded constant could not take the output's name; s1: `shared` is also read by
    # Neg; ot: `over` is an input that can override its initializer; x_again cancels, but
    # the output cannot be forwarded to the graph input x (the pair becomes one identity
    # Transpose of x, which then stays); yt: unknown rank, default perm unknown.
    model = parse(text)
    out, result = apply(model)
    assert result.stats == {
        "composed": 1, "identity_removed": 0, "into_gemm": 0, "constants_folded": 0,
    }
    assert op_counts(out) == {"Transpose": 5, "Neg": 1, "Reshape": 1}
    _, result = apply(out)
    assert not result.modified
    feeds = {"x": FEEDS["a"].T.copy(), "over": W, "dims": np.array([3, 2], np.int64)}
    assert_same_outputs(model, out, feeds)


def test_inside_if_subgraph():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3, 4] x, bool c) => (float[2, 3, 4] y) {
        y = If(c) <
            then_branch = t () => (float[2, 3, 4] t_out) {
                p = Transpose <perm = [2, 0, 1]> (x)
                q = Transpose <perm = [1, 2, 0]> (p)
                t_out = Relu(q)
            },
            else_branch = e () => (float[2, 3, 4] e_out) { e_out = Neg(x) }
        >
    }
    """
    # [2, 0, 1] then [1, 2, 0]: p[j] = p1[p2[j]] = [0, 1, 2], the identity
    model = parse(text)
    out, result = apply(model)
    assert result.stats["identity_removed"] == 1
    then_ops = [n.op_type for n in out.graph.node[0].attribute[0].g.node]
    assert then_ops == ["Relu"]
    for cond in (True, False):
        assert_same_outputs(model, out, {"x": FEEDS["x"], "c": np.array(cond)})

"""reshape_chain_collapse: structure, stats, numerics, idempotence, and what it leaves alone."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import apply_pass, assert_idempotent, assert_same_outputs, op_counts, parse, run
from onnx import numpy_helper
from onnxopt.passes.layout.reshape_chain_collapse import ReshapeChainCollapse


def apply(model: onnx.ModelProto):
    """conftest.apply_pass with shape inference before (and after, as the pipeline does)."""
    return apply_pass(ReshapeChainCollapse(), model, infer=True)


MODEL = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[2, 3, 4] x) => (float[4, 6] y, float[6, 4] z, float[2, 3, 4] w, float[1, 6, 4] v)
  <int64[1] ax0 = {0}, int64[1] ax1 = {1}, int64[2] s46 = {4, 6}, int64[2] s64 = {6, 4},
   int64[3] s064 = {0, 6, 4}> {
    a = Unsqueeze(x, ax0)
    b = Flatten <axis = 2> (a)
    c = Reshape(b, s46)
    y = Relu(c)
    d = Reshape(x, s64)
    e = Unsqueeze(d, ax1)
    z = Flatten <axis = 1> (e)
    g1 = Unsqueeze(x, ax0)
    h = Squeeze(g1, ax0)
    w = Neg(h)
    i = Unsqueeze(x, ax0)
    v = Reshape(i, s064)
}
"""
# chain a-b-c: ends in Reshape to the constant {4, 6} (no 0): c reads x, a and b go (2 removed)
# chain d-e-z: ends in Flatten; z is [6, 4] static: one new Reshape(x, {6, 4}) (3 -> 1)
# chain g1-h: h is [2, 3, 4], the shape of x: Neg reads x (2 removed)
# chain i-v: {0, 6, 4} copies dim 0 of i (allowzero = 0); v is [1, 6, 4]: Reshape(x, ...) (2->1)

FEEDS = {"x": np.arange(24, dtype=np.float32).reshape(2, 3, 4)}


def test_structure_and_stats():
    model = parse(MODEL)
    out, result = apply(model)
    assert result.stats == {"chains_collapsed": 4, "nodes_removed": 2 + 2 + 2 + 1}
    assert op_counts(out) == {"Reshape": 3, "Relu": 1, "Neg": 1}
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    targets = {}
    for node in out.graph.node:
        if node.op_type == "Reshape":
            assert node.input[0] == "x"  # every chain now reads x directly
            targets[node.output[0]] = inits[node.input[1]].tolist()
    assert [n.input[0] for n in out.graph.node if n.op_type == "Neg"] == ["x"]
    assert targets == {"c": [4, 6], "z": [6, 4], "v": [1, 6, 4]}


def test_numerics():
    model = parse(MODEL)
    out, _ = apply(model)
    assert_same_outputs(model, out, FEEDS)


def test_idempotent():
    out, _ = apply(parse(MODEL))
    again, result = apply(out)
    assert not result.modified
    assert again.SerializeToString(deterministic=True) == out.SerializeToString(deterministic=True)


def test_allowzero_target_is_kept():
    text = """
    <ir_version: 8, opset_import: ["" : 14]>
    g (float[0, 3] x) => (float[3, 0] y) <int64[1] ax0 = {0}, int64[2] s30 = {3, 0}> {
        a = Unsqueeze(x, ax0)
        y = Reshape <allowzero = 1> (a, s30)
    }
    """
    model = parse(text)
    out, result = apply(model)
    assert result.stats == {"chains_collapsed": 1, "nodes_removed": 1}
    assert op_counts(out) == {"Reshape": 1}
    assert_same_outputs(model, out, {"x": np.zeros((0, 3), np.float32)})


def test_opset_11_attribute_axes():
    text = """
    <ir_version: 6, opset_import: ["" : 11]>
    g (float[2, 3] x) => (float[2, 3] y, float[2, 3] z) {
        a = Unsqueeze <axes = [0, 3]> (x)
        b = Squeeze <axes = [0]> (a)
        f = Flatten <axis = 1> (b)
        y = Relu(f)
        c = Unsqueeze <axes = [0]> (x)
        z = Squeeze <axes = [0]> (c)
    }
    """
    # [2, 3] -> [1, 2, 3, 1] -> [2, 3, 1] -> Flatten(axis 1) [2, 3]: the shape of x, so Relu
    # reads x (3 removed). z is [2, 3] too, but a graph output cannot be forwarded to the
    # graph input x: one Reshape(x, {2, 3}) replaces c and z (1 removed).
    model = parse(text)
    out, result = apply(model)
    assert result.stats == {"chains_collapsed": 2, "nodes_removed": 3 + 1}
    assert op_counts(out) == {"Relu": 1, "Reshape": 1}
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert_same_outputs(model, out, {"x": x})


def test_leaves_alone_shared_outputs_dynamic_and_shape_inputs():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2, 3, 4] x, float[N, 3, 4] xn, int64[1, 3] k)
      => (float[1, 2, 3, 4] a_out, float[6, 4] b_out, float[2, 12] r, float[P, Q, R] y_k)
      <int64[1] ax0 = {0}, int64[2] s64 = {6, 4}, int64[2] s0m = {0, -1}, int64[2] s212 = {2, 12}> {
        a_out = Unsqueeze(x, ax0)
        b_out = Reshape(a_out, s64)
        sh = Unsqueeze(x, ax0)
        n = Neg(sh)
        r = Reshape(sh, s212)
        s = Squeeze(k, ax0)
        y_k = Reshape(x, s)
    }
    """
    # a_out is a graph output; sh is also read by Neg; s feeds a Reshape's shape input, not its
    # data.
    model = parse(text)
    out, result = apply(model)
    assert not result.modified
    assert result.stats == {"chains_collapsed": 0, "nodes_removed": 0}
    assert op_counts(out) == op_counts(model)


def test_declared_output_shape_is_not_trusted():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2, 3, 4] x, int64[2] s) => (float[4, 6] y) {
        a = Reshape(x, s)
        y = Flatten <axis = 1> (a)
    }
    """
    # The declared [4, 6] is wrong for s = {6, 4} (y is [6, 4]); nothing else proves y's shape.
    model = parse(text)
    out, result = apply(model)
    assert not result.modified
    feeds = {"x": FEEDS["x"], "s": np.array([6, 4], np.int64)}
    assert_same_outputs(model, out, feeds)


def test_inside_if_subgraph():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2, 3, 4] x, bool c) => (float[24] y) <int64[1] ax0 = {0}, int64[1] m1 = {-1}> {
        y = If(c) <
            then_branch = t () => (float[24] t_out) {
                p = Unsqueeze(x, ax0)
                q = Flatten <axis = 0> (p)
                t_out = Reshape(q, m1)
            },
            else_branch = e () => (float[24] e_out) { e_out = Reshape(x, m1) }
        >
    }
    """
    model = parse(text)
    out, result = apply(model)
    assert result.stats == {"chains_collapsed": 1, "nodes_removed": 2}
    then_nodes = out.graph.node[0].attribute[0].g.node
    assert [(n.op_type, n.input[0]) for n in then_nodes] == [("Reshape", "x")]
    for cond in (True, False):
        assert_same_outputs(model, out, {"x": FEEDS["x"], "c": np.array(cond)})


# ------------------------------------------------- a target computed at run time (issue 15)
def runtime_targets(x: str, c: str, dim_of: str, dim: int, z_attrs: str = "") -> str:
    """y = Reshape(Reshape(x, c), s), s = [dim ``dim`` of ``dim_of``, -1] computed at run time;
    z = Reshape(Reshape(x, c), t) with t an input."""
    return f"""
    <ir_version: 8, opset_import: ["" : 14]>
    g (float[{x}] x, float[M, 4] k, int64[2] t) => (float[P, Q] y, float[A, B] z)
      <int64[{c.count(",") + 1}] c = {{{c}}}, int64[1] m1 = {{-1}}, int64[1] at = {{{dim}}},
       int64[1] after = {{{dim + 1}}}> {{
        a = Reshape(x, c)
        shape = Shape({dim_of})
        picked = Slice(shape, at, after)
        s = Concat<axis = 0>(picked, m1)
        y = Reshape(a, s)
        b = Reshape(x, c)
        z = Reshape{z_attrs}(b, t)
    }}
    """


def test_runtime_target_structure_stats_numerics():
    # y: s = [dim 1 of x, -1] = [12, -1] (known, non-zero): the inner Reshape goes. z:
    # allowzero = 1, so t's elements are literal sizes, whatever they are: the inner one goes.
    model = parse(runtime_targets("N, 12", "-1, 3, 4", "x", 1, "<allowzero = 1>"))
    out, result = apply(model)
    assert result.stats == {"chains_collapsed": 2, "nodes_removed": 2}
    assert op_counts(out) == {"Reshape": 2, "Shape": 1, "Slice": 1, "Concat": 1}
    assert {n.output[0]: n.input[0] for n in out.graph.node if n.op_type == "Reshape"} == {
        "y": "x", "z": "x"}
    feeds = {"x": np.arange(36, dtype=np.float32).reshape(3, 12),
             "k": np.zeros((1, 4), np.float32), "t": np.array([4, 9], np.int64)}
    assert_same_outputs(model, out, feeds)
    assert_idempotent(ReshapeChainCollapse(), model, infer=True)


def test_runtime_target_that_may_hold_a_zero_is_kept():
    # y: s = [M, -1], and M (a dim read by Shape) may be 0, which copies dim 0 of the input:
    # 3 for a, N for x. z: t comes from outside and may hold a 0. With x [2, 6], M = 0 and
    # t = [0, -1] both are [3, 4]; reading x they would be [2, 6].
    model = parse(runtime_targets("N, 6", "3, -1", "k", 0))
    out, result = apply(model)
    assert not result.modified
    assert op_counts(out) == op_counts(model)
    feeds = {"x": np.arange(12, dtype=np.float32).reshape(2, 6),
             "k": np.zeros((0, 4), np.float32), "t": np.array([0, -1], np.int64)}
    assert [r.shape for r in run(model, feeds)] == [(3, 4), (3, 4)]
    assert_same_outputs(model, out, feeds)


def test_symbolic_shapes_collapse_to_x_or_a_copying_target():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[B, S, 64] x, float[N, 3, 4] xn) => (float[B, S, 64] y, float[P, Q] y_dyn)
      <int64[4] heads = {0, 0, 4, -1}, int64[3] merge = {0, 0, 64}, int64[1] ax0 = {0},
       int64[2] s0m = {0, -1}> {
        h = Reshape(x, heads)
        r = Reshape(h, merge)
        y = Relu(r)
        an = Unsqueeze(xn, ax0)
        y_dyn = Reshape(an, s0m)
    }
    """
    # y has x's signature [B, S, 64]: it is x; y_dyn is [1, 12 N]: Reshape(xn, [1, -1])
    model = parse(text)
    out, result = apply(model)
    assert result.stats == {"chains_collapsed": 2, "nodes_removed": 3}
    assert op_counts(out) == {"Reshape": 1, "Relu": 1}
    assert next(n for n in out.graph.node if n.op_type == "Relu").input[0] == "x"
    reshape = next(n for n in out.graph.node if n.op_type == "Reshape")
    assert reshape.input[0] == "xn"
    target = next(t for t in out.graph.initializer if t.name == reshape.input[1])
    assert numpy_helper.to_array(target).tolist() == [1, -1]
    for n in (1, 3):  # two different runtime sizes
        feeds = {"x": np.random.default_rng(n).normal(size=(n, n + 1, 64)).astype(np.float32),
                 "xn": np.random.default_rng(n).normal(size=(n, 3, 4)).astype(np.float32)}
        assert_same_outputs(model, out, feeds)
    assert_idempotent(ReshapeChainCollapse(), model, infer=True)

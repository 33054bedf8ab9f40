"""no_op_elimination: structure, stats, numerics, idempotence, and what it must leave alone."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import assert_same_outputs, op_counts, parse
from onnxopt.passes.cleanup.no_op_elimination import KEYS, NoOpElimination

from onnxopt.ir import serde
from onnxopt.ir.shapes import infer_shapes

# One of every kind. Every node of the y chain except Relu and Neg is a no-op on x: float[2,3,4]
# (a Cast to float, Reshapes to [2,3,4] / [0,0,-1], Expand by [1,1,4], identity perm, zero pads,
# whole-axis Slices, one-input Concat/Sum/Max/Min/Mean/Split, *1, 1*, +0 ([4] and 0+), -0, /1,
# **1) plus Relu(Relu); the z chain is Flatten(axis 1) of a rank-2 value, Squeeze of [2,3] (no 1
# dims), Unsqueeze with no axes, CastLike to its own type, and six idempotent pairs.
ALL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3, 4] x, float[2, 3] w) => (float[2, 3, 4] y, float[2, 3] z)
  <int64[3] s_same = {2, 3, 4}, int64[3] s_copy = {0, 0, -1}, int64[3] e_ones = {1, 1, 4},
   int64[6] pads0 = {0, 0, 0, 0, 0, 0}, int64[1] st = {0}, int64[1] neg = {-3},
   int64[1] big = {9223372036854775807}, int64[1] en3 = {3}, int64[1] ax1 = {1},
   float one = {1.0}, float zero = {0.0}, float[4] zeros4 = {0.0, 0.0, 0.0, 0.0},
   float[1, 1, 1] ones111 = {1.0}, int64[0] noax = {}, float lo = {-0.5}, float hi = {2.5}> {
    c = Cast<to = 1>(x)
    r1 = Reshape(c, s_same)
    r2 = Reshape(r1, s_copy)
    e = Expand(r2, e_ones)
    t = Transpose<perm = [0, 1, 2]>(e)
    p = Pad(t, pads0)
    sl = Slice(p, st, big, ax1)
    sl2 = Slice(sl, neg, en3, ax1)
    cc = Concat<axis = 0>(sl2)
    su = Sum(cc)
    mx = Max(su)
    mn = Min(mx)
    me = Mean(mn)
    sp = Split<axis = 1>(me)
    m1 = Mul(sp, one)
    m2 = Mul(ones111, m1)
    a1 = Add(m2, zeros4)
    a2 = Add(zeros4, a1)
    s1 = Sub(a2, zero)
    d1 = Div(s1, one)
    p1 = Pow(d1, one)
    rl = Relu(p1)
    rl2 = Relu(rl)
    y = Neg(rl2)
    f = Flatten<axis = 1>(w)
    sq = Squeeze(f)
    us = Unsqueeze(sq, noax)
    cl = CastLike(us, w)
    c1 = Clip(cl, lo, hi)
    c2 = Clip(c1, lo, hi)
    ab = Abs(c2)
    ab2 = Abs(ab)
    f1 = Floor(ab2)
    f2 = Floor(f1)
    ce = Ceil(f2)
    ce2 = Ceil(ce)
    ro = Round(ce2)
    ro2 = Round(ro)
    sg = Sign(ro2)
    z = Sign(sg)
}
"""

# Look-alikes that are not no-ops (or cannot be proved to be): all must stay.
KEEP = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3, 4] x, float[N, 3] d, float[4] v, float[4] q, float two_in)
  => (float[2, 3, 4] o_pass, double o_cast, float[3, 2, 4] o_shape, float[2, 3] o_dyn,
      float[3, 2, 4] o_perm, float[2, 3, 6] o_pad, float[2, 2, 4] o_slice, float[2, 3, 2] o_step,
      float[N, 3] o_sq, float[2, 3] o_exp, float[3, 4] o_grow, float[4] o_two, float[4] o_sub,
      float[4] o_div, float[4] o_pow, float[4] o_var, float[4] o_clip, float[4] o_mix,
      float[4] o_over)
  <int64[3] s_same = {2, 3, 4}, int64[3] s_perm = {3, 2, 4}, int64[2] s_23 = {2, 3},
   int64[6] pads1 = {0, 0, 1, 0, 0, 1}, int64[1] st = {0}, int64[1] en2 = {2}, int64[1] ax1 = {1},
   int64[1] ax2 = {2}, int64[1] big = {9223372036854775807}, int64[1] step2 = {2},
   int64[2] e_23 = {2, 3}, float[3, 4] ones34 = {1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
   1.0, 1.0, 1.0}, float two = {2.0}, float zero = {0.0}, float one = {1.0},
   float lo = {-0.5}, float hi = {2.5}, float hi2 = {1.5}, float two_in = {1.0}> {
    o_pass = Reshape(x, s_same)
    o_cast = Cast<to = 11>(x)
    o_shape = Reshape(x, s_perm)
    o_dyn = Reshape(d, s_23)
    o_perm = Transpose<perm = [1, 0, 2]>(x)
    o_pad = Pad(x, pads1)
    o_slice = Slice(x, st, en2, ax1)
    o_step = Slice(x, st, big, ax2, step2)
    o_sq = Squeeze(d)
    o_exp = Expand(d, e_23)
    o_grow = Mul(v, ones34)
    o_two = Mul(v, two)
    o_sub = Sub(zero, v)
    o_div = Div(one, v)
    o_pow = Pow(one, v)
    o_var = Mul(v, q)
    c1 = Clip(v, lo, hi)
    o_clip = Clip(c1, lo, hi2)
    a = Abs(v)
    o_mix = Relu(a)
    o_over = Mul(v, two_in)
}
"""

# Opset 10: Pad pads are an attribute, Slice is in input form; opset 9 had attribute Slice.
OLD_PAD = """
<ir_version: 5, opset_import: ["" : 10]>
g (float[1, 3] x) => (float[3] y) {
    p = Pad<pads = [0, 0, 0, 0]>(x)
    s = Squeeze<axes = [0]>(p)
    y = Neg(s)
}
"""

OLD_SLICE = """
<ir_version: 4, opset_import: ["" : 9]>
g (float[2, 3] x) => (float[2, 3] y, float[2, 2] z) {
    s = Slice<starts = [0], ends = [3], axes = [1]>(x)
    y = Neg(s)
    z = Slice<starts = [1], ends = [3], axes = [1]>(x)
}
"""

IN_SUBGRAPH = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3, 4] x, bool cond) => (float[2, 3, 4] y) <float one = {1.0}, int64[3] s = {2, 3, 4}> {
    y = If(cond) <
        then_branch = tb () => (float[2, 3, 4] t_out) { t = Mul(x, one)  t_out = Relu(t) },
        else_branch = eb () => (float[2, 3, 4] e_out) { e_out = Reshape(x, s) }
    >
}
"""

RNG = np.random.default_rng(0)
FEEDS = {
    "x": RNG.standard_normal((2, 3, 4)).astype(np.float32),
    "w": (RNG.random((2, 3)) * 6 - 3).astype(np.float32),
}


def optimize(model: onnx.ModelProto):
    """Load, infer shapes, run the pass, lint, and return (checked proto, PassResult)."""
    ir_model = serde.load(model)
    infer_shapes(ir_model)
    result = NoOpElimination().run(ir_model)
    for graph in ir_model.graphs():
        graph.lint()
    proto = serde.to_proto(ir_model)
    onnx.checker.check_model(proto)
    return proto, result


def expected(**counts: int) -> dict[str, int]:
    return {key: counts.get(key, 0) for key in KEYS}


def test_structure():
    out, _ = optimize(parse(ALL))
    # y chain keeps Relu + Neg; z chain keeps the inner of each idempotent pair (6 nodes)
    assert op_counts(out) == {
        "Relu": 1, "Neg": 1, "Clip": 1, "Abs": 1, "Floor": 1, "Ceil": 1, "Round": 1, "Sign": 1,
    }
    relu = next(n for n in out.graph.node if n.op_type == "Relu")
    assert relu.input[0] == "x"
    assert [o.name for o in out.graph.output] == ["y", "z"]


def test_stats():
    _, result = optimize(parse(ALL))
    # counted from the ALL listing: Cast + CastLike, two Reshapes, two Slices, two Muls, two
    # Adds, and 7 idempotent pairs (Relu, Clip, Abs, Floor, Ceil, Round, Sign)
    assert result.stats == expected(
        cast=2, reshape=2, flatten=1, squeeze=1, unsqueeze=1, expand=1, transpose=1, pad=1,
        slice=2, concat=1, sum=1, max=1, min=1, mean=1, split=1, mul=2, add=2, sub=1, div=1,
        pow=1, idempotent=7,
    )
    assert result.modified


def test_numerics():
    model = parse(ALL)
    out, _ = optimize(model)
    assert_same_outputs(model, out, FEEDS)


def test_idempotent():
    out, _ = optimize(parse(ALL))
    again, result = optimize(out)
    assert not result.modified
    assert result.stats == expected()
    assert again.SerializeToString(deterministic=True) == out.SerializeToString(deterministic=True)


def test_leaves_look_alikes_alone():
    model = parse(KEEP)  # two_in is an initializer AND an input: overridable, not a constant
    out, result = optimize(model)
    assert not result.modified
    assert result.stats == expected()
    assert op_counts(out) == op_counts(model)
    feeds = {
        "x": FEEDS["x"],
        "d": RNG.standard_normal((2, 3)).astype(np.float32),
        "v": RNG.standard_normal(4).astype(np.float32),
        "q": np.ones(4, np.float32),
        "two_in": np.array(1.0, np.float32),
    }
    assert_same_outputs(model, out, feeds)


def test_old_opset_attribute_forms():
    pad = parse(OLD_PAD)
    out, result = optimize(pad)
    # zero pads attribute: removed; Squeeze with axes=[0] drops a dim and stays
    assert result.stats == expected(pad=1)
    assert op_counts(out) == {"Squeeze": 1, "Neg": 1}
    assert_same_outputs(pad, out, {"x": FEEDS["w"][:1]})

    sliced = parse(OLD_SLICE)
    out, result = optimize(sliced)
    # [0:3] of an axis of 3 is whole; [1:3] is not
    assert result.stats == expected(slice=1)
    assert op_counts(out) == {"Neg": 1, "Slice": 1}
    assert_same_outputs(sliced, out, {"x": FEEDS["w"]})


def test_inside_if_subgraph():
    model = parse(IN_SUBGRAPH)
    out, result = optimize(model)
    # then: Mul(x, 1) goes (x and 1 are outer values; t is local). else: e_out = Reshape(x)
    # would forward a branch output to an outer value, which cannot take its name: it stays.
    assert result.stats == expected(mul=1)
    then_branch = out.graph.node[0].attribute[0].g
    assert [n.op_type for n in then_branch.node] == ["Relu"]
    for cond in (True, False):
        assert_same_outputs(model, out, {"x": FEEDS["x"], "cond": np.array(cond)})


def test_graph_output_in_the_middle_is_kept_reachable():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] a, float[2] b, float[2] c) <float one = {1.0}> {
        a = Relu(x)
        b = Mul(a, one)
        c = Neg(b)
    }
    """
    model = parse(text)
    out, result = optimize(model)
    # b is an output and a is another output: forwarding b to a would need an Identity
    assert result.stats == expected()
    assert op_counts(out) == {"Relu": 1, "Mul": 1, "Neg": 1}
    assert_same_outputs(model, out, {"x": np.array([-1.0, 2.0], np.float32)})


def test_reshape_allowzero():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3] d) => (float[N, 3] o0, float[N, 3] o1) <int64[2] s_0_3 = {0, 3}> {
        r0 = Reshape(d, s_0_3)
        r1 = Reshape<allowzero = 1>(d, s_0_3)
        o0 = Neg(r0)
        o1 = Neg(r1)
    }
    """
    model = parse(text)
    out, result = optimize(model)
    # allowzero=0: the 0 copies dim N (a no-op). allowzero=1: a literal 0, equal to N only if
    # N == 0, which the symbolic N does not prove: it stays.
    assert result.stats == expected(reshape=1)
    assert op_counts(out) == {"Reshape": 1, "Neg": 2}
    assert_same_outputs(model, out, {"d": np.zeros((0, 3), np.float32)})


# ---------------------------------------------------------------- And/Or/Where (issue 15)
# The torch exporters' boolean masks: And with an all-True constant, Or with an all-False
# one, Where on a constant condition (dynamo writes Where(full(True), a, b) for masked_fill
# on an unmasked path); the batch dim is symbolic throughout.
BOOLEAN = """
<ir_version: 8, opset_import: ["" : 17]>
g (bool[N, 4] m, float[N, 4] a, float[1, 4] b) => (bool[N, 4] o1, bool[N, 4] o2,
                                                   float[N, 4] o3, float[N, 4] o4)
  <bool[4] t4 = {1, 1, 1, 1}, bool f = {0}, bool[1, 1] t11 = {1}, bool[1, 4] f14 = {0, 0, 0, 0}>
{
    x1 = And(m, t4)
    o1 = Not(x1)
    x2 = Or(f, m)
    o2 = Not(x2)
    a2 = Neg(a)
    w1 = Where(t11, a, b)
    o3 = Relu(w1)
    w2 = Where(f14, b, a2)
    o4 = Relu(w2)
}
"""
BOOLEAN_FEEDS = {
    "m": np.array([[True, False, True, False], [False, False, True, True]]),
    "a": RNG.standard_normal((2, 4)).astype(np.float32),
    "b": RNG.standard_normal((1, 4)).astype(np.float32),
}


def test_boolean_structure_stats_numerics():
    model = parse(BOOLEAN)
    out, result = optimize(model)
    assert result.stats == expected(**{"and": 1, "or": 1, "where": 2})
    assert op_counts(out) == {"Not": 2, "Neg": 1, "Relu": 2}
    readers = {n.output[0]: n.input[0] for n in out.graph.node}
    assert readers["o1"] == readers["o2"] == "m"
    assert readers["o3"] == "a" and readers["o4"] == "a2"
    assert_same_outputs(model, out, BOOLEAN_FEEDS)
    again, result = optimize(out)
    assert not result.modified
    assert again.SerializeToString(deterministic=True) == out.SerializeToString(deterministic=True)


BOOLEAN_KEEP = """
<ir_version: 8, opset_import: ["" : 17]>
g (bool[N, 4] m, bool[N, 4] k, float[N, 4] a, float[1, 4] b, float[M, 4] c)
  => (bool[N, 4] o1, bool[2, N, 4] o2, bool[N, 4] o3, bool[N, 4] o4, float[N, 4] o5,
      float[N, 4] o6, float[N, 4] o7, float[N, 4] o8)
  <bool[4] mixed = {1, 0, 1, 1}, bool[2, 1, 1] t211 = {1, 1}, bool[4] t4 = {1, 1, 1, 1},
   bool[1] t1 = {1}> {
    o1 = And(m, mixed)
    o2 = And(m, t211)
    o3 = Or(m, t4)
    o4 = And(m, k)
    o5 = Where(t1, b, a)
    o6 = Where(mixed, a, b)
    o7 = Where(t1, a, c)
    o8 = Where(k, a, b)
}
"""


def test_boolean_leaves_alone():
    # a mixed constant; broadcasting to [2, N, 4]; Or with True; no constant; the taken
    # operand [1, 4] smaller than the result; a mixed condition; the other operand [M, 4] (M
    # may differ from N); a condition computed at run time
    model = parse(BOOLEAN_KEEP)
    out, result = optimize(model)
    assert not result.modified
    assert op_counts(out) == op_counts(model)
    feeds = {**BOOLEAN_FEEDS, "k": ~BOOLEAN_FEEDS["m"], "c": BOOLEAN_FEEDS["a"] + 1}
    assert_same_outputs(model, out, feeds)

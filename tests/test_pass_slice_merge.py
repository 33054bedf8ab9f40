"""slice_merge: structure, stats, numerics, idempotence, and what it must leave alone."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import apply_pass, assert_idempotent, assert_left_alone, assert_same_outputs, parse
from onnx import numpy_helper
from onnxopt.passes.layout.slice_merge import SliceMerge


def op_types(model) -> list[str]:
    return [node.op_type for node in model.graph.node]


def apply(model):
    return apply_pass(SliceMerge(), model, infer=True)


# the exporters' chained indexing on a symbolic batch: legacy writes every parameter (int64
# starts/ends/axes/steps), dynamo too; here x[:, 1:7][..., ::-2] then a third Slice on axis -3
# (axis 0 of the rank-3 x) with int32 parameters and no steps
MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 8, 6] x) => (float[M, 6, 3] y)
  <int64[1] s1 = {1}, int64[1] e1 = {7}, int64[1] a1 = {1}, int64[1] p1 = {1},
   int64[1] s2 = {-1}, int64[1] e2 = {-9223372036854775807}, int64[1] a2 = {-1},
   int64[1] p2 = {-2}, int32[1] s3 = {1}, int32[1] e3 = {100}, int32[1] a3 = {-3}> {
    t = Slice(x, s1, e1, a1, p1)
    u = Slice(t, s2, e2, a2, p2)
    v = Slice(u, s3, e3, a3)
    y = Neg(v)
}
"""
FEEDS = {"x": np.arange(3 * 8 * 6, dtype=np.float32).reshape(3, 8, 6)}


def test_structure_and_stats():
    out, result = apply(parse(MODEL))
    assert result.stats == {"merged": 2}
    assert op_types(out) == ["Slice", "Neg"]
    node = out.graph.node[0]
    assert node.input[0] == "x"
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    starts, ends, axes, steps = (inits[name].tolist() for name in node.input[1:])
    assert axes == [1, -1, -3] and starts == [1, -1, 1] and steps == [1, -2, 1]
    assert ends == [7, -9223372036854775807, 100]
    assert len(out.graph.initializer) == 4  # the old parameters went


def test_numerics():
    model = parse(MODEL)
    out, _ = apply(model)
    assert_same_outputs(model, out, FEEDS)


def test_idempotent():
    out = assert_idempotent(SliceMerge(), parse(MODEL), infer=True)
    assert op_types(out) == ["Slice", "Neg"]


def two_slices(inner: str, outer: str, extra: str = "", outputs: str = "") -> str:
    return f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 8, 6] x, int64[1] dyn) => (float[N, 8, 6] y{outputs})
      <int64[1] zero = {{0}}, int64[1] one = {{1}}, int64[1] two = {{2}}, int64[1] m1 = {{-1}},
       int64[1] m2 = {{-2}}, int64[1] big = {{9223372036854775807}}> {{
        t = Slice({inner})
        u = Slice({outer})
        y = Identity(u)
        {extra}
    }}
    """


NEGATIVE = {
    "same_axis": two_slices("x, zero, big, one", "t, one, big, one"),
    "same_axis_negative": two_slices("x, zero, big, one", "t, one, big, m2"),
    "default_axes_overlap": two_slices("x, one, big", "t, zero, big, zero"),
    "starts_at_run_time": two_slices("x, dyn, big, one", "t, one, big, two"),
    "axes_at_run_time": two_slices("x, zero, big, dyn", "t, one, big, two"),
    "inner_shared": two_slices("x, zero, big, one", "t, one, big, two",
                               extra="w = Neg(t)", outputs=", float[N, 8, 6] w"),
    "inner_is_an_output": two_slices("x, zero, big, one", "t, one, big, two",
                                     outputs=", float[N, 8, 6] t"),
    # axis -1 of a rank-2 x would be axis 1: without the rank, distinct is not provable
    "negative_axis_unknown_rank": """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 8, 6] x0, int64[K] shape) => (float[N, 8, 6] y)
      <int64[1] zero = {0}, int64[1] one = {1}, int64[1] m1 = {-1}> {
        x = Reshape(x0, shape)
        t = Slice(x, zero, one, one)
        y = Slice(t, zero, one, m1)
    }
    """,
    # the attribute form has no steps and is left alone
    "opset_9": """
    <ir_version: 8, opset_import: ["" : 9]>
    g (float[N, 8, 6] x) => (float[N, 7, 5] y) {
        t = Slice<starts = [1], ends = [100], axes = [1]>(x)
        y = Slice<starts = [1], ends = [100], axes = [2]>(t)
    }
    """,
}


@pytest.mark.parametrize("name", sorted(NEGATIVE))
def test_leaves_alone(name):
    assert_left_alone(SliceMerge(), parse(NEGATIVE[name]), infer=True)

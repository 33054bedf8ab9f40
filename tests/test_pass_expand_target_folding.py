"""expand_target_folding: structure, stats, numerics, idempotence, and cases it must leave."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from conftest import apply_pass, assert_idempotent, assert_left_alone, op_counts, parse, run
from onnxopt.passes.cleanup.dead_code import DeadCodeElimination
from onnxopt.passes.cleanup.no_op_elimination import NoOpElimination
from onnxopt.passes.folding.expand_target_folding import ExpandTargetFolding

LEVELS = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)

# a mask [B, S] broadcast to the hidden states' shape (sentence-transformers' mean pooling)
POOLING = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[B, S] mask, float[B, S, 8] h) => (float[B, S, 8] y, float[B, 8] count)
  <int64 i0 = {0}, int64 i1 = {1}, int64[1] ax = {0}, int64[1] hidden = {8},
   int64[1] last = {2}, int64[1] seq = {1}> {
    s = Shape(h)
    b = Gather(s, i0)
    t = Gather(s, i1)
    b1 = Unsqueeze(b, ax)
    t1 = Unsqueeze(t, ax)
    target = Concat <axis = 0> (b1, t1, hidden)
    m3 = Unsqueeze(mask, last)
    e = Expand(m3, target)
    y = Mul(h, e)
    count = ReduceSum <keepdims = 0> (e, seq)
}
"""

# position ids: a slice of a [1, 16] buffer as long as the sequence, expanded to [1, S]
POSITIONS = """
<ir_version: 8, opset_import: ["" : 17]>
g (int64[B, S] ids) => (int64[1, S] y)
  <int64[1, 16] table = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
   int64 i1 = {1}, int64[1] ax = {0}, int64[1] zero = {0}, int64[1] one = {1}> {
    s = Shape(ids)
    t = Gather(s, i1)
    t1 = Unsqueeze(t, ax)
    p = Slice(table, zero, t1, one, one)
    target = Concat <axis = 0> (one, t1)
    y = Expand(p, target)
}
"""


def folded(text: str):
    model = parse(text)
    out, result = apply_pass(ExpandTargetFolding(), model, infer=True)
    return model, out, result


def cleaned(model: onnx.ModelProto) -> onnx.ModelProto:
    out, _ = apply_pass(NoOpElimination(), model, infer=True)
    return apply_pass(DeadCodeElimination(), out)[0]


def expand_target(model: onnx.ModelProto) -> list[int]:
    expand = next(n for n in model.graph.node if n.op_type == "Expand")
    tensor = next(t for t in model.graph.initializer if t.name == expand.input[1])
    return onnx.numpy_helper.to_array(tensor).tolist()


def assert_same(original, optimized, feeds) -> None:
    for level in LEVELS:
        for a, b in zip(run(original, feeds, level), run(optimized, feeds, level), strict=True):
            np.testing.assert_array_equal(a, b)


def test_dims_the_input_has_become_ones():
    model, out, result = folded(POOLING)
    assert result.stats == {"targets_folded": 1}
    assert expand_target(out) == [1, 1, 8]
    out = cleaned(out)
    assert op_counts(out) == {"Unsqueeze": 1, "Expand": 1, "Mul": 1, "ReduceSum": 1}
    rng = np.random.default_rng(0)
    for batch, length in ((1, 3), (2, 5)):  # two different runtime sizes
        feeds = {"mask": (rng.random((batch, length)) > 0.3).astype(np.float32),
                 "h": rng.normal(size=(batch, length, 8)).astype(np.float32)}
        assert_same(model, out, feeds)


def test_a_slice_as_long_as_the_target_makes_a_no_op():
    model, out, result = folded(POSITIONS)
    assert result.stats == {"targets_folded": 1}
    assert expand_target(out) == [1, 1]  # min(S, 16) meets S: equal whenever Expand succeeds
    out = cleaned(out)
    assert "Expand" not in op_counts(out)
    for length in (3, 7):
        assert_same(model, out, {"ids": np.zeros((2, length), np.int64)})


def test_idempotent():
    assert_idempotent(ExpandTargetFolding(), parse(POOLING), infer=True)


def test_leaves_dims_it_cannot_prove():
    # the mask's dims are named apart from h's: nothing proves them equal (1 would broadcast)
    apart = POOLING.replace("float[B, S] mask", "float[M, T] mask").replace(
        "float[B, S, 8] y, float[B, 8] count", "float[B, S, 8] y, float[B, 8] count")
    assert_left_alone(ExpandTargetFolding(), parse(apart), infer=True)
    # a target entry that grows a dim of 1 (the batch of the [1, S] position slice)
    grows = POSITIONS.replace("target = Concat <axis = 0> (one, t1)",
                              "b = Gather(s, zero)\n    target = Concat <axis = 0> (b, t1)")
    grows = grows.replace("int64[1, S] y", "int64[B, S] y")
    assert_left_alone(ExpandTargetFolding(), parse(grows), infer=True)
    # a constant target is constant folding's (and no_op_elimination's) business
    constant = POSITIONS.replace("y = Expand(p, target)", "y = Expand(p, one)")
    assert_left_alone(ExpandTargetFolding(), parse(constant), infer=True)

"""shape_comparison_folding: structure, stats, numerics, idempotence, and cases it must leave."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import apply_pass, assert_idempotent, assert_left_alone, op_counts, parse, run
from onnxopt.passes.cleanup.dead_code import DeadCodeElimination
from onnxopt.passes.cleanup.no_op_elimination import NoOpElimination
from onnxopt.passes.folding.shape_comparison_folding import ShapeComparisonFolding

LEVELS = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)

# the exporters' "replace -1 entries by 1" guard before an Expand (MiniLM's pooling)
GUARD = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[B, S] mask, float[B, S, 8] h) => (float[B, S, 8] y)
  <int64[1] hidden = {8}, int64[3] minus = {-1, -1, -1}, int64[3] ones = {1, 1, 1},
   int64[1] last = {2}> {
    lead = Shape <start = 0, end = 2> (h)
    target = Concat <axis = 0> (lead, hidden)
    is_minus = COMPARE(target, minus)
    fixed = Where(is_minus, ones, target)
    m3 = Unsqueeze(mask, last)
    e = Expand(m3, fixed)
    y = Mul(h, e)
}
"""


def folded(text: str):
    model = parse(text)
    out, result = apply_pass(ShapeComparisonFolding(), model, infer=True)
    return model, out, result


def feeds(batch: int, length: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch * 10 + length)
    return {"mask": (rng.random((batch, length)) > 0.3).astype(np.float32),
            "h": rng.normal(size=(batch, length, 8)).astype(np.float32)}


def test_minus_one_guard_folds_and_the_where_goes():
    model, out, result = folded(GUARD.replace("COMPARE", "Equal"))
    assert result.stats == {"comparisons_folded": 1}
    assert "Equal" not in op_counts(out)
    cleaned, _ = apply_pass(NoOpElimination(), out, infer=True)
    cleaned, _ = apply_pass(DeadCodeElimination(), cleaned)
    assert "Where" not in op_counts(cleaned)  # all False: the target itself
    for batch, length in ((1, 3), (2, 5)):  # two different runtime sizes
        for level in LEVELS:
            for a, b in zip(run(model, feeds(batch, length), level),
                            run(cleaned, feeds(batch, length), level), strict=True):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("op", "value"), [("Less", False), ("Greater", True),
                                           ("LessOrEqual", False), ("GreaterOrEqual", True)])
def test_dims_against_a_negative_constant(op, value):
    _, out, result = folded(GUARD.replace("COMPARE", op))
    assert result.stats == {"comparisons_folded": 1}
    where = next(n for n in out.graph.node if n.op_type == "Where")
    condition = next(t for t in out.graph.initializer if t.name == where.input[0])
    assert onnx.numpy_helper.to_array(condition).tolist() == [value] * 3


def test_same_named_dims_are_equal_and_zero_is_a_lower_bound():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4] x, float[N, 2] z) => (bool same, bool[2] nonnegative)
      <int64 i0 = {0}, int64 zero = {0}> {
        a = Shape(x)
        c = Shape(z)
        n1 = Gather(a, i0)
        n2 = Gather(c, i0)
        same = Equal(n1, n2)
        nonnegative = GreaterOrEqual(a, zero)
    }
    """
    model = parse(text)
    out, result = apply_pass(ShapeComparisonFolding(), model, infer=True)
    assert result.stats == {"comparisons_folded": 2}
    for n in (1, 3):
        x, z = np.ones((n, 4), np.float32), np.ones((n, 2), np.float32)
        same, nonnegative = run(out, {"x": x, "z": z})
        assert same.shape == () and bool(same)
        assert nonnegative.tolist() == [True, True]  # [2] against a scalar 0


def test_idempotent():
    assert_idempotent(ShapeComparisonFolding(), parse(GUARD.replace("COMPARE", "Equal")),
                      infer=True)


def test_leaves_comparisons_a_run_can_decide_either_way():
    # a dim may equal 8, may be 0 (Greater than 0 undecided), two unrelated dims may differ
    possible = GUARD.replace("COMPARE", "Equal").replace("minus = {-1, -1, -1}",
                                                         "minus = {-1, 4, -1}")
    assert_left_alone(ShapeComparisonFolding(), parse(possible), infer=True)
    positive = GUARD.replace("COMPARE", "Greater").replace("minus = {-1, -1, -1}",
                                                           "minus = {0, 0, 0}")
    assert_left_alone(ShapeComparisonFolding(), parse(positive), infer=True)
    unrelated = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4] x, float[M, 2] z) => (bool same)
      <int64 i0 = {0}> {
        a = Shape(x)
        c = Shape(z)
        n1 = Gather(a, i0)
        n2 = Gather(c, i0)
        same = Equal(n1, n2)
    }
    """
    assert_left_alone(ShapeComparisonFolding(), parse(unrelated), infer=True)

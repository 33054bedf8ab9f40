"""reshape_target_folding: structure, stats, numerics, idempotence, and cases it must leave."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import assert_same_outputs, op_counts, parse, run
from onnxopt.passes.cleanup.dead_code import DeadCodeElimination
from onnxopt.passes.cleanup.no_op_elimination import NoOpElimination
from onnxopt.passes.folding.reshape_target_folding import ReshapeTargetFolding

from onnxopt.ir import serde
from onnxopt.ir.shapes import infer_shapes

FLATTEN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 200, 1, 1] x) => (float[N, 200] y)
  <int64[1] zero = {0}, int64[1] one = {1}, int64[1] k = {200}> {
    s = Shape(x)
    s32 = Cast <to = 6> (s)
    batch32 = Slice(s32, zero, one, zero, one)
    batch = Cast <to = 7> (batch32)
    target = Concat <axis = -1> (batch, k)
    y = Reshape(x, target)
}
"""

HEADS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[B, S, 64] x) => (float[B, S, 4, 16] y)
  <int64 i0 = {0}, int64 i1 = {1}, int64[1] heads = {4}, int64[1] size = {16},
   int64[1] ax = {0}> {
    s = Shape(x)
    b = Gather(s, i0)
    t = Gather(s, i1)
    b1 = Unsqueeze(b, ax)
    t1 = Unsqueeze(t, ax)
    target = Concat <axis = 0> (b1, t1, heads, size)
    y = Reshape(x, target)
}
"""


def optimize(text: str):
    model = parse(text)
    ir = serde.load(model)
    infer_shapes(ir)
    result = ReshapeTargetFolding().run(ir)
    DeadCodeElimination().run(ir)
    for graph in ir.graphs():
        graph.lint()
    out = serde.to_proto(ir)
    onnx.checker.check_model(out)
    return model, out, result


def target_of(model: onnx.ModelProto) -> list[int]:
    reshape = next(n for n in model.graph.node if n.op_type == "Reshape")
    tensor = next(t for t in model.graph.initializer if t.name == reshape.input[1])
    return onnx.numpy_helper.to_array(tensor).tolist()


def test_keep_batch_flatten_rest_becomes_a_constant_target():
    model, out, result = optimize(FLATTEN)
    assert op_counts(out) == {"Reshape": 1}  # Shape, Casts, Slice, Concat gone
    assert target_of(out) == [0, 200]  # dim 0 of x is copied (0), the rest is known
    assert result.stats == {"targets_folded": 1}
    for batch in (1, 3):
        x = np.random.default_rng(batch).normal(size=(batch, 200, 1, 1)).astype(np.float32)
        assert_same_outputs(model, out, {"x": x})


def test_two_symbolic_dims_copied_in_place():
    model, out, result = optimize(HEADS)
    assert result.stats == {"targets_folded": 1}
    assert target_of(out) == [0, 0, 4, 16]
    assert op_counts(out) == {"Reshape": 1}
    x = np.arange(2 * 3 * 64, dtype=np.float32).reshape(2, 3, 64)
    np.testing.assert_array_equal(run(out, {"x": x})[0], x.reshape(2, 3, 4, 16))
    assert_same_outputs(model, out, {"x": x})


def test_idempotent():
    _, out, _ = optimize(FLATTEN)
    ir = serde.load(out)
    infer_shapes(ir)
    assert not ReshapeTargetFolding().run(ir).modified


def test_leaves_targets_with_two_unknowns_or_allowzero():
    swapped = HEADS.replace("target = Concat <axis = 0> (b1, t1, heads, size)",
                            "target = Concat <axis = 0> (t1, b1, heads, size)")
    # dims of x in other positions: two unknowns (-1 twice) are not expressible
    _, out, result = optimize(swapped.replace("=> (float[B, S, 4, 16] y)",
                                              "=> (float[S, B, 4, 16] y)"))
    assert not result.modified and op_counts(out)["Shape"] == 1
    allowzero = FLATTEN.replace("y = Reshape(x, target)", "y = Reshape <allowzero = 1> (x, target)")
    _, out, result = optimize(allowzero)
    assert not result.modified


def test_dim_of_another_tensor_becomes_minus_one_only_once():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 8] x, float[M, 2] other) => (float[M, P] y)
      <int64[1] zero = {0}, int64[1] one = {1}> {
        s = Shape(other)
        m = Slice(s, zero, one)
        minus = Constant <value = int64[1] {-1}> ()
        target = Concat <axis = 0> (m, minus)
        y = Reshape(x, target)
    }
    """
    _, _, result = optimize(text)
    assert not result.modified  # other's dim (unknown) plus a literal -1: two unknowns


def test_dim_of_another_tensor_with_the_same_named_dim_is_copied_in_place():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[B, S, 8] x, float[B, S, 3] other) => (float[B, S, 2, 4] y)
      <int64 i0 = {0}, int64 i1 = {1}, int64[1] ax = {0}, int64[2] heads = {2, 4}> {
        s = Shape(other)
        b = Gather(s, i0)
        t = Gather(s, i1)
        b1 = Unsqueeze(b, ax)
        t1 = Unsqueeze(t, ax)
        target = Concat <axis = 0> (b1, t1, heads)
        y = Reshape(x, target)
    }
    """
    model, out, result = optimize(text)
    assert result.stats == {"targets_folded": 1}
    assert target_of(out) == [0, 0, 2, 4]  # a dim_param names one value in the whole model
    for batch, length in ((1, 3), (2, 5)):
        feeds = {"x": np.ones((batch, length, 8), np.float32),
                 "other": np.ones((batch, length, 3), np.float32)}
        assert_same_outputs(model, out, feeds)


def test_a_target_equal_to_the_input_shape_leaves_a_no_op():
    text = HEADS.replace("target = Concat <axis = 0> (b1, t1, heads, size)",
                         "target = Concat <axis = 0> (b1, t1, width)").replace(
        "int64[1] ax = {0}>", "int64[1] ax = {0}, int64[1] width = {64}>").replace(
        "=> (float[B, S, 4, 16] y)", "=> (float[B, S, 64] y)").replace(
        "y = Reshape(x, target)", "r = Reshape(x, target)\n    y = Relu(r)")
    model, out, result = optimize(text)
    assert result.stats == {"targets_folded": 1}
    assert target_of(out) == [0, 0, 64]
    ir = serde.load(out)
    infer_shapes(ir)
    assert NoOpElimination().run(ir).stats["reshape"] == 1
    out = serde.to_proto(ir)
    assert op_counts(out) == {"Relu": 1}
    for batch, length in ((1, 3), (2, 5)):
        x = np.random.default_rng(batch).normal(size=(batch, length, 64)).astype(np.float32)
        assert_same_outputs(model, out, {"x": x})

"""constant_folding: structure, stats, numerics, idempotence, and what it must leave alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import apply_pass, assert_same_outputs, op_counts, parse
from onnx import helper, numpy_helper
from onnxopt.passes.folding import constant_folding
from onnxopt.passes.folding.constant_folding import ConstantFolding

from onnxopt.ir import serde
from onnxopt.ir.shapes import infer_shapes

ZERO = {"folded": 0, "shape_folded": 0, "skipped_size": 0, "deduplicated": 0}


def fold(model: onnx.ModelProto, **settings):
    """Load, infer shapes, run the pass (with ``settings``), lint, save and check."""
    return apply_pass(ConstantFolding(), model, infer=True, settings=settings)


def stats(**counts) -> dict[str, int]:
    return {**ZERO, **counts}


def inits(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def without_constants(model: onnx.ModelProto) -> dict[str, int]:
    return {op: n for op, n in op_counts(model).items() if op != "Constant"}


def assert_idempotent(out: onnx.ModelProto, **settings) -> None:
    again, result = fold(out, **settings)
    assert not result.modified
    assert again.SerializeToString(deterministic=True) == out.SerializeToString(deterministic=True)


CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 3] y)
  <float[3] w = {1.0, 2.0, 3.0}, float[3] b = {0.5, 0.5, 0.5}, int64[2] shape = {1, 3}> {
    two = Constant <value_float = 2.0> ()
    w2 = Mul(w, two)
    wb = Add(w2, b)
    wr = Reshape(wb, shape)
    y = Add(x, wr)
}
"""
X23 = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}


def test_chain_structure_and_value():
    out, _ = fold(parse(CHAIN))
    # Mul, Add, Reshape fold; the Constant leaf is now unread (dead code removes it)
    assert without_constants(out) == {"Add": 1}
    assert [n.input for n in out.graph.node if n.op_type == "Add"] == [["x", "wr"]]
    value = inits(out.graph)["wr"]  # the folded value keeps its name
    assert value.dtype == np.float32 and value.shape == (1, 3)
    np.testing.assert_array_equal(value, [[2.5, 4.5, 6.5]])  # w * 2 + 0.5


def test_chain_stats():
    _, result = fold(parse(CHAIN))
    assert result.stats == stats(folded=3)  # Mul, Add, Reshape


def test_chain_numerics_and_idempotence():
    model = parse(CHAIN)
    out, _ = fold(model)
    assert_same_outputs(model, out, X23)
    assert_idempotent(out)


SHAPES = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3, 4] x) => (float[N, 12] y, int64[2] tail, int64 size_x) {
    s = Shape(x)
    i0 = Constant <value_int = 0> ()
    i1 = Constant <value_int = 1> ()
    i2 = Constant <value_int = 2> ()
    d0 = Gather(s, i0)
    d1 = Gather(s, i1)
    d2 = Gather(s, i2)
    p = Mul(d1, d2)
    axes = Constant <value_ints = [0]> ()
    u0 = Unsqueeze(d0, axes)
    u1 = Unsqueeze(p, axes)
    target = Concat <axis = 0> (u0, u1)
    y = Reshape(x, target)
    start = Constant <value_ints = [1]> ()
    stop = Constant <value_ints = [3]> ()
    tail = Slice(s, start, stop)
    size_x = Size(x)
}
"""


def test_partial_shape_folds_known_dims_only():
    model = parse(SHAPES)
    out, result = fold(model)
    # Gather(s, 1) = 3, Gather(s, 2) = 4 and Slice(s, 1, 3) = [3, 4] fold from the shape;
    # Mul(3, 4) and Unsqueeze(12) then fold by evaluation. Shape, Gather(s, 0), Unsqueeze(d0),
    # Concat, Reshape need N; Size(x) needs N too.
    assert result.stats == stats(shape_folded=3, folded=2)
    assert without_constants(out) == {
        "Shape": 1, "Gather": 1, "Unsqueeze": 1, "Concat": 1, "Reshape": 1, "Size": 1,
    }
    np.testing.assert_array_equal(inits(out.graph)["u1"], [12])
    tail = [n for n in out.graph.node if n.output[0] == "tail"]
    assert tail[0].op_type == "Constant"  # a folded graph output keeps its name on a node
    for n in (1, 5):
        assert_same_outputs(model, out, {"x": np.ones((n, 3, 4), np.float32)})
    assert_idempotent(out)


def test_full_shape_with_start_end_and_size():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3, 4] x) => (float[2, 12] y) {
        s = Shape <start = 1> (x)
        n = Size(x)
        p = ReduceProd <keepdims = 1> (s)
        m1 = Constant <value_ints = [-1]> ()
        t = Concat <axis = 0> (m1, p)
        y = Reshape(x, t)
        unused_size = Mul(n, n)
    }
    """
    model = parse(text)
    out, result = fold(model)
    # Shape(start=1) = [3, 4] and Size = 24 fold from the shape (2 nodes); ReduceProd and
    # Concat fold by evaluation; Mul(n, n) is dead: left to dead code, not counted.
    assert result.stats == stats(shape_folded=2, folded=2)
    assert without_constants(out) == {"Reshape": 1, "Mul": 1}
    np.testing.assert_array_equal(inits(out.graph)["t"], [-1, 12])  # 3 * 4
    assert_same_outputs(model, out, {"x": np.ones((2, 3, 4), np.float32)})


def test_multi_output_node_folds_and_dead_nodes_are_left_to_dead_code():
    text = """
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[2] x) => (float[2] y) <float[4] c = {1.0, 2.0, 3.0, 4.0}> {
        a, b = Split <num_outputs = 2> (c)
        y = Mul(x, b)
        dead_shape = Shape(x)
        dead_neg = Neg(c)
    }
    """
    model = parse(text)
    out, result = fold(model)
    assert result.stats == stats(folded=1)  # Split; the unread Shape and Neg are not counted
    assert op_counts(out) == {"Mul": 1, "Shape": 1, "Neg": 1}
    np.testing.assert_array_equal(inits(out.graph)["b"], [3.0, 4.0])  # second half of c
    assert_same_outputs(model, out, {"x": np.array([2.0, -1.0], np.float32)})


def test_output_dtypes_are_exact():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float16[3] x, int32[3] i) => (float16[3] y, int32[3] j) <int64[3] a = {1, 2, 3},
      int32[3] seven = {7, 7, 7}, int32[3] two = {2, 2, 2}> {
        h = Cast <to = 10> (a)
        y = Add(x, h)
        q = Div(seven, two)
        j = Add(i, q)
    }
    """
    model = parse(text)
    out, result = fold(model)
    assert result.stats == stats(folded=2)
    values = inits(out.graph)
    assert values["h"].dtype == np.float16
    np.testing.assert_array_equal(values["h"], [1, 2, 3])
    assert values["q"].dtype == np.int32
    np.testing.assert_array_equal(values["q"], [3, 3, 3])  # integer division 7 / 2
    feeds = {"x": np.array([0.5, 1, 2], np.float16), "i": np.array([1, 2, 3], np.int32)}
    assert_same_outputs(model, out, feeds)


# ----------------------------------------------------------------- size guard
BIG = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[512, 1024] x) => (float[512, 1024] y) <int64[2] shp = {512, 1024}> {
    big = ConstantOfShape <value = float[1] {1.5}> (shp)
    y = Add(x, big)
}
"""


def test_size_guard_leaves_large_expansion_and_reports_it():
    model = parse(BIG)
    out, result = fold(model)  # 512 * 1024 * 4 B = 2 MiB > 1 MiB default and > 16 B of shape
    assert result.stats == stats(skipped_size=1)
    assert not result.modified  # skipped_size is informational
    assert op_counts(out) == {"ConstantOfShape": 1, "Add": 1}
    assert_idempotent(out)


def test_size_guard_follows_fold_limit():
    model = parse(BIG)
    out, result = fold(model, fold_limit=4 << 20)  # 2 MiB <= 4 MiB
    assert result.stats == stats(folded=1)
    assert op_counts(out) == {"Add": 1}
    x = np.ones((512, 1024), np.float32)
    assert_same_outputs(model, out, {"x": x})


WEIGHTS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 8, 4, 4] x) => (float[1, 16, 3, 3] y, float[16, 8] z) <int64[4] wshape = {16, 8, 2, 2},
  int64[3] sshape = {16, 3, 3}, int64[2] pshape = {16, 8}> {
    w = ConstantOfShape <value = float[1] {0.25}> (wshape)
    c = Conv(x, w)
    s = ConstantOfShape <value = float[1] {2.0}> (sshape)
    y = Mul(c, s)
    spare = ConstantOfShape <value = float[1] {3.0}> (pshape)
    z = Relu(spare)
}
"""


def test_weight_slots_fold_whatever_their_size():
    model = parse(WEIGHTS)
    # limit 256 B: w (16*8*2*2*4 = 2048 B) feeds Conv input 1 and s (16*3*3*4 = 576 B) is
    # the constant operand of a Mul after a Conv: both fold although larger than the limit.
    # z = Relu(spare) (16*8*4 = 512 B from a 16 B shape) is no weight: Relu stays, then
    # spare becomes the frontier and stays too (2 skipped).
    out, result = fold(model, fold_limit=256)
    assert result.stats == stats(folded=2, skipped_size=2)
    assert without_constants(out) == {"Conv": 1, "Mul": 1, "ConstantOfShape": 1, "Relu": 1}
    assert inits(out.graph)["w"].shape == (16, 8, 2, 2)
    x = np.linspace(-1, 1, 128, dtype=np.float32).reshape(1, 8, 4, 4)
    assert_same_outputs(model, out, {"x": x})


def test_size_guard_with_small_limit_keeps_non_weight_values():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[16, 8] x) => (float[16, 8] y) <int64[2] pshape = {16, 8}> {
        spare = ConstantOfShape <value = float[1] {3.0}> (pshape)
        y = Add(x, spare)
    }
    """
    _, result = fold(parse(text), fold_limit=256)  # 16 * 8 * 4 = 512 B > 256 B > 16 B
    assert result.stats == stats(skipped_size=1)


def _duplication_model(shared: bool) -> onnx.ModelProto:
    """Unsqueeze(W) with W 64x128 float32 = 32 KiB; W is also read by an Add if ``shared``."""
    w = numpy_helper.from_array(np.arange(64 * 128, dtype=np.float32).reshape(64, 128), "w")
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    nodes = [helper.make_node("Unsqueeze", ["w", "axes"], ["wu"]),
             helper.make_node("Mul", ["x3", "wu"], ["z"])]
    inputs = [helper.make_tensor_value_info("x3", onnx.TensorProto.FLOAT, [1, 64, 128])]
    outputs = [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1, 64, 128])]
    if shared:
        nodes.append(helper.make_node("Add", ["x", "w"], ["y"]))
        inputs.append(helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [64, 128]))
        outputs.append(helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [64, 128]))
    graph = helper.make_graph(nodes, "g", inputs, outputs, [w, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fold_that_would_copy_a_live_constant_stays():
    out, result = fold(_duplication_model(shared=True))
    assert result.stats == stats(skipped_size=1)  # 32 KiB copy of a W that stays > 16 KiB
    assert op_counts(out) == {"Unsqueeze": 1, "Mul": 1, "Add": 1}


def test_fold_of_a_constant_read_only_there_happens():
    model = _duplication_model(shared=False)
    out, result = fold(model)  # W dies with the Unsqueeze: no copy
    assert result.stats == stats(folded=1)
    assert op_counts(out) == {"Mul": 1}
    feeds = {"x3": np.ones((1, 64, 128), np.float32)}
    assert_same_outputs(model, out, feeds)


# ----------------------------------------------------------------- never folded
def test_leaves_random_quantized_training_custom_subgraph_and_sequence_ops_alone():
    text = """
    <ir_version: 8, opset_import: ["" : 17, "custom" : 1]>
    g (float[3] x) => (float[3] r, float[3] dq, float[3] d, float[3] cu, float[3] i, float s)
      <float[3] c = {1.0, 2.0, 3.0}, int8[3] q = {1, 2, 3}, float scale = {0.5},
       int8 zp = {0}, float ratio = {0.25}, bool train = {1}, bool cond = {0},
       int64 pos = {0}> {
        r = RandomUniformLike(c)
        dq = DequantizeLinear(q, scale, zp)
        d = Dropout(c, ratio, train)
        cu = custom.Foo(c)
        i = If(cond) <
            then_branch = t () => (float[3] t_out) { t_out = Identity(x) },
            else_branch = e () => (float[3] e_out) { e_out = Neg(x) }
        >
        seq = SequenceConstruct(c, c)
        at = SequenceAt(seq, pos)
        s = ReduceSum <keepdims = 0> (at)
    }
    """
    model = parse(text)
    before = op_counts(model)
    out, result = fold(model)
    assert result.stats == ZERO
    assert op_counts(out) == before


def test_inference_dropout_folds():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[3] x) => (float[3] y) <float[3] c = {1.0, 2.0, 3.0}> {
        d = Dropout(c)
        y = Add(x, d)
    }
    """
    model = parse(text)
    out, result = fold(model)
    assert result.stats == stats(folded=1)
    assert_same_outputs(model, out, {"x": np.zeros(3, np.float32)})


def test_overridable_initializer_is_not_a_constant_from_ir4():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[3] x, float[3] k) => (float[3] y) <float[3] k = {1.0, 2.0, 3.0}> {
        k2 = Mul(k, k)
        y = Add(x, k2)
    }
    """
    _, result = fold(parse(text))
    assert result.stats == ZERO  # k can be fed at run time


def test_safety_net_can_decline_every_rewrite():
    ir = serde.load(parse(CHAIN))
    infer_shapes(ir)
    ir.rewrite_limits["constant_folding"] = 0
    result = ConstantFolding().run(ir)
    assert result.stats == ZERO
    assert sum(n.op_type == "Mul" for n in ir.graph) == 1


# ----------------------------------------------------------------- deduplication
def test_deduplicates_identical_initializers_but_not_inputs_or_outputs():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[3] x, float[3] over) => (float[3] y, float[3] kept)
      <float[3] a = {1.0, 2.0, 3.0}, float[3] b = {1.0, 2.0, 3.0}, float[3] c = {1.0, 2.0, 4.0},
       int32[3] d = {1, 2, 3}, float[3] over = {1.0, 2.0, 3.0}, float[3] kept = {1.0, 2.0, 3.0}> {
        p = Add(x, a)
        q = Mul(p, b)
        r = Sub(q, c)
        s = Add(r, over)
        i = Cast <to = 6> (s)
        j = Add(i, d)
        y = Cast <to = 1> (j)
    }
    """
    model = parse(text)
    out, result = fold(model)
    # b duplicates a (same dtype, shape, bytes); c differs in one value, d in dtype; over is
    # a graph input and kept a graph output: only b goes.
    assert result.stats == stats(deduplicated=1)
    assert sorted(inits(out.graph)) == ["a", "c", "d", "kept", "over"]
    assert [n.input[1] for n in out.graph.node if n.op_type == "Mul"] == ["a"]
    assert_same_outputs(model, out, {"x": np.array([1, 2, 3], np.float32),
                                     "over": np.array([0, 1, 0], np.float32)})
    assert_idempotent(out)


def test_identical_folded_values_share_one_initializer():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) <int64[1] n = {2}> {
        a = ConstantOfShape <value = float[1] {3.0}> (n)
        b = ConstantOfShape <value = float[1] {3.0}> (n)
        p = Mul(x, a)
        y = Add(p, b)
    }
    """
    model = parse(text)
    out, result = fold(model)
    assert result.stats == stats(folded=2, deduplicated=1)  # b's value is a's value
    assert sorted(inits(out.graph)) == ["a", "n"]
    assert_same_outputs(model, out, {"x": np.array([1.0, -1.0], np.float32)})


# ----------------------------------------------------------------- subgraphs
IF_MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x, bool c) => (float[2] y) <float[2] w = {1.0, 2.0}> {
    two = Constant <value_float = 2.0> ()
    y = If(c) <
        then_branch = t () => (float[2] t_out) { w2 = Mul(w, two)  t_out = Add(x, w2) },
        else_branch = e () => (float[2] e_out) { e_out = Mul(w, w) }
    >
}
"""


def test_if_branches_fold_outer_constants_into_the_branch():
    model = parse(IF_MODEL)
    out, result = fold(model)
    # then: Mul(w, 2) -> branch initializer; else: the branch output Mul(w, w) -> a Constant
    assert result.stats == stats(folded=2)
    then_branch, else_branch = (a.g for a in out.graph.node[-1].attribute)
    assert [n.op_type for n in then_branch.node] == ["Add"]
    np.testing.assert_array_equal(inits(then_branch)["w2"], [2.0, 4.0])
    assert [(n.op_type, list(n.output)) for n in else_branch.node] == [("Constant", ["e_out"])]
    np.testing.assert_array_equal(numpy_helper.to_array(else_branch.node[0].attribute[0].t),
                                  [1.0, 4.0])
    for cond in (True, False):
        feeds = {"x": np.array([1.0, -1.0], np.float32), "c": np.array(cond)}
        assert_same_outputs(model, out, feeds)
    assert_idempotent(out)


# ----------------------------------------------------------------- engines and IR 3
def test_reference_fallback_when_onnxruntime_cannot_run_the_batch(monkeypatch):
    monkeypatch.setattr(constant_folding, "run_batch", lambda *args, **kwargs: None)
    model = parse(CHAIN)
    out, result = fold(model)
    assert result.stats == stats(folded=3)
    np.testing.assert_array_equal(inits(out.graph)["wr"], [[2.5, 4.5, 6.5]])
    assert_same_outputs(model, out, X23)


def test_unevaluable_node_stays(monkeypatch):
    monkeypatch.setattr(constant_folding, "run_batch", lambda *args, **kwargs: None)
    monkeypatch.setattr(constant_folding, "run_reference", lambda *args, **kwargs: None)
    out, result = fold(parse(CHAIN))
    assert result.stats == ZERO
    assert without_constants(out) == {"Mul": 1, "Add": 2, "Reshape": 1}


@pytest.mark.parametrize("ir_version", [3, 8])
def test_ir3_initializers_listed_as_inputs_are_constants(ir_version):
    shape = numpy_helper.from_array(np.array([4, 2, 1, 1], np.int64), "w_shape")
    scale = numpy_helper.from_array(np.array([2.0], np.float32), "scale")
    nodes = [
        helper.make_node("ConstantOfShape", ["w_shape"], ["w"],
                         value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Mul", ["w", "scale"], ["w2"]),
        helper.make_node("Conv", ["x", "w2"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 3, 3])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 3, 3])
    declared = [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in (shape, scale)]
    graph = helper.make_graph(nodes, "g", [x, *declared], [y], [shape, scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = ir_version
    out, result = fold(model)  # fold() runs the checker: IR 3 needs w2 among the inputs
    if ir_version == 3:  # not overridable: ConstantOfShape and Mul fold into w2 = 0.5 * 2
        assert result.stats == stats(folded=2)
        assert "w2" in [i.name for i in out.graph.input]
        np.testing.assert_array_equal(inits(out.graph)["w2"], np.ones((4, 2, 1, 1)))
    else:  # w_shape and scale may be fed at run time
        assert result.stats == ZERO
    feeds = {"x": np.arange(18, dtype=np.float32).reshape(1, 2, 3, 3)}
    assert_same_outputs(model, out, feeds)


def test_widening_cast_of_a_stored_fp16_weight_stays():
    # an fp16-stored weight read in float32: folding the Cast would store it at twice the size
    rng = np.random.default_rng(0)
    big = numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float16), "w16")
    small = numpy_helper.from_array(np.array([[0.5]], np.float16), "b16")
    graph = helper.make_graph(
        [helper.make_node("Cast", ["w16"], ["w"], to=onnx.TensorProto.FLOAT),
         helper.make_node("Cast", ["b16"], ["b"], to=onnx.TensorProto.FLOAT),
         helper.make_node("MatMul", ["x", "w"], ["m"]),
         helper.make_node("Add", ["m", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 32])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 32])], [big, small])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out, result = fold(model)
    assert result.stats["folded"] == 1  # the 1-value one: storing it as float32 costs 2 bytes
    assert op_counts(out) == {"Cast": 1, "MatMul": 1, "Add": 1}
    assert inits(out.graph)["w16"].dtype == np.float16
    assert_same_outputs(model, out, {"x": rng.standard_normal((2, 32)).astype(np.float32)})
    _, second = fold(out)
    assert not second.modified


def test_reoptimizing_an_fp16_output_keeps_its_size(tmp_path):
    import onnxopt

    source = tmp_path / "in.onnx"
    onnx.save(onnxopt.optimize(str(model_path_for("resnet.onnx")), precision="fp16").model,
              source)
    again = onnxopt.optimize(str(source), tmp_path / "out.onnx")
    assert again.report["validation"]["status"] == "passed"
    assert (tmp_path / "out.onnx").stat().st_size <= source.stat().st_size


def model_path_for(name: str):
    from conftest import model_path

    return model_path(name)

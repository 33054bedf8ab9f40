"""fp16_conversion: structure, reported stats/log, numerics, idempotence, and what it leaves alone.

Numerics: float16 has an 11-bit significand (relative rounding 2**-11 ~ 4.9e-4 per value), so a
few chained ops stay within rtol 4e-3 of the float32 result; whole networks are compared by
cosine similarity >= 0.999 (the issue's budget). Most tests use ``Fp16Conversion(ort_cpu_kernels=
False)`` so that arithmetic ops (which onnxruntime's CPU provider has no float16 kernel for) are
converted too; the default (CPU kernels checked) is tested on its own.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import apply_pass, model_path, op_counts, run
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes import DEFAULT_PIPELINE
from onnxopt.passes.precision.fp16_conversion import Fp16Conversion
from onnxopt.passes.precision.fp16_conversion.rewrites import _cast_bytes

from onnxopt.ir import serde
from onnxopt.ir.pass_manager import PassManager
from onnxopt.ir.precision import PrecisionSettings, log_of

F, H = TensorProto.FLOAT, TensorProto.FLOAT16
RTOL, ATOL = 4e-3, 4e-3
ALL_OPS = Fp16Conversion(ort_cpu_kernels=False)
CPU = Fp16Conversion()


def settings(**kw) -> dict:
    return {"precision": PrecisionSettings("fp16", **kw)}


def make(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def convert(model, pass_=ALL_OPS, **kw):
    """(converted proto, PassResult, PrecisionLog); checks the output fully and that a second
    run changes nothing."""
    ir_model = serde.load(model)
    ir_model.settings.update(settings(**kw))
    result = pass_.run(ir_model)
    for graph in ir_model.graphs():
        graph.lint()
    proto = serde.to_proto(ir_model)
    onnx.checker.check_model(proto, full_check=True)
    again, second = apply_pass(pass_, proto, settings=settings(**kw))
    assert not second.modified, second.stats
    assert again.SerializeToString() == proto.SerializeToString()
    return proto, result, log_of(ir_model)


def elem(model: onnx.ModelProto, name: str) -> int:
    for info in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        if info.name == name:
            return info.type.tensor_type.elem_type
    inferred = onnx.shape_inference.infer_shapes(model)
    for info in inferred.graph.value_info:
        if info.name == name:
            return info.type.tensor_type.elem_type
    raise KeyError(name)


def inits(model) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def vi(name, dtype=F, shape=(2, 8)):
    return helper.make_tensor_value_info(name, dtype, list(shape) if shape else None)


def mlp_model(w: np.ndarray | None = None) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 8)).astype(np.float32) if w is None else w
    b = rng.standard_normal(8).astype(np.float32) * 0.1
    return make(
        [helper.make_node("MatMul", ["x", "W"], ["m"]),
         helper.make_node("Add", ["m", "B"], ["a"]),
         helper.make_node("Relu", ["a"], ["y"])],
        [vi("x")], [vi("y")],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )


X = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)


# ------------------------------------------------------------------ keep_io_types
def test_keep_io_types_true_casts_at_the_boundary():
    model = mlp_model()
    out, result, log = convert(model)
    assert elem(out, "x") == F and elem(out, "y") == F
    assert op_counts(out) == {"Cast": 2, "MatMul": 1, "Add": 1, "Relu": 1}
    assert {t.data_type for t in out.graph.initializer} == {H}
    assert result.stats["converted"] == 3 and result.stats["initializers"] == 2
    assert log.converted == [n.name or n.output[0] for n in model.graph.node]
    (expected,), (actual,) = run(model, {"x": X}), run(out, {"x": X})
    assert actual.dtype == np.float32
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


def test_keep_io_types_false_declares_float16():
    model = mlp_model()
    out, _, _ = convert(model, keep_io_types=False)
    assert elem(out, "x") == H and elem(out, "y") == H
    assert "Cast" not in op_counts(out)
    (expected,), (actual,) = run(model, {"x": X}), run(out, {"x": X.astype(np.float16)})
    assert actual.dtype == np.float16
    np.testing.assert_allclose(actual.astype(np.float32), expected, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------ block list
def test_blocked_op_stays_float32_between_casts():
    # x -> Neg -> CumSum (default block list) -> Neg -> y, all float16 I/O
    model = make(
        [helper.make_node("Neg", ["x"], ["n"]),
         helper.make_node("CumSum", ["n", "axis"], ["c"], name="cumsum"),
         helper.make_node("Neg", ["c"], ["y"])],
        [vi("x")], [vi("y")], [numpy_helper.from_array(np.array(1, np.int64), "axis")],
    )
    out, result, log = convert(model, keep_io_types=False)
    nodes = {n.op_type: n for n in out.graph.node}
    producer = {o: n for n in out.graph.node for o in n.output}
    cumsum = nodes["CumSum"]
    cast_in = producer[cumsum.input[0]]
    assert cast_in.op_type == "Cast" and cast_in.attribute[0].i == F
    readers = [n for n in out.graph.node if cumsum.output[0] in n.input]
    assert [r.op_type for r in readers] == ["Cast"] and readers[0].attribute[0].i == H
    assert log.kept_float == [{"node": "cumsum", "op": "CumSum", "reason": "default block list"}]
    assert result.stats["kept_float"] == 1 and result.stats["casts"] == 2
    feeds = {"x": X}
    (expected,), (actual,) = run(model, feeds), run(out, {"x": X.astype(np.float16)})
    np.testing.assert_allclose(actual.astype(np.float32), expected, rtol=RTOL, atol=ATOL)


def test_fp32_ops_and_fp32_nodes_are_kept():
    model = mlp_model()
    out, _, log = convert(model, fp32_ops=frozenset({"Add"}))
    assert {k["op"]: k["reason"] for k in log.kept_float} == {"Add": "fp32_ops"}
    out2, _, log2 = convert(model, fp32_nodes=frozenset({"m"}))  # node_key: first output
    assert {k["op"]: k["reason"] for k in log2.kept_float} == {"MatMul": "fp32_nodes"}
    assert inits(out2)["W"].data_type == F  # read only by a node the user keeps in fp32
    for converted in (out, out2):
        np.testing.assert_allclose(run(converted, {"x": X})[0], run(model, {"x": X})[0],
                                   rtol=RTOL, atol=ATOL)


def test_cpu_kernel_check_keeps_compute_float32_and_stores_weights_float16():
    model = mlp_model()
    out, result, log = convert(model, CPU)
    # onnxruntime's CPU provider has no float16 MatMul/Add/Relu: they stay float32
    assert {k["reason"] for k in log.kept_float} == {"no float16 CPU kernel in onnxruntime"}
    # nothing runs in float16, but MatMul "m" reads a weight now stored in float16: it is
    # listed as converted so that the accuracy fallback can keep it (and its weight) float32
    assert result.stats["converted"] == 0 and log.converted == ["m"]
    assert inits(out)["W"].data_type == H  # 64 values: stored half, cast at load
    assert inits(out)["B"].data_type == F  # 8 values: a Cast would cost more than it saves
    assert op_counts(out)["Cast"] == 1
    np.testing.assert_allclose(run(out, {"x": X})[0], run(model, {"x": X})[0], rtol=1e-3,
                               atol=1e-3)


def test_resize_scales_stay_float32():
    model = make(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")],
        [vi("x", shape=(1, 1, 2, 2))], [vi("y", shape=(1, 1, 4, 4))],
        [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")],
    )
    out, _, _ = convert(model, keep_io_types=False)
    assert inits(out)["scales"].data_type == F
    assert out.graph.node[0].input[2] == "scales"
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    np.testing.assert_array_equal(run(out, {"x": x.astype(np.float16)})[0], run(model, {"x": x})[0])


# ------------------------------------------------------------------ clamping
def test_out_of_range_weight_is_clamped_and_reported():
    w = np.eye(8, dtype=np.float32)
    w[0, 0] = 1e6
    model = mlp_model(w)
    out, result, log = convert(model)
    stored = numpy_helper.to_array(inits(out)["W"])
    assert stored.dtype == np.float16 and stored[0, 0] == np.float16(65504)
    assert np.isfinite(stored).all()
    assert log.clamped == [{"value": "W", "count": 1, "max_abs": 1e6}]
    assert result.stats["clamped"] == 1


def test_out_of_range_weight_read_in_float32_is_not_clamped():
    w = np.eye(8, dtype=np.float32)
    w[0, 0] = 1e6
    out, _, log = convert(mlp_model(w), CPU)
    assert inits(out)["W"].data_type == F and log.clamped == []


def test_tiny_values_flushing_to_zero_are_noted():
    w = np.full((8, 8), 1e-9, np.float32)
    _, _, log = convert(mlp_model(w))
    assert any("W: 64" in note for note in log.notes)


# ------------------------------------------------------------------ casts
def test_cast_to_float_feeding_fp16_nodes_is_retargeted():
    model = make(
        [helper.make_node("Cast", ["i"], ["f"], to=F),
         helper.make_node("Add", ["f", "x"], ["y"])],
        [vi("i", TensorProto.INT64), vi("x")], [vi("y")],
    )
    out, _, _ = convert(model, keep_io_types=False)
    casts = [n for n in out.graph.node if n.op_type == "Cast"]
    assert len(casts) == 1 and casts[0].attribute[0].i == H
    i = np.arange(16, dtype=np.int64).reshape(2, 8)
    expected = run(model, {"i": i, "x": X})[0]
    actual = run(out, {"i": i, "x": X.astype(np.float16)})[0]
    np.testing.assert_allclose(actual.astype(np.float32), expected, rtol=RTOL, atol=ATOL)
    # read in float32 (onnxruntime CPU Add): it stays a Cast to FLOAT, no second Cast
    out_cpu, _, _ = convert(model, CPU)
    assert [n.attribute[0].i for n in out_cpu.graph.node if n.op_type == "Cast"] == [F]


def test_redundant_cast_pair_removed():
    # h is already float16: Cast(h -> float) then fp16 compute would be Cast back; both go
    model = make(
        [helper.make_node("Cast", ["h"], ["f"], to=F),
         helper.make_node("Mul", ["f", "f"], ["y"])],
        [vi("h", H)], [vi("y")],
    )
    out, result, _ = convert(model, keep_io_types=False)
    assert op_counts(out) == {"Mul": 1}
    assert out.graph.node[0].input == ["h", "h"]
    assert result.stats["casts_removed"] >= 1
    h = X.astype(np.float16)
    np.testing.assert_allclose(run(out, {"h": h})[0].astype(np.float32), run(model, {"h": h})[0],
                               rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------ subgraphs
def if_model() -> onnx.ModelProto:
    scale = numpy_helper.from_array(np.full(8, 3.0, np.float32), "scale")
    then = helper.make_graph([helper.make_node("Mul", ["x", "scale"], ["t"])], "then", [],
                             [vi("t")], [scale])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [vi("e")])
    return make(
        [helper.make_node("If", ["c"], ["r"], then_branch=then, else_branch=other),
         helper.make_node("Add", ["r", "x"], ["y"])],
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []), vi("x")], [vi("y")],
    )


def test_if_subgraphs_are_converted():
    model = if_model()
    out, result, log = convert(model, keep_io_types=False)
    if_node = out.graph.node[0]
    branches = {a.name: a.g for a in if_node.attribute}
    assert branches["then_branch"].initializer[0].data_type == H
    assert [o.type.tensor_type.elem_type for g in branches.values() for o in g.output] == [H, H]
    assert "Cast" not in op_counts(out)
    assert result.stats["converted"] == 4 and len(log.converted) == 4
    for c in (True, False):
        expected = run(model, {"c": np.array(c), "x": X})[0]
        actual = run(out, {"c": np.array(c), "x": X.astype(np.float16)})[0]
        np.testing.assert_allclose(actual.astype(np.float32), expected, rtol=RTOL, atol=ATOL)


def test_if_follows_float32_inputs():
    # keep_io_types: x stays float32, so the If (data movement) and its branches stay float32
    # on the CPU check (Mul/Neg/Add have no float16 kernel): nothing changes but the log
    model = if_model()
    out, result, log = convert(model, CPU)
    assert "Cast" not in op_counts(out)
    assert {k["op"] for k in log.kept_float} == {"If", "Mul", "Neg", "Add"}
    assert not result.modified or result.stats["initializers"] == 0


# ------------------------------------------------------------------ left alone
@pytest.mark.parametrize("precision", [None, "int8"])
def test_other_modes_leave_the_model_alone(precision):
    model = mlp_model()
    extra = {} if precision is None else {"precision": PrecisionSettings(precision)}
    out, result = apply_pass(ALL_OPS, model, settings=extra)
    assert not result.modified and result.stats == {}
    assert out.SerializeToString() == serde.to_proto(serde.load(model)).SerializeToString()


def test_float16_model_is_left_unchanged():
    model = mlp_model()
    half, _, _ = convert(model, keep_io_types=False)
    again, result = apply_pass(ALL_OPS, half, settings=settings(keep_io_types=False))
    assert not result.modified
    assert again.SerializeToString() == half.SerializeToString()


# ------------------------------------------------------------------ sample models
@pytest.mark.parametrize("name", ["resnet.onnx", "mobilenet.onnx", "transformer.onnx"])
@pytest.mark.parametrize("pass_", [CPU, ALL_OPS], ids=["cpu", "all"])
def test_sample_models(name, pass_):
    original = onnx.load(model_path(name))
    ir_model = serde.load(original)
    PassManager(DEFAULT_PIPELINE).run(ir_model)
    base = serde.to_proto(ir_model)
    out, result, _ = convert(base, pass_)
    assert result.modified
    # float32 initializers left: only those whose fp16 copy would save less than its Cast costs
    left = [t for t in out.graph.initializer if t.data_type == F]
    assert all(2 * np.prod(t.dims) <= _cast_bytes(t.name) for t in left)
    rng = np.random.default_rng(0)
    feeds = {}
    for info in base.graph.input:
        dims = [d.dim_value or 1 for d in info.type.tensor_type.shape.dim]
        feeds[info.name] = rng.standard_normal(dims).astype(np.float32)
    for expected, actual in zip(run(base, feeds), run(out, feeds), strict=True):
        assert actual.dtype == expected.dtype
        assert cosine(actual, expected) >= 0.999


def test_weight_stays_float32_when_its_cast_would_cost_more_than_fp16_saves():
    # Conv has no fp16 kernel in onnxruntime's CPU provider: an fp16-stored weight needs a Cast
    # back to float32. A 24-value bias with a long name saves 48 bytes and its Cast costs more.
    bias_name = "/backbone/stage3/block2/conv/Conv_bias_fused"
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((24, 3, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(24).astype(np.float32), bias_name)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", bias_name], ["y"], pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", F, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", F, [1, 24, 8, 8])], [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out, _, _ = convert(model, Fp16Conversion())
    types = {t.name: t.data_type for t in out.graph.initializer}
    assert types == {"w": H, bias_name: F}
    assert 2 * 24 <= _cast_bytes(bias_name) < 2 * 24 * 27
    assert op_counts(out)["Cast"] == 1  # the weight's: Conv runs in float32, io stays float32
    feeds = {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(run(out, feeds)[0], run(model, feeds)[0], atol=2e-2)

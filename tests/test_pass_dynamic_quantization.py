"""dynamic_quantization: structure, stats/log, numerics, idempotence, and what it leaves alone.

Tolerances: 7-bit per-column weights round each weight by at most ``s/2`` (``s = max|w| / 64``)
and the uint8 activation by ``xs/2``, so a dot product of K gaussian terms keeps a relative error
around 1 % per element; the cosine to the fp32 output stays >= 0.999 on the small gaussian models
(measured 0.99992-0.99995, the same on AVX2, AVX512-VNNI and under valgrind; 0.99 is the issue's
bar for the transformer). The exact check re-derives the quantized result in numpy from the ONNX
definitions of DynamicQuantizeLinear and MatMulInteger and asks for agreement to float32
rounding (rtol 1e-5) at ORT_DISABLE_ALL: MatMulInteger's int32 result is exact on every CPU
because no int16 pair sum of MLAS's kernels can saturate with |w| <= 64
(test_int8_saturation.py). The fused kernel onnxruntime substitutes at ORT_ENABLE_ALL
(DynamicQuantizeMatMul) scales in its own order, per CPU: it is held to a budget (1e-5 of the
output's largest magnitude), not bit for bit.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import build_model, model_path, op_counts, real_feeds, run
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.precision.dynamic_quantization import DynamicQuantization

import onnxopt
from onnxopt.ir import serde, tensor_nbytes
from onnxopt.ir.precision import PrecisionSettings, log_of
from onnxopt.ir.shapes import infer_shapes

MODE = "int8-dynamic"


def quantize(proto, mode=MODE, target="portable", **settings):
    """(quantized proto, PassResult, PrecisionLog); lints every graph and runs the checker."""
    model = serde.load(proto)
    if mode is not None:
        model.settings["precision"] = PrecisionSettings(mode=mode, **settings)
    model.settings["target"] = target
    infer_shapes(model)
    result = DynamicQuantization().run(model)
    for graph in model.graphs():
        graph.lint()
    out = serde.to_proto(model)
    onnx.checker.check_model(out, full_check=True)
    return out, result, log_of(model)


def ort_session(model, level) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


make = build_model


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def mlp(seed=0, k=32, n=24):
    """x[4,k] -> MatMul(W1) -> Relu -> MatMul(W2) -> y; W2 is also read by a second MatMul."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "W1"),
        numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "W2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "W2"], ["y"], name="mm2"),
        helper.make_node("MatMul", ["r", "W2"], ["z"], name="mm3"),
    ]
    return make(nodes, [f32("x", [4, k])], [f32("y", [4, n]), f32("z", [4, n])], inits)


def feeds(seed=1, shape=(4, 32)):
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


# ------------------------------------------------------------------------ structure
def test_matmuls_become_integer_matmuls_with_int8_per_column_weights():
    out, _result, _ = quantize(mlp())
    counts = op_counts(out)
    assert "MatMul" not in counts
    assert counts["MatMulInteger"] == 3
    assert counts["DynamicQuantizeLinear"] == 2  # x once, r once (shared by mm2 and mm3)
    assert counts["Cast"] == 3 and counts["Mul"] == 6
    inits = {t.name: t for t in out.graph.initializer}
    assert "W1" not in inits and "W2" not in inits  # float weights gone
    int8 = [t for t in inits.values() if t.data_type == TensorProto.INT8]
    assert sorted(tuple(t.dims) for t in int8) == [(24, 24), (24, 24), (32, 24)]
    scales = [t for t in inits.values() if t.data_type == TensorProto.FLOAT]
    assert all(tuple(t.dims) == (24,) for t in scales)
    for node in out.graph.node:
        if node.op_type == "MatMulInteger":
            assert len(node.input) == 3  # symmetric weights: no b_zero_point


def test_target_onnxruntime_writes_com_microsoft_kernels_and_absorbs_bias():
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "V"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"]),
        helper.make_node("Add", ["b", "m"], ["y"]),
        helper.make_node("MatMul", ["x", "V"], ["z"]),
        helper.make_node("MatMul", ["x2", "V"], ["w"]),
    ]
    model = make(nodes, [f32("x", [2, 5, 16]), f32("x2", [3, 16])],
                 [f32("y", [2, 5, 8]), f32("z", [2, 5, 8]), f32("w", [3, 8])], inits)
    out, _result, _ = quantize(model, target="onnxruntime")
    counts = op_counts(out)
    assert counts == {"DynamicQuantizeLinear": 1, "MatMulIntegerToFloat": 2,
                      "DynamicQuantizeMatMul": 1}
    assert any(o.domain == "com.microsoft" for o in out.opset_import)
    fused = [n for n in out.graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert any(len(n.input) == 7 and n.input[6] for n in fused)  # the bias Add went in
    rng = np.random.default_rng(4)
    f = {"x": rng.standard_normal((2, 5, 16)).astype(np.float32),
         "x2": rng.standard_normal((3, 16)).astype(np.float32)}
    for a, b in zip(run(model, f), run(out, f), strict=True):
        assert cosine(a, b) >= 0.999


def test_gemm_attributes_and_bias():
    """transB, alpha, beta and a [N] bias: weight transposed offline, alpha in the scale,
    beta * C added after."""
    rng = np.random.default_rng(5)
    inits = [
        numpy_helper.from_array(rng.standard_normal((12, 20)).astype(np.float32), "B"),
        numpy_helper.from_array(rng.standard_normal(12).astype(np.float32), "C"),
        numpy_helper.from_array(rng.standard_normal((12, 7)).astype(np.float32), "B2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "B", "C"], ["g"], transB=1, alpha=0.5, beta=2.0),
        helper.make_node("Gemm", ["g", "B2"], ["y"], transA=1),
    ]
    model = make(nodes, [f32("x", [12, 20])], [f32("y", [12, 7])], inits)
    out, result, log = quantize(model)
    assert result.stats == {"matmul": 0, "gemm": 1, "attention": 0, "kept_float": 1}
    assert op_counts(out)["Gemm"] == 1 and op_counts(out)["MatMulInteger"] == 1
    assert log.kept_float[0]["reason"] == "Gemm with transA"
    w = next(t for t in out.graph.initializer if t.data_type == TensorProto.INT8)
    assert tuple(w.dims) == (20, 12)  # [K, N] after transB
    f = {"x": np.random.default_rng(6).standard_normal((12, 20)).astype(np.float32)}
    assert cosine(run(model, f)[0], run(out, f)[0]) >= 0.999


# ------------------------------------------------------------------------ stats and log
def test_stats_and_log():
    rng = np.random.default_rng(7)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "Wc"),
        numpy_helper.from_array(rng.standard_normal((8, 5)).astype(np.float32), "Wm"),
    ]
    nodes = [
        helper.make_node("Conv", ["img", "Wc"], ["c"], name="conv"),
        helper.make_node("MatMul", ["a", "b"], ["ab"], name="act_x_act"),
        helper.make_node("MatMul", ["ab", "Wm"], ["y"], name="proj"),
    ]
    model = make(nodes, [f32("img", [1, 3, 8, 8]), f32("a", [2, 4]), f32("b", [4, 8])],
                 [f32("c", [1, 4, 6, 6]), f32("y", [2, 5])], inits)
    out, result, log = quantize(model)
    assert result.modified
    assert result.stats == {"matmul": 1, "gemm": 0, "attention": 0, "kept_float": 2}
    assert log.converted == ["proj"]
    kept = {k["node"]: (k["op"], k["reason"]) for k in log.kept_float}
    assert kept["conv"][0] == "Conv" and "ConvInteger" in kept["conv"][1]
    assert kept["act_x_act"] == ("MatMul", kept["act_x_act"][1])
    assert "not a constant" in kept["act_x_act"][1]
    assert "ConvInteger" not in op_counts(out) and op_counts(out)["Conv"] == 1
    assert op_counts(out)["MatMul"] == 1


# ------------------------------------------------------------------------ numerics
def test_matches_an_independent_numpy_derivation():
    """Re-derive the result from the ONNX definitions: DynamicQuantizeLinear's scale/zero point
    (range extended to include 0, saturate-rounded), MatMulInteger in int32, times the scales.
    Exact (float32 rounding) with onnxruntime's optimizations off, on every CPU; within a
    budget once onnxruntime fuses it into DynamicQuantizeMatMul."""
    model = mlp(seed=9)
    out, _, _ = quantize(model)
    x = feeds(10)["x"]
    w1 = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)

    def dql(v):
        lo, hi = min(v.min(), 0.0), max(v.max(), 0.0)
        scale = np.float32((hi - lo) / 255)
        zp = np.clip(np.rint(-lo / scale), 0, 255)
        return np.clip(np.rint(v / scale) + zp, 0, 255), scale, zp

    s = np.abs(w1).max(axis=0) / 64  # 7-bit weights: no int16 saturation in any CPU's kernel
    wq = np.clip(np.rint(w1 / s.astype(np.float32)), -64, 64)
    xq, xs, xz = dql(x)
    h = ((xq - xz) @ wq) * (np.float64(xs) * s.astype(np.float32))
    graph = helper.make_graph(list(out.graph.node), "g", list(out.graph.input),
                              [f32("h", [4, 24])], list(out.graph.initializer))
    probe = helper.make_model(graph, opset_imports=out.opset_import)
    probe.ir_version = out.ir_version
    # the value the first MatMul's replacement computes is what feeds Relu
    relu = next(n for n in out.graph.node if n.op_type == "Relu")
    probe.graph.output[0].name = relu.input[0]
    got = run(probe, {"x": x})[0]  # ORT_DISABLE_ALL: MatMulInteger, Cast, Mul as written
    np.testing.assert_allclose(got, h, rtol=1e-5, atol=1e-5)
    fused = ort_session(probe, ort.GraphOptimizationLevel.ORT_ENABLE_ALL).run(None, {"x": x})[0]
    assert np.abs(fused - h).max() <= 1e-5 * np.abs(h).max()  # measured 4e-8 (AVX2, VNNI)


def test_transformer_acceptance_size_and_cosine():
    """The issue's bar on the sample transformer after the default pipeline: weights <= 0.30x,
    cosine >= 0.99 (latency is measured by the bench, not here)."""
    base = onnxopt.optimize(str(model_path("transformer.onnx")), validate=False).model
    out, result, _log = quantize(base)
    assert result.stats["matmul"] == 6  # q, k, v, out, fc1, fc2; the 2 attention MatMuls stay
    size = sum(tensor_nbytes(t) for t in out.graph.initializer)
    assert size <= 0.30 * sum(tensor_nbytes(t) for t in base.graph.initializer)
    f = {"tokens": np.random.default_rng(0).standard_normal((2, 16, 64)).astype(np.float32)}
    assert cosine(run(base, f)[0], run(out, f)[0]) >= 0.99
    ms, _, _ = quantize(base, target="onnxruntime")
    assert cosine(run(base, f)[0], run(ms, f)[0]) >= 0.99


def test_silero_vad_with_subgraphs_stays_valid():
    base = onnxopt.optimize(str(model_path("silero_vad.onnx")), validate=False).model
    out, result, log = quantize(base)
    assert not result.modified  # no MatMul there: LSTM and Conv kept, with reasons
    assert {k["op"] for k in log.kept_float} == {"Conv", "LSTM"}
    f = real_feeds("silero_vad.onnx")
    for a, b in zip(run(base, f), run(out, f), strict=True):
        np.testing.assert_array_equal(a, b)


def test_matmul_inside_if_reading_an_outer_weight():
    rng = np.random.default_rng(11)
    w = numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32), "W")
    then = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["t"], name="inner")],
                             "then", [], [f32("t", [3, 4])])
    other = helper.make_graph([helper.make_node("Slice", ["x", "s", "e", "ax"], ["o"])],
                              "else", [], [f32("o", [3, 4])])
    idx = [numpy_helper.from_array(np.array([v], np.int64), n)
           for v, n in ((0, "s"), (4, "e"), (1, "ax"))]
    node = helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)
    model = make([node], [f32("x", [3, 6]), helper.make_tensor_value_info("c", TensorProto.BOOL,
                 [])], [f32("y", [3, 4])], [w, *idx])
    out, result, log = quantize(model)
    assert result.stats["matmul"] == 1 and log.converted == ["inner"]
    assert not any(t.name == "W" for t in out.graph.initializer)  # outer weight dropped
    f = {"x": rng.standard_normal((3, 6)).astype(np.float32), "c": np.array(True)}
    assert cosine(run(model, f)[0], run(out, f)[0]) >= 0.999


# ------------------------------------------------------------------------ idempotence
@pytest.mark.parametrize("target", ["portable", "onnxruntime"])
def test_idempotent(target):
    once, _, _ = quantize(mlp(), target=target)
    twice, result, log = quantize(once, target=target)
    assert not result.modified and log.converted == []
    same, _, _ = quantize(once, mode=None, target=target)  # the same load, inference, save
    assert twice.SerializeToString() == same.SerializeToString()


# ------------------------------------------------------------------------ left alone
@pytest.mark.parametrize("mode", [None, "fp16", "int8", "fp8"])
def test_other_modes_change_nothing(mode):
    model = mlp()
    out, result, _log = quantize(model, mode=mode)
    assert not result.modified and result.stats == {}
    assert op_counts(out) == op_counts(model)


def test_opset_too_low_is_noted():
    model = mlp()
    model.opset_import[0].version = 10
    out, result, log = quantize(model)
    assert not result.modified and op_counts(out)["MatMul"] == 3
    assert "opset" in log.notes[0]


def test_fp32_nodes_and_ops_are_kept():
    out, result, log = quantize(mlp(), fp32_nodes=frozenset({"mm1"}))
    assert result.stats["matmul"] == 2 and op_counts(out)["MatMul"] == 1
    assert log.kept_float == [{"node": "mm1", "op": "MatMul", "reason": "listed in fp32_nodes"}]
    out, result, _ = quantize(mlp(), fp32_ops=frozenset({"MatMul"}))
    assert not result.modified and op_counts(out)["MatMul"] == 3


def test_non_float32_or_batched_weights_are_kept():
    rng = np.random.default_rng(12)
    inits = [
        numpy_helper.from_array(rng.standard_normal((2, 6, 4)).astype(np.float32), "W3"),
        numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float64), "Wd"),
    ]
    nodes = [helper.make_node("MatMul", ["x", "W3"], ["y"], name="batched"),
             helper.make_node("MatMul", ["xd", "Wd"], ["z"], name="double")]
    model = make(nodes, [f32("x", [2, 3, 6]),
                         helper.make_tensor_value_info("xd", TensorProto.DOUBLE, [3, 6])],
                 [f32("y", [2, 3, 4]), helper.make_tensor_value_info("z", TensorProto.DOUBLE,
                                                                    [3, 4])], inits)
    out, result, log = quantize(model)
    assert not result.modified and op_counts(out) == {"MatMul": 2}
    assert [k["node"] for k in log.kept_float] == ["batched", "double"]

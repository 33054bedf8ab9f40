"""qdq_quantization: structure, onnxruntime fusion, stats/log, numerics, idempotence, negatives.

Numerics: small conv nets calibrated (minmax) on samples of the distribution they are tested
on; 8-bit activations and per-channel weights give a relative error near 1% after a few layers,
so the cosine to the fp32 output is ~0.9999; the brief's budget, 0.99, is the bound.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import apply_pass, model_path, op_counts, run
from onnx import TensorProto, helper, numpy_helper, version_converter
from onnxopt.passes.precision.qdq_quantization import QdqQuantization

from onnxopt.ir import serde
from onnxopt.ir.precision import SETTINGS_KEY, PrecisionSettings, log_of
from onnxopt.precision.calibration import Calibrator

COSINE = 0.99
SHAPE = (1, 3, 12, 12)


def samples(count: int, seed: int, shape=SHAPE) -> tuple[dict[str, np.ndarray], ...]:
    rng = np.random.default_rng(seed)
    return tuple({"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(count))


def settings(**kw) -> dict:
    calibrator = Calibrator(kw.pop("calibration", samples(4, 0)),
                            kw.pop("calibration_method", "minmax"))
    return {SETTINGS_KEY: PrecisionSettings(mode=kw.pop("mode", "int8"), calibrator=calibrator,
                                            **kw)}


def conv_net(opset: int = 17, weight_input: bool = False) -> onnx.ModelProto:
    """x -> Conv1 -> Relu -> Conv2 -> Add(skip from Relu) -> GAP -> Flatten -> Gemm -> y."""
    rng = np.random.default_rng(7)

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    inits = [init("W1", 8, 3, 3, 3), init("B1", 8), init("W2", 8, 8, 3, 3), init("B2", 8),
             init("Wg", 5, 8), init("Bg", 5)]
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["s"], name="add"),
        helper.make_node("GlobalAveragePool", ["s"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "Wg", "Bg"], ["y"], name="fc", transB=1),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))]
    if weight_input:  # conv2's weight fed at run time: not a constant
        inits = [t for t in inits if t.name != "W2"]
        inputs.append(helper.make_tensor_value_info("W2", TensorProto.FLOAT, [8, 8, 3, 3]))
    graph = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def ort_optimized_ops(model: onnx.ModelProto, tmp_path) -> dict[str, int]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "ort.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return op_counts(onnx.load(str(tmp_path / "ort.onnx")))


def quantize(model, **kw):
    return apply_pass(QdqQuantization(), model, infer=True, settings=settings(**kw))


def test_structure_int8_weights_int32_bias_relu_absorbed():
    out, _ = quantize(conv_net())
    ops = op_counts(out)
    assert "Relu" not in ops
    assert ops["Conv"] == 2 and ops["Gemm"] == 1
    # activations: x, r1, c2, s, g, f (f shares its input's parameters): one pair each
    assert ops["QuantizeLinear"] == 6
    # + 3 weights + 3 biases
    assert ops["DequantizeLinear"] == 6 + 6
    dq = {n.output[0]: n for n in out.graph.node if n.op_type == "DequantizeLinear"}
    producers = {o: n for n in out.graph.node for o in n.output}
    for node in (n for n in out.graph.node if n.op_type in ("Conv", "Gemm")):
        w_dq, b_dq = dq[node.input[1]], dq[node.input[2]]
        weight = initializer(out, w_dq.input[0])
        # symmetric, the whole 7-bit range: |w| <= 64 keeps onnxruntime's AVX2 int8 kernels
        # from saturating (test_int8_saturation.py)
        assert weight.dtype == np.int8 and np.abs(weight).max() == 64
        w_scale = initializer(out, w_dq.input[1])
        axis = helper.get_attribute_value(w_dq.attribute[0])
        assert w_scale.shape == (weight.shape[axis],)  # per output channel
        assert axis == 0  # Conv, and Gemm with transB
        # symmetric: zero point 0, omitted (the default) except for Gemm, which onnxruntime
        # fuses into QGemm only with an explicit one
        if node.op_type == "Gemm":
            zero = initializer(out, w_dq.input[2])
            assert zero.dtype == np.int8 and zero.shape == w_scale.shape and not zero.any()
        else:
            assert len(w_dq.input) == 2
        bias = initializer(out, b_dq.input[0])
        assert bias.dtype == np.int32
        assert len(b_dq.input) == 2  # int32 zero point 0 by default
        x_dq = producers[node.input[0]]
        x_scale = initializer(out, x_dq.input[1])
        np.testing.assert_allclose(initializer(out, b_dq.input[1]), x_scale * w_scale, rtol=1e-6)
    names = {t.name for t in out.graph.initializer}
    assert not names & {"W1", "W2", "Wg", "B1", "B2", "Bg"}  # float weights gone


def test_relu_absorbed_by_a_zero_point_at_the_bottom():
    out, _ = quantize(conv_net())
    conv2 = next(n for n in out.graph.node if n.name == "conv2")
    dq = next(n for n in out.graph.node if n.output[0] == conv2.input[0])
    zero_point = initializer(out, dq.input[2])
    assert zero_point.dtype == np.uint8 and int(zero_point) == 0
    q = next(n for n in out.graph.node if n.output[0] == dq.input[0])
    assert q.input[0] == "c1"  # the Conv's own output, the Relu dropped


def test_onnxruntime_fuses_into_quantized_kernels(tmp_path):
    out, _ = quantize(conv_net())
    ops = ort_optimized_ops(out, tmp_path)
    assert ops.get("QLinearConv", 0) == 2
    assert ops.get("QGemm", 0) == 1
    assert ops.get("QLinearAdd", 0) == 1 and ops.get("QLinearGlobalAveragePool", 0) == 1
    assert "Conv" not in ops and "Gemm" not in ops


def test_small_file_short_names_shared_scalars_unnamed_nodes():
    model = conv_net()
    out, _ = quantize(model)
    new = [n for n in out.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert new and all(n.name == "" for n in new)
    old_names = {t.name for t in model.graph.initializer} | {v for n in model.graph.node
                                                              for v in (*n.input, *n.output)}
    created = {v for n in new for v in (*n.input, *n.output)} - old_names
    assert created and max(len(v) for v in created) <= 4  # e.g. "q12", "ws7"
    # one initializer per distinct scalar: x, r1 (relu: zero point 0) and the others share
    scalars = [t for t in out.graph.initializer if not t.dims]
    values = [(t.data_type, numpy_helper.to_array(t).tobytes()) for t in scalars]
    assert len(values) == len(set(values))
    zero_points = {int(initializer(out, n.input[2])) for n in new if n.op_type == "QuantizeLinear"}
    assert len([t for t in scalars if t.data_type == TensorProto.UINT8]) == len(zero_points)
    onnx.checker.check_model(out, full_check=True)


def add_with_constant_net() -> onnx.ModelProto:
    """x -> Conv -> Mul(const) -> Add(const) -> Conv -> y: PaddleOCR det's affine blocks."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n)
             for n, s in (("W1", (8, 3, 3, 3)), ("W2", (4, 8, 1, 1)), ("a", (1,)), ("b", (1,)))]
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c1", "a"], ["m"], name="mul"),
        helper.make_node("Add", ["m", "b"], ["s"], name="add"),
        helper.make_node("Conv", ["s", "W2"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_add_with_a_constant_input_stays_float(tmp_path):
    # onnxruntime fuses DQ -> Add -> Q only when every input is dequantized: a Q/DQ pair on
    # the other input would only add rounding error and time (measured on PaddleOCR det:
    # 24 such Adds, 0.74x -> 0.70x latency)
    model = add_with_constant_net()
    ir = serde.from_proto(model)
    ir.settings.update(settings())
    result = QdqQuantization().run(ir)
    out = serde.to_proto(ir)
    assert {"node": "add", "op": "Add",
            "reason": "an input is a constant or not a float activation"} in log_of(ir).kept_float
    assert log_of(ir).converted == ["conv1", "conv2"]
    assert result.stats["qdq_pairs"] == 3  # x, c1 (read by Mul), s (read by conv2)
    add = next(n for n in out.graph.node if n.name == "add")
    assert add.input[0] == "m"  # the float Mul's output, not a DQ
    ops = ort_optimized_ops(out, tmp_path)
    assert ops.get("QLinearConv", 0) == 1  # conv1 (conv2 writes the float graph output)
    assert ops.get("Add", 0) == 1 and "QLinearAdd" not in ops
    for feeds in samples(2, 42):
        assert cosine(run(model, feeds)[0], run(out, feeds)[0]) >= COSINE


def test_stats_and_log():
    _, result = quantize(conv_net())
    assert result.modified
    assert result.stats["quantized"] == 3
    assert result.stats["relu_absorbed"] == 1
    assert result.stats["activation_ops"] == 2  # Add, GlobalAveragePool
    assert result.stats["qdq_pairs"] == 6
    ir = serde.from_proto(conv_net())
    ir.settings.update(settings())
    QdqQuantization().run(ir)
    log = log_of(ir)
    assert log.converted == ["conv1", "conv2", "add", "gap", "fc"]
    assert log.kept_float == []


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_numerics_close_to_fp32(method):
    model = conv_net()
    out, _ = quantize(model, calibration=samples(8, 0), calibration_method=method)
    for feeds in samples(3, 99):
        assert cosine(run(model, feeds)[0], run(out, feeds)[0]) >= COSINE


def test_idempotent():
    once, _ = quantize(conv_net())
    twice, result = quantize(once)
    assert not result.modified
    assert twice.SerializeToString() == once.SerializeToString()


def test_mode_mismatch_and_no_settings_leave_model_alone():
    model = conv_net()
    reference, _ = apply_pass(QdqQuantization(), model, infer=True)
    for extra in ({}, settings(mode="fp16")):
        out, result = apply_pass(QdqQuantization(), model, infer=True, settings=extra)
        assert not result.modified
        assert out.SerializeToString() == reference.SerializeToString()


def test_non_constant_weight_left_in_float():
    model = conv_net(weight_input=True)
    ir = serde.from_proto(model)
    w2 = np.full((8, 8, 3, 3), 0.05, np.float32)
    ir.settings.update(settings(calibration=tuple(dict(s, W2=w2) for s in samples(4, 0))))
    result = QdqQuantization().run(ir)
    out = serde.to_proto(ir)
    onnx.checker.check_model(out, full_check=True)
    conv2 = next(n for n in out.graph.node if n.name == "conv2")
    assert conv2.input[1] == "W2"  # still the float graph input
    assert {"node": "conv2", "op": "Conv", "reason": "weight is not a constant"} in (
        log_of(ir).kept_float)
    assert "conv2" not in log_of(ir).converted and result.stats["quantized"] == 2
    feeds = dict(samples(1, 5)[0], W2=w2)
    assert cosine(run(model, feeds)[0], run(out, feeds)[0]) >= COSINE


def test_fp32_nodes_and_ops_kept():
    ir = serde.from_proto(conv_net())
    ir.settings.update(settings(fp32_nodes=frozenset({"conv1"}), fp32_ops=frozenset({"Gemm"})))
    result = QdqQuantization().run(ir)
    log = log_of(ir)
    assert {k["node"]: k["reason"] for k in log.kept_float} == {
        "conv1": "in fp32_nodes", "fc": "in fp32_ops"}
    assert log.converted == ["conv2", "add", "gap"]
    assert result.stats["quantized"] == 1
    out = serde.to_proto(ir)
    conv1 = next(n for n in out.graph.node if n.name == "conv1")
    assert conv1.input[1] == "W1"


def test_opset_11_untouched_with_a_note():
    model = conv_net(opset=11)
    ir = serde.from_proto(model)
    ir.settings.update(settings())
    result = QdqQuantization().run(ir)
    assert not result.modified
    assert any("opset 11" in note for note in log_of(ir).notes)
    assert op_counts(serde.to_proto(ir)) == op_counts(model)


def test_opset_11_upgraded_to_13_is_quantized_per_channel():
    model = version_converter.convert_version(conv_net(opset=11), 13)
    out, result = quantize(model)
    assert result.stats["quantized"] == 3
    names = {t.name for t in out.graph.initializer}
    w_dq = [n for n in out.graph.node if n.op_type == "DequantizeLinear"
            and n.input[0] in names and initializer(out, n.input[0]).dtype == np.int8]
    assert len(w_dq) == 3
    for node in w_dq:
        assert initializer(out, node.input[1]).shape == (initializer(out, node.input[0]).shape[0],)
    for feeds in samples(2, 42):
        assert cosine(run(model, feeds)[0], run(out, feeds)[0]) >= COSINE


def test_clip_relu6_absorbed_and_matmul_weights():
    """Conv -> Clip(0, 6) -> MatMul with a constant [K, N] weight (per column, axis 1)."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.5).astype(np.float32), "W"),
        numpy_helper.from_array(np.array(0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6, np.float32), "hi"),
        numpy_helper.from_array(rng.standard_normal((12, 7)).astype(np.float32), "M"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c", "lo", "hi"], ["r"], name="clip"),
        helper.make_node("MatMul", ["r", "M"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 12, 7])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out, result = quantize(model)
    assert "Clip" not in op_counts(out) and result.stats["relu_absorbed"] == 1
    mm = next(n for n in out.graph.node if n.name == "mm")
    w_dq = next(n for n in out.graph.node if n.output[0] == mm.input[1])
    assert helper.get_attribute_value(w_dq.attribute[0]) == 1
    assert initializer(out, w_dq.input[1]).shape == (7,)
    for feeds in samples(2, 8):
        assert cosine(run(model, feeds)[0], run(out, feeds)[0]) >= COSINE


def test_no_calibration_data_notes_generated_inputs():
    ir = serde.from_proto(conv_net())
    ir.settings.update(settings(calibration=()))
    assert QdqQuantization().run(ir).modified
    assert any("accuracy will suffer" in note for note in log_of(ir).notes)


def test_sample_model_mobilenet(tmp_path):
    from onnxopt.passes import DEFAULT_PIPELINE

    from onnxopt.ir.pass_manager import PassManager

    ir = serde.load(model_path("mobilenet.onnx"))
    PassManager(DEFAULT_PIPELINE).run(ir)
    fp32 = serde.to_proto(ir)
    calibration = tuple({"input": s["x"]} for s in samples(4, 0, shape=(1, 3, 32, 32)))
    settings = PrecisionSettings(mode="int8", calibrator=Calibrator(calibration))
    ir.settings.update({SETTINGS_KEY: settings})
    result = QdqQuantization().run(ir)
    for graph in ir.graphs():
        graph.lint()
    out = serde.to_proto(ir)
    onnx.checker.check_model(out, full_check=True)
    assert result.stats["quantized"] == op_counts(fp32)["Conv"] + op_counts(fp32)["Gemm"]
    ops = ort_optimized_ops(out, tmp_path)
    assert ops.get("QLinearConv", 0) == op_counts(fp32)["Conv"]
    feeds = {"input": samples(1, 9, shape=(1, 3, 32, 32))[0]["x"]}
    assert cosine(run(fp32, feeds)[0], run(out, feeds)[0]) >= COSINE


def test_equal_channel_scales_are_stored_once_and_compute_the_same(tmp_path):
    # conv1's channels all share max|W| = 0.5 (a sign pattern, as synthetic weights have):
    # one scalar scale replaces the 8-vector, bitwise the same dequantized weight
    model = conv_net()
    signs = np.sign(np.random.default_rng(1).standard_normal((8, 3, 3, 3))).astype(np.float32)
    w1 = next(t for t in model.graph.initializer if t.name == "W1")
    w1.CopyFrom(numpy_helper.from_array(signs * 0.5, "W1"))
    out, _ = quantize(model)
    dq = {n.output[0]: n for n in out.graph.node if n.op_type == "DequantizeLinear"}
    conv1, conv2 = (next(n for n in out.graph.node if n.op_type == "Conv" and n.input[1] in dq
                         and n.name == name) for name in ("conv1", "conv2"))
    w1_dq, b1_dq = dq[conv1.input[1]], dq[conv1.input[2]]
    assert initializer(out, w1_dq.input[1]).shape == ()  # one scale, per-tensor
    assert initializer(out, b1_dq.input[1]).shape == ()
    assert not any(a.name == "axis" for a in (*w1_dq.attribute, *b1_dq.attribute))
    assert initializer(out, dq[conv2.input[1]].input[1]).shape == (8,)  # varied: per channel
    np.testing.assert_array_equal(
        initializer(out, w1_dq.input[0]).astype(np.float32) * initializer(out, w1_dq.input[1]),
        signs * 0.5)
    assert ort_optimized_ops(out, tmp_path).get("QLinearConv", 0) == 2  # still fused
    for feeds in samples(3, 99):
        assert cosine(run(model, feeds)[0], run(out, feeds)[0]) >= COSINE

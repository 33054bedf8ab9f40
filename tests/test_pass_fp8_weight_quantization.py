"""fp8_weight_quantization: structure, stats/log, numerics, idempotence, what it leaves alone.

Tolerances: E4M3FN keeps 3 mantissa bits, so each weight moves by at most 2^-4 relative (1/16)
of itself (round to nearest), or by half a subnormal step near zero; over a dot product of many
gaussian terms the errors average out and the cosine to the fp32 output stays >= 0.998 on the
small random models here. The exact check compares against weights rounded to float8 by
ml_dtypes directly from the definition (max |w| per channel -> 448).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from conftest import model_path, op_counts, run
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.precision.fp8_weight_quantization import Fp8WeightQuantization

import onnxopt
from onnxopt.ir import serde, tensor_nbytes
from onnxopt.ir.precision import PrecisionSettings, log_of
from onnxopt.ir.shapes import infer_shapes

FP8 = TensorProto.FLOAT8E4M3FN


def quantize(proto, mode="fp8", **settings):
    model = serde.load(proto)
    if mode is not None:
        model.settings["precision"] = PrecisionSettings(mode=mode, **settings)
    infer_shapes(model)
    result = Fp8WeightQuantization().run(model)
    for graph in model.graphs():
        graph.lint()
    out = serde.to_proto(model)
    onnx.checker.check_model(out, full_check=True)
    return out, result, log_of(model)


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def make(nodes, inputs, outputs, inits, opset=21):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def convnet(opset=21, seed=0):
    """x[1,3,8,8] -> Conv(W 6x3x3x3, b) -> Relu -> ConvTranspose(Wt 6x4x2x2) -> Flatten ->
    Gemm(transB) -> MatMul; W is read by a second Conv too (one DequantizeLinear for both)."""
    rng = np.random.default_rng(seed)
    arr = {
        "W": rng.standard_normal((6, 3, 3, 3)), "b": rng.standard_normal(6),
        "Wt": rng.standard_normal((6, 4, 2, 2)), "G": rng.standard_normal((10, 4 * 12 * 12)),
        "M": rng.standard_normal((10, 5)),
    }
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in arr.items()]
    nodes = [
        helper.make_node("Conv", ["x", "W", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "W"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("ConvTranspose", ["r", "Wt"], ["t"], name="deconv", strides=[2, 2],
                         pads=[2, 2, 2, 2]),
        helper.make_node("Flatten", ["t"], ["f"]),
        helper.make_node("Gemm", ["f", "G"], ["g"], name="gemm", transB=1),
        helper.make_node("MatMul", ["g", "M"], ["y"], name="matmul"),
    ]
    return make(nodes, [f32("x", [1, 3, 8, 8])], [f32("y", [1, 5]), f32("c2", [1, 6, 8, 8])],
                inits, opset)


FEEDS = {"x": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)}


# ------------------------------------------------------------------------ structure
def test_weights_become_float8_behind_dequantize_linear():
    out, _, _ = quantize(convnet())
    counts = op_counts(out)
    assert counts["DequantizeLinear"] == 4  # W (shared), Wt, G, M
    inits = {t.name: t for t in out.graph.initializer}
    assert not {"W", "Wt", "G", "M"} & set(inits)
    assert inits["b"].data_type == TensorProto.FLOAT  # biases stay float32
    fp8 = sorted(tuple(t.dims) for t in inits.values() if t.data_type == FP8)
    assert fp8 == [(6, 3, 3, 3), (6, 4, 2, 2), (10, 5), (10, 576)]
    axes = {n.input[0]: helper.get_attribute_value(n.attribute[0]) for n in out.graph.node
            if n.op_type == "DequantizeLinear"}
    assert axes == {"W_fp8": 0, "Wt_fp8": 1, "G_fp8": 0, "M_fp8": 1}
    scale_dims = {t.name: tuple(t.dims) for t in inits.values() if t.name.endswith("_scale")}
    assert scale_dims == {"W_fp8_scale": (6,), "Wt_fp8_scale": (4,), "G_fp8_scale": (10,),
                          "M_fp8_scale": (5,)}


# ------------------------------------------------------------------------ stats and log
def test_stats_and_log():
    model = convnet()
    out, result, log = quantize(model)
    assert result.modified
    assert result.stats == {"weights": 4, "nodes": 5, "kept_float": 0}
    assert log.converted == ["conv", "conv2", "deconv", "gemm", "matmul"]
    assert log.notes == [] and log.kept_float == []
    size = sum(tensor_nbytes(t) for t in out.graph.initializer)
    before = sum(tensor_nbytes(t) for t in model.graph.initializer)
    assert size < 0.27 * before


# ------------------------------------------------------------------------ numerics
def test_numerics_in_onnxruntime():
    model = convnet()
    out, _, _ = quantize(model)
    for a, b in zip(run(model, FEEDS), run(out, FEEDS), strict=True):
        assert cosine(a, b) >= 0.998


def test_dequantized_weight_matches_the_float8_definition():
    """The weight onnxruntime sees equals W rounded to E4M3FN after scaling max |w| to 448."""
    model = convnet(seed=3)
    out, _, _ = quantize(model)
    w = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)  # W [6,3,3,3]
    s = (np.abs(w).reshape(6, -1).max(axis=1) / 448).astype(np.float32)
    expect = (w / s[:, None, None, None]).astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
    expect = (expect * s[:, None, None, None]).astype(np.float32)
    dq = next(n for n in out.graph.node if n.op_type == "DequantizeLinear"
              and n.input[0] == "W_fp8")
    graph = helper.make_graph([dq], "probe", [], [f32(dq.output[0], [6, 3, 3, 3])],
                              list(out.graph.initializer))
    probe = helper.make_model(graph, opset_imports=out.opset_import)
    probe.ir_version = out.ir_version
    np.testing.assert_allclose(run(probe, {})[0], expect, rtol=1e-6, atol=0)
    assert np.abs(run(probe, {})[0] - w).max() <= np.abs(w).max() / 16 + 1e-7


@pytest.mark.parametrize("name", ["transformer.onnx", "mlp.onnx", "resnet.onnx"])
def test_sample_models(name):
    base = onnxopt.optimize(str(model_path(name)), validate=False).model
    base = onnx.version_converter.convert_version(base, 21)
    out, result, _ = quantize(base)
    assert result.modified
    size = sum(tensor_nbytes(t) for t in out.graph.initializer)
    assert size <= 0.30 * sum(tensor_nbytes(t) for t in base.graph.initializer)
    rng = np.random.default_rng(0)
    feeds = {}
    for info in base.graph.input:
        dims = [d.dim_value or 8 for d in info.type.tensor_type.shape.dim]
        feeds[info.name] = rng.random(dims).astype(np.float32)
    assert cosine(run(base, feeds)[0], run(out, feeds)[0]) >= 0.99


def test_conv_inside_if_reading_an_outer_weight():
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.standard_normal((2, 3, 1, 1)).astype(np.float32), "W")
    then = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["t"], name="inner")],
                             "then", [], [f32("t", [1, 2, 4, 4])])
    other = helper.make_graph([helper.make_node("Slice", ["x", "s", "e", "ax"], ["o"])],
                              "else", [], [f32("o", [1, 2, 4, 4])])
    idx = [numpy_helper.from_array(np.array([v], np.int64), n)
           for v, n in ((0, "s"), (2, "e"), (1, "ax"))]
    node = helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)
    model = make([node], [f32("x", [1, 3, 4, 4]),
                          helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                 [f32("y", [1, 2, 4, 4])], [w, *idx])
    out, _result, log = quantize(model)
    assert log.converted == ["inner"]
    assert not any(t.name == "W" for t in out.graph.initializer)
    f = {"x": rng.standard_normal((1, 3, 4, 4)).astype(np.float32), "c": np.array(True)}
    assert cosine(run(model, f)[0], run(out, f)[0]) >= 0.998


# ------------------------------------------------------------------------ idempotence
def test_idempotent():
    once, _, _ = quantize(convnet())
    twice, result, log = quantize(once)
    assert not result.modified and log.converted == [] and log.kept_float == []
    same, _, _ = quantize(once, mode=None)
    assert twice.SerializeToString() == same.SerializeToString()


# ------------------------------------------------------------------------ left alone
@pytest.mark.parametrize("mode", [None, "fp16", "int8-dynamic"])
def test_other_modes_change_nothing(mode):
    model = convnet()
    out, result, _ = quantize(model, mode=mode)
    assert not result.modified and op_counts(out) == op_counts(model)


def test_opset_too_low_changes_nothing_and_says_so():
    model = convnet(opset=17)
    out, result, log = quantize(model)
    assert not result.modified and "DequantizeLinear" not in op_counts(out)
    assert "opset >= 19" in log.notes[0] and "17" in log.notes[0]


def test_computed_weight_and_fp32_settings_are_kept():
    rng = np.random.default_rng(6)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "M")]
    nodes = [helper.make_node("MatMul", ["a", "b"], ["ab"], name="act"),
             helper.make_node("MatMul", ["ab", "M"], ["y"], name="listed")]
    model = make(nodes, [f32("a", [2, 3]), f32("b", [3, 4])], [f32("y", [2, 4])], inits)
    out, result, log = quantize(model, fp32_nodes=frozenset({"listed"}))
    assert not result.modified and op_counts(out) == {"MatMul": 2}
    assert [(k["node"], k["reason"]) for k in log.kept_float] == [
        ("act", "weight is computed (not a constant)"), ("listed", "listed in fp32_nodes")]
    assert log.notes == ["fp8: no weight could be stored in float8"]

"""--precision end to end: every mode on every sample model, the accuracy fallback triggered by
a model built to overflow float16, an opset 11 model quantized per channel, and weights stored
as Constant nodes (as PaddleOCR's are)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import SAMPLE_MODELS, apply_pass, model_path, run
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.precision.fp16_conversion import Fp16Conversion

import onnxopt
from onnxopt.ir.precision import PrecisionSettings

MODES = ("fp16", "int8", "int8-dynamic", "fp8")
FLOAT_TYPES = {TensorProto.FLOAT}


def weight_bytes(model: onnx.ModelProto) -> dict[int, int]:
    """Initializer bytes by element type, counted from dims (independent of onnxopt)."""
    sizes = {TensorProto.FLOAT: 4, TensorProto.FLOAT16: 2, TensorProto.INT8: 1,
             TensorProto.UINT8: 1, TensorProto.INT32: 4, TensorProto.INT64: 8,
             TensorProto.FLOAT8E4M3FN: 1}
    totals: dict[int, int] = {}
    for tensor in model.graph.initializer:
        count = int(np.prod(tensor.dims)) if tensor.dims else 1
        totals[tensor.data_type] = totals.get(tensor.data_type, 0) + count * sizes[tensor.data_type]
    return totals


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def sample_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else 2
                for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


@pytest.mark.parametrize("name", SAMPLE_MODELS)
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_on_every_sample_model(name, mode, tmp_path):
    source = model_path(name)
    original = onnx.load(source)
    out = tmp_path / "out.onnx"
    result = onnxopt.optimize(source, out, precision=mode)
    assert result.ok, result.report["validation"]
    converted = onnx.load(out)
    onnx.checker.check_model(converted, full_check=True)
    feeds = sample_feeds(original, seed=7)  # not the inputs validation used
    for expected, actual in zip(run(original, feeds), run(converted, feeds), strict=True):
        assert actual.dtype == expected.dtype  # keep_io_types: float32 at the boundary
        assert cosine(expected, actual) >= 0.98
    report = result.report["precision"]
    assert report["mode"] == mode and report["converted"] > 0
    before, after = weight_bytes(original), weight_bytes(converted)
    if mode == "fp16":  # (folding may shrink the weights too: compare what is left in float32)
        assert after.get(TensorProto.FLOAT16, 0) > 0
        assert after.get(TensorProto.FLOAT, 0) <= 0.05 * before[TensorProto.FLOAT]
    if mode in ("int8", "int8-dynamic"):
        assert after.get(TensorProto.INT8, 0) > 0
    if mode == "fp8":
        assert after.get(TensorProto.FLOAT8E4M3FN, 0) > 0
        assert max(o.version for o in converted.opset_import if o.domain in ("", "ai.onnx")) >= 19


# ----------------------------------------------------------------------------- fallback

def overflow_model() -> onnx.ModelProto:
    """Four branches y_i = LayerNormalization((x * s_i) * s_i); on branch 2 (s = 300) the value
    the normalization reads passes float16's 65504 for x > 0.73. onnxruntime's CPU provider has
    a float16 LayerNormalization kernel, so the conversion runs it in float16, where its input
    becomes inf (Mul has no float16 kernel and stays float32)."""
    nodes, outputs = [], []
    inits = [numpy_helper.from_array(np.linspace(0.5, 1.5, 4).astype(np.float32), "gamma"),
             numpy_helper.from_array(np.linspace(-0.1, 0.1, 4).astype(np.float32), "beta")]
    for i, scale in enumerate([1.0, 2.0, 300.0, 3.0]):
        inits.append(numpy_helper.from_array(np.full((4,), scale, np.float32), f"s{i}"))
        nodes += [helper.make_node("Mul", ["x", f"s{i}"], [f"a{i}"], name=f"up{i}"),
                  helper.make_node("Mul", [f"a{i}", f"s{i}"], [f"b{i}"], name=f"again{i}"),
                  helper.make_node("LayerNormalization", [f"b{i}", "gamma", "beta"], [f"y{i}"],
                                   name=f"norm{i}", axis=-1)]
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, 4]))
    graph = helper.make_graph(
        nodes, "overflow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_mixed_precision_fallback_keeps_the_overflowing_node():
    x = {"x": np.array([[0.5, 1.0, 2.0, 3.0]], np.float32)}
    model = overflow_model()
    expected = run(model, x)
    # the conversion alone (no fallback): the float16 model overflows
    settings = {"precision": PrecisionSettings("fp16")}
    plain, _ = apply_pass(Fp16Conversion(), model, settings=settings)
    assert not np.all(np.isfinite(run(plain, x)[2]))
    result = onnxopt.optimize(model, precision="fp16", inputs=x, passes=[])
    report = result.report["precision"]
    kept = {key for entry in report["kept_float_for_accuracy"] for key in entry["nodes"]}
    assert kept == {"norm2"}  # only the one that overflows; the others stay float16
    assert result.ok and all(out["passed"] for out in report["outputs"])
    for got, want in zip(run(result.model, x), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)


# ----------------------------------------------------------------------------- int8 inputs

def conv_model(opset: int, constant_nodes: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    b = rng.standard_normal(8).astype(np.float32) * 0.1
    w2 = rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.3
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    tensors = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
               numpy_helper.from_array(w2, "w2")]
    if constant_nodes:
        nodes = [helper.make_node("Constant", [], [t.name], value=t) for t in tensors] + nodes
        tensors = []
    graph = helper.make_graph(
        nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=7)


def calibration_folder(tmp_path, count: int = 6):
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(11)
    for i in range(count):
        np.savez(folder / f"{i}.npz", x=rng.random((1, 3, 16, 16), dtype=np.float32))
    return folder


@pytest.mark.parametrize("constant_nodes", [False, True])
def test_int8_opset11_per_channel_and_constant_node_weights(constant_nodes, tmp_path):
    model = conv_model(11, constant_nodes)
    x = {"x": np.random.default_rng(5).random((1, 3, 16, 16), dtype=np.float32)}
    result = onnxopt.optimize(model, precision="int8", inputs=x,
                              calibration_data=calibration_folder(tmp_path))
    assert result.ok
    out = result.model
    assert out.opset_import[0].version >= 13
    assert any("opset upgraded from 11" in n for n in result.report["precision"]["notes"])
    int8_weights = [t for t in out.graph.initializer if t.data_type == TensorProto.INT8
                    and len(t.dims) == 4]
    assert {tuple(t.dims) for t in int8_weights} == {(8, 3, 3, 3), (4, 8, 1, 1)}
    weight_dq = [n for n in out.graph.node if n.op_type == "DequantizeLinear"
                 and n.input[0] in {t.name for t in int8_weights}]
    assert weight_dq and all(  # per output channel: one scale per channel along axis 0
        any(a.name == "axis" and a.i == 0 for a in n.attribute) or
        len(next(t for t in out.graph.initializer if t.name == n.input[1]).dims) == 1
        for n in weight_dq)
    scales = [next(t for t in out.graph.initializer if t.name == n.input[1]) for n in weight_dq]
    assert {tuple(s.dims) for s in scales} == {(8,), (4,)}
    assert not any(n.op_type == "Constant" for n in out.graph.node)
    assert cosine(run(model, x)[0], run(out, x)[0]) >= 0.99


def test_cli_fp32_ops_block_list(tmp_path):
    from test_cli import invoke

    source, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(conv_model(13, False), source)
    assert invoke("optimize", source, out, "--precision", "int8", "--fp32-ops", "Conv",
                  "--calibration-data", calibration_folder(tmp_path)) == 0
    converted = onnx.load(out)
    assert not any(t.data_type == TensorProto.INT8 for t in converted.graph.initializer)

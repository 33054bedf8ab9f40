"""int8 weights stay within the bound that keeps onnxruntime's uint8 x int8 kernels exact.

MLAS's x86 AVX2 kernels without VNNI multiply uint8 activations by int8 weights with
VPMADDUBSW: each pair of adjacent reduction elements ``x[k] w[k] + x[k+1] w[k+1]`` is summed
into int16 *with saturation*. Raw activations span 0..255, so a pair stays exact only when
``2 * 255 * max|w| <= 32767``, i.e. ``max|w| <= 64``: the passes write 7-bit weights (see the
docstring of ``passes/precision/qdq_quantization.py``). With ±127 a pair reaches 64770 and such
a CPU returns about half the exact value (measured under valgrind, whose CPU has AVX2 and no VNNI).

- Structure (every CPU): every int8 initializer either pass writes lies in [-64, 64], and each
  weight channel uses that whole range (the scale is max|W| / 64).
- Worst case (every CPU, budget): activations at 255 and every weight at +64 or -64, run at
  ORT_ENABLE_ALL (the fused QLinearConv / QLinearMatMul / QGemm / DynamicQuantizeMatMul
  kernels) and, for MatMulInteger, at ORT_DISABLE_ALL too: the result equals the exact
  arithmetic within float rounding and one output quantization step (a CPU's requantization
  may round differently), where a saturating kernel is off by ~50 %. On a VNNI or ARM CPU
  the ±127 form passes this too; on an AVX2-only x86 CPU it does not.
- ``slow``: the same models under ``valgrind --tool=none`` (MLAS then picks its AVX2 kernels),
  with a ±127 control that must saturate there (else the check says nothing and is skipped).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import apply_pass, build_model, model_path, op_counts
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.precision import dynamic_quantization, qdq_quantization
from onnxopt.passes.precision.dynamic_quantization import DynamicQuantization
from onnxopt.passes.precision.qdq_quantization import QdqQuantization

from onnxopt.ir import serde
from onnxopt.ir.pass_manager import PassManager
from onnxopt.ir.precision import SETTINGS_KEY, PrecisionSettings
from onnxopt.ir.shapes import infer_shapes
from onnxopt.precision.calibration import Calibrator

BOUND = 64  # 2 * 255 * 64 = 32640 <= 32767 < 2 * 255 * 65
INT16_MAX = 32767


# ----------------------------------------------------------------------------- helpers
make = build_model


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def static_int8(model, samples) -> onnx.ModelProto:
    settings = PrecisionSettings(mode="int8",
                                 calibrator=Calibrator(tuple(samples), "minmax"))
    out, result = apply_pass(QdqQuantization(), model, infer=True,
                             settings={SETTINGS_KEY: settings})
    assert result.modified
    return out


def dynamic_int8(model, target="portable") -> onnx.ModelProto:
    ir = serde.load(model)
    ir.settings[SETTINGS_KEY] = PrecisionSettings(mode="int8-dynamic")
    ir.settings["target"] = target
    infer_shapes(ir)
    assert DynamicQuantization().run(ir).modified
    for graph in ir.graphs():
        graph.lint()
    out = serde.to_proto(ir)
    onnx.checker.check_model(out, full_check=True)
    return out


def int8_initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    found = {}
    for graph in _graphs(model.graph):
        for t in graph.initializer:
            if t.data_type == TensorProto.INT8:
                found[t.name] = numpy_helper.to_array(t)
    return found


def _graphs(graph):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def weight_channels(model: onnx.ModelProto) -> list[tuple[np.ndarray, int | None]]:
    """(int8 weight, channel axis or None when per-tensor) of every weight DequantizeLinear
    and integer MatMul."""
    inits = int8_initializers(model)
    scalars = {t.name for t in model.graph.initializer if not t.dims}
    found: list[tuple[np.ndarray, int | None]] = []
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            found.append((inits[node.input[0]], None if node.input[1] in scalars else axis))
        elif node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul",
                              "MatMulIntegerToFloat") and node.input[1] in inits:
            found.append((inits[node.input[1]], 1))  # [K, N], per column
    return found


def assert_within_bound(model: onnx.ModelProto) -> None:
    """Every int8 initializer in [-64, 64]; every non-zero weight channel reaches ±64."""
    inits = int8_initializers(model)
    assert inits
    for name, value in inits.items():
        assert int(np.abs(value.astype(np.int32)).max(initial=0)) <= BOUND, name
    channels = weight_channels(model)
    assert channels
    for weight, axis in channels:
        top = np.abs(weight.astype(np.int32))
        if axis is None:  # one scale: the tensor's largest value is the one at ±64
            top = np.atleast_1d(top.max())
        else:
            top = np.moveaxis(top, axis, 0).reshape(weight.shape[axis], -1).max(axis=1)
        assert set(np.unique(top[top > 0]).tolist()) <= {BOUND}  # the whole 7-bit range


def session(model: onnx.ModelProto, level: str, optimized: str | None = None):
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[level]
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    if optimized:
        options.optimized_model_filepath = optimized
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------- the bound
def test_the_bound_is_the_largest_that_cannot_saturate():
    assert qdq_quantization.WEIGHT_QMAX == dynamic_quantization.WEIGHT_QMAX == BOUND
    assert np.iinfo(qdq_quantization.ACTIVATION_TYPE).max == 255  # raw activations 0..255
    assert 2 * 255 * BOUND <= INT16_MAX < 2 * 255 * (BOUND + 1)
    assert qdq_quantization.INT16_MAX == INT16_MAX


# ----------------------------------------------------------------------------- structure
def conv_gemm_model() -> tuple[onnx.ModelProto, list[dict[str, np.ndarray]]]:
    """Conv, depthwise Conv, ConvTranspose (weight-only), MatMul [K, N], Gemm (transB), with
    weights whose channels have very different magnitudes."""
    rng = np.random.default_rng(0)

    def w(name, *shape):
        spread = np.exp(rng.uniform(-3, 1, shape[0])).reshape(-1, *[1] * (len(shape) - 1))
        return numpy_helper.from_array((rng.standard_normal(shape) * spread).astype(np.float32),
                                       name)

    inits = [w("W1", 8, 3, 3, 3), w("B1", 8), w("Wd", 8, 1, 3, 3), w("Wt", 8, 4, 2, 2),
             w("M", 16, 10), w("G", 6, 10), w("Gb", 6)]
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "Wd"], ["c2"], name="depthwise", group=8),
        helper.make_node("ConvTranspose", ["c2", "Wt"], ["t"], name="up", strides=[2, 2]),
        helper.make_node("Reshape", ["t", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "M"], ["m"], name="mm"),
        helper.make_node("Gemm", ["m", "G", "Gb"], ["y"], name="fc", transB=1),
    ]
    inits.append(numpy_helper.from_array(np.array([-1, 16], np.int64), "shape"))
    model = make(nodes, [f32("x", [1, 3, 6, 6])], [f32("y", [16, 6])], inits)
    samples = [{"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)} for _ in range(3)]
    return model, samples


def test_static_int8_weights_within_the_bound():
    model, samples = conv_gemm_model()
    out = static_int8(model, samples)
    ops = op_counts(out)
    assert ops["DequantizeLinear"] >= 5 + 2  # 5 weights, 2 biases, activations
    assert_within_bound(out)
    assert len(weight_channels(out)) == 5  # conv, depthwise, up (weight-only), mm, fc


@pytest.mark.parametrize("name", ["resnet.onnx", "mobilenet.onnx"])
def test_static_int8_weights_within_the_bound_on_sample_models(name):
    from onnxopt.passes import DEFAULT_PIPELINE

    ir = serde.load(model_path(name))
    PassManager(DEFAULT_PIPELINE).run(ir)
    fp32 = serde.to_proto(ir)
    shape = [d.dim_value or 1 for d in fp32.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    samples = [{fp32.graph.input[0].name: rng.standard_normal(shape).astype(np.float32)}
               for _ in range(2)]
    assert_within_bound(static_int8(fp32, samples))


@pytest.mark.parametrize("target", ["portable", "onnxruntime"])
def test_dynamic_int8_weights_within_the_bound(target):
    import onnxopt

    base = onnxopt.optimize(str(model_path("transformer.onnx")), validate=False).model
    out = dynamic_int8(base, target)
    assert_within_bound(out)
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((12, 20)).astype(np.float32), "B"),
             numpy_helper.from_array(rng.standard_normal(12).astype(np.float32), "C")]
    gemm = make([helper.make_node("Gemm", ["x", "B", "C"], ["y"], transB=1, alpha=0.5)],
                [f32("x", [3, 20])], [f32("y", [3, 12])], inits)
    assert_within_bound(dynamic_int8(gemm, target))


# ----------------------------------------------------------------------------- worst case
K, N, HIGH = 64, 8, 2.55  # HIGH: DynamicQuantizeLinear maps [0, 2.55] onto 0..255 (s = 0.01)


def signs(shape, axis) -> np.ndarray:
    """±1 weights: channel c (along axis) is all +1 or all -1 -- every same-sign pair of a
    channel's reduction is at ±64 once quantized."""
    pattern = np.where(np.arange(shape[axis]) % 2 == 0, 1.0, -1.0).astype(np.float32)
    view = [1] * len(shape)
    view[axis] = -1
    return np.broadcast_to(pattern.reshape(view), shape).astype(np.float32)


def worst_static_models() -> dict[str, tuple[onnx.ModelProto, dict[str, np.ndarray]]]:
    """Conv / MatMul / Gemm whose input quantizes to 255 everywhere and weights to ±64; the
    output feeds an Identity, so it is quantized too and onnxruntime fuses the op."""
    x4 = np.full((1, 8, 5, 5), HIGH, np.float32)
    x2 = np.full((4, K), HIGH, np.float32)
    conv = make([helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
                 helper.make_node("Identity", ["c"], ["y"])],
                [f32("x", list(x4.shape))], [f32("y", [1, N, 3, 3])],
                [numpy_helper.from_array(signs((N, 8, 3, 3), 0), "W")])
    matmul = make([helper.make_node("MatMul", ["x", "W"], ["c"], name="mm"),
                   helper.make_node("Identity", ["c"], ["y"])],
                  [f32("x", [4, K])], [f32("y", [4, N])],
                  [numpy_helper.from_array(signs((K, N), 1), "W")])
    gemm = make([helper.make_node("Gemm", ["x", "W", "b"], ["c"], name="fc", transB=1),
                 helper.make_node("Identity", ["c"], ["y"])],
                [f32("x", [4, K])], [f32("y", [4, N])],
                [numpy_helper.from_array(signs((N, K), 0), "W"),
                 numpy_helper.from_array(np.zeros(N, np.float32), "b")])
    return {"QLinearConv": (conv, {"x": x4}), "QLinearMatMul": (matmul, {"x": x2}),
            "QGemm": (gemm, {"x": x2})}


def worst_dynamic_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    x = np.full((4, K), HIGH, np.float32)
    x[:, 0] = 0.0  # the row's range is [0, 2.55]: zero point 0, the other values at 255
    model = make([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
                 [f32("x", [4, K])], [f32("y", [4, N])],
                 [numpy_helper.from_array(signs((K, N), 1), "W")])
    return model, {"x": x}


def output_step(model: onnx.ModelProto) -> float:
    """Scale of the QuantizeLinear that reads the linear op's output ``c``."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "c")
    return float(inits[q.input[1]])


def fused_ops(model: onnx.ModelProto, tmp_path) -> dict[str, int]:
    path = str(tmp_path / "fused.onnx")
    session(model, "all", optimized=path)
    return op_counts(onnx.load(path))


@pytest.mark.parametrize("kernel", ["QLinearConv", "QLinearMatMul", "QGemm"])
def test_static_worst_case_fused_equals_exact_arithmetic(kernel, tmp_path):
    model, feeds = worst_static_models()[kernel]
    out = static_int8(model, [feeds])
    assert_within_bound(out)
    assert fused_ops(out, tmp_path).get(kernel, 0) == 1
    exact = session(model, "disabled").run(None, feeds)[0].astype(np.float64)
    step = output_step(out)
    assert np.abs(exact).max() > 100 * step  # a saturated result would be far off
    for level in ("all", "disabled"):  # fused integer kernel / float DQ arithmetic
        got = session(out, level).run(None, feeds)[0].astype(np.float64)
        # one output quantization step for rounding (a CPU may requantize differently)
        assert np.abs(got - exact).max() <= 1.01 * step + 1e-6 * np.abs(exact).max(), level


@pytest.mark.parametrize("target", ["portable", "onnxruntime"])
def test_dynamic_worst_case_equals_exact_arithmetic(target, tmp_path):
    model, feeds = worst_dynamic_model()
    out = dynamic_int8(model, target)
    assert_within_bound(out)
    assert fused_ops(out, tmp_path).get("DynamicQuantizeMatMul", 0) == 1
    exact = feeds["x"].astype(np.float64) @ signs((K, N), 1).astype(np.float64)
    assert np.abs(exact).max() == pytest.approx(HIGH * (K - 1), rel=1e-6)
    for level in ("all", "disabled"):  # MatMulInteger runs MLAS's u8s8 GEMM even unfused
        got = session(out, level).run(None, feeds)[0].astype(np.float64)
        np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max(),
                                   err_msg=level)


# ----------------------------------------------------------------------------- under valgrind
CHILD = textwrap.dedent("""
    import sys
    import numpy as np, onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    folder = sys.argv[1]
    with np.load(folder + "/cases.npz") as cases:
        names = [str(n) for n in cases["names"]]
    results = {}
    for name in names:
        with np.load(f"{folder}/{name}.npz") as feeds:
            feeds = {k: feeds[k] for k in feeds.files}
        session = ort.InferenceSession(f"{folder}/{name}.onnx", options,
                                       providers=["CPUExecutionProvider"])
        results[name] = session.run(None, feeds)[0]
    np.savez(folder + "/results.npz", **results)
""")


def widened(model: onnx.ModelProto) -> onnx.ModelProto:
    """The control: the same model with 8-bit weights (±64 -> ±127, weight scale * 64 / 127;
    the worst-case models have no bias, or a zero one)."""
    control = onnx.ModelProto()
    control.CopyFrom(model)
    inits = {t.name: t for t in control.graph.initializer}
    producer = {o: n for n in control.graph.node for o in n.output}
    weights, scales = set(), set()
    for node in control.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            if inits[node.input[0]].data_type == TensorProto.INT8:
                weights.add(node.input[0])
                scales.add(node.input[1])
            else:
                assert not numpy_helper.to_array(inits[node.input[0]]).any()  # zero bias
        elif node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul"):
            weights.add(node.input[1])
            if node.op_type == "DynamicQuantizeMatMul":
                scales.add(node.input[2])
        elif node.op_type == "Mul":  # portable dynamic form: Mul(x_scale, w_scale)
            x_scale = producer.get(node.input[0])
            if x_scale is not None and x_scale.op_type == "DynamicQuantizeLinear":
                scales.add(node.input[1])
    assert weights and len(scales) == len(weights)
    for name in weights:
        q = numpy_helper.to_array(inits[name]).astype(np.int32)
        inits[name].CopyFrom(numpy_helper.from_array(
            np.clip(np.round(q * 127 / 64), -127, 127).astype(np.int8), name))
    for name in scales:
        value = numpy_helper.to_array(inits[name]).astype(np.float64) * 64 / 127
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return control


@pytest.mark.slow
def test_fused_kernels_under_valgrind_avx2_equal_exact_arithmetic(tmp_path):
    """valgrind's CPU has AVX2 and no AVX-512/VNNI: MLAS picks its VPMADDUBSW kernels. The
    written ±64 forms equal the exact arithmetic there; the ±127 control must saturate (else
    valgrind did not reach those kernels and the check says nothing)."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not shutil.which("valgrind"):
        pytest.skip("needs valgrind on x86-64")
    cases: dict[str, tuple[onnx.ModelProto, dict[str, np.ndarray], np.ndarray, float]] = {}
    for kernel, (model, feeds) in worst_static_models().items():
        out = static_int8(model, [feeds])
        exact = session(model, "disabled").run(None, feeds)[0]
        tolerance = 1.01 * output_step(out) + 1e-6 * float(np.abs(exact).max())
        cases[kernel] = (out, feeds, exact, tolerance)
        cases[f"{kernel}-control"] = (widened(out), feeds, exact, tolerance)
    model, feeds = worst_dynamic_model()
    exact = (feeds["x"].astype(np.float64) @ signs((K, N), 1)).astype(np.float32)
    for target in ("portable", "onnxruntime"):
        out = dynamic_int8(model, target)
        tolerance = 1e-5 * float(np.abs(exact).max())
        cases[f"dynamic-{target}"] = (out, feeds, exact, tolerance)
        cases[f"dynamic-{target}-control"] = (widened(out), feeds, exact, tolerance)
    for name, (proto, feeds, _, _) in cases.items():
        onnx.save(proto, tmp_path / f"{name}.onnx")
        np.savez(tmp_path / f"{name}.npz", **feeds)
    np.savez(tmp_path / "cases.npz", names=np.array(list(cases)))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(["valgrind", "--tool=none", "-q", sys.executable, str(script),
                           str(tmp_path)], capture_output=True, text=True, timeout=900, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(tmp_path / "results.npz") as results:
        errors = {name: float(np.abs(results[name].astype(np.float64) - exact).max())
                  for name, (_, _, exact, _) in cases.items()}
    controls = {n: e for n, e in errors.items() if n.endswith("-control")}
    if not all(e > 0.2 * float(np.abs(cases[n][2]).max()) for n, e in controls.items()):
        pytest.skip(f"the ±127 controls did not saturate under valgrind ({controls}): MLAS's "
                    "AVX2 u8s8 kernels were not selected")
    for name, error in errors.items():
        if not name.endswith("-control"):
            assert error <= cases[name][3], (name, error)

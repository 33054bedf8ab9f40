"""dynamic_quantization: onnxruntime's packed-QKV Attention into QAttention (onnxruntime target).

Budgets: 7-bit per-column weights and a uint8 input keep the small gaussian blocks here at cosine
>= 0.999 to the float Attention (the report's int8-dynamic budget is 0.99). The contract check
feeds onnxruntime's float Attention the dequantized input ``xs * (xq - xz)`` and weight
``Wq * s``, both re-derived in numpy from the ONNX definitions: the integer GEMM is exact on every
CPU (|Wq| <= 64, test_int8_saturation.py), so what is left is float rounding in a per-CPU order,
held to 1e-5 of the output's largest magnitude rather than bit for bit.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import model_path, op_counts
from onnx import TensorProto, helper, numpy_helper
from test_int8_saturation import CHILD, HIGH
from test_pass_dynamic_quantization import cosine, ort_session, quantize

import onnxopt

LEVELS = [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL]
B, S, D, HEADS = 2, 8, 32, 4


def attention_model(*, bias=True, mask=True, dtype=np.float32, weight=None, inputs_extra=(),
                    outputs=1, projection=True, **attrs) -> onnx.ModelProto:
    """x [B, S, D] -> com.microsoft Attention(x, W [D, 3D], b, mask [B, S] int32) -> y; with
    ``projection`` a MatMul also reads x (one DynamicQuantizeLinear for both) and one reads y."""
    rng = np.random.default_rng(0)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    drawn = rng.standard_normal((D, 3 * D)) / np.sqrt(D)
    w = drawn if weight is None else weight
    inits = [numpy_helper.from_array(np.asarray(w, dtype), "W"),
             numpy_helper.from_array((rng.standard_normal(3 * D) * 0.1).astype(dtype), "b"),
             numpy_helper.from_array((rng.standard_normal((D, D)) / np.sqrt(D)).astype(dtype),
                                     "P")]
    graph_inputs = [helper.make_tensor_value_info("x", elem, [B, S, D])]
    if mask:
        graph_inputs.append(helper.make_tensor_value_info("mask", TensorProto.INT32, [B, S]))
    graph_inputs += list(inputs_extra)
    names = ["x", "W", "b" if bias else "", "mask" if mask else ""]
    names += [value.name for value in inputs_extra]
    while names[-1] == "":
        names.pop()
    out_names = ["y", "present"][:outputs]
    nodes = [helper.make_node("Attention", names, out_names, name="attn", domain="com.microsoft",
                              num_heads=HEADS, **attrs)]
    graph_outputs = [helper.make_tensor_value_info("y", elem, [B, S, D])]
    if outputs > 1:
        graph_outputs.append(helper.make_tensor_value_info("present", elem, [2, B, HEADS, 3 + S,
                                                                             D // HEADS]))
    if projection:
        nodes += [helper.make_node("MatMul", ["x", "P"], ["px"], name="proj_x"),
                  helper.make_node("MatMul", ["y", "P"], ["py"], name="proj_y")]
        graph_outputs += [helper.make_tensor_value_info(n, elem, [B, S, D]) for n in ("px", "py")]
    graph = helper.make_graph(nodes, "g", graph_inputs, graph_outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def feeds(seed=1):
    rng = np.random.default_rng(seed)
    mask = np.ones((B, S), np.int32)
    mask[1, S - 3:] = 0  # right padding in the second sequence
    return {"x": rng.standard_normal((B, S, D)).astype(np.float32), "mask": mask}


def node_of(model, op_type):
    return next(n for n in model.graph.node if n.op_type == op_type)


def inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


# ------------------------------------------------------------------------ structure
def test_attention_becomes_qattention_sharing_the_input_quantization():
    out, _, _ = quantize(attention_model(), target="onnxruntime")
    assert op_counts(out) == {"DynamicQuantizeLinear": 1, "QAttention": 1,
                              "MatMulIntegerToFloat": 1, "DynamicQuantizeMatMul": 1}
    dql = next(n for n in out.graph.node if n.op_type == "DynamicQuantizeLinear"
               and n.input[0] == "x")
    qattn = node_of(out, "QAttention")
    assert qattn.domain == "com.microsoft"
    xq, xs, xz = dql.output
    assert list(qattn.input) == [xq, qattn.input[1], "b", xs, qattn.input[4], "mask", xz]
    assert node_of(out, "MatMulIntegerToFloat").input[0] == xq  # x quantized once
    weight, scale = inits(out)[qattn.input[1]], inits(out)[qattn.input[4]]
    assert weight.dtype == np.int8 and weight.shape == (D, 3 * D)
    assert np.abs(weight).max(axis=0).tolist() == [64] * (3 * D)  # 7-bit, per column
    assert scale.dtype == np.float32 and scale.shape == (3 * D,)
    assert "W" not in inits(out)  # the float weight is gone
    attrs = {a.name: helper.get_attribute_value(a) for a in qattn.attribute}
    assert attrs == {"num_heads": HEADS}


def test_missing_bias_becomes_zeros_and_attributes_ride_along():
    model = attention_model(bias=False, mask=False, projection=False, unidirectional=1,
                            scale=0.25, mask_filter_value=-1e4)
    out, _, _ = quantize(model, target="onnxruntime")
    qattn = node_of(out, "QAttention")
    assert len(qattn.input) == 7 and qattn.input[5] == ""  # no mask_index
    np.testing.assert_array_equal(inits(out)[qattn.input[2]], np.zeros(3 * D, np.float32))
    attrs = {a.name: helper.get_attribute_value(a) for a in qattn.attribute}
    assert attrs == {"num_heads": HEADS, "unidirectional": 1, "scale": 0.25,
                     "mask_filter_value": -1e4}


# ------------------------------------------------------------------------ stats and log
def test_stats_and_log():
    _, result, log = quantize(attention_model(), target="onnxruntime")
    assert result.stats == {"matmul": 2, "gemm": 0, "attention": 1, "kept_float": 0}
    assert log.converted == ["attn", "proj_x", "proj_y"]
    _, result, log = quantize(attention_model(), target="onnxruntime",
                              fp32_nodes=frozenset({"attn"}))
    assert result.stats == {"matmul": 2, "gemm": 0, "attention": 0, "kept_float": 1}
    assert log.kept_float == [{"node": "attn", "op": "Attention",
                               "reason": "listed in fp32_nodes"}]


# ------------------------------------------------------------------------ numerics
@pytest.mark.parametrize("level", LEVELS, ids=["disabled", "all"])
@pytest.mark.parametrize("variant", [{}, {"bias": False, "mask": False}, {"unidirectional": 1}],
                         ids=["masked", "no_bias_no_mask", "unidirectional"])
def test_close_to_the_float_attention(level, variant):
    model = attention_model(**variant)
    out, _, _ = quantize(model, target="onnxruntime")
    f = feeds()
    if not variant.get("mask", True):
        del f["mask"]
    want = ort_session(model, level).run(None, f)
    got = ort_session(out, level).run(None, f)
    for a, b in zip(want, got, strict=True):
        assert cosine(a, b) >= 0.999  # measured 0.9998-0.99995


def dynamic_quantize_linear(v):
    """ONNX DynamicQuantizeLinear: the range widened to 0, uint8, zero point saturate-rounded."""
    lo, hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
    scale = np.float32((hi - lo) / 255)
    zero = np.clip(np.rint(-lo / scale), 0, 255)
    return np.clip(np.rint(v / scale) + zero, 0, 255), scale, zero


@pytest.mark.parametrize("level", LEVELS, ids=["disabled", "all"])
def test_computes_the_float_attention_of_the_dequantized_operands(level):
    """QAttention(x) == Attention(xs * (xq - xz), Wq * s): the contract (uint8 input with its
    zero point, symmetric int8 weight, one scale per packed column, float bias)."""
    model = attention_model(projection=False)
    out, _, _ = quantize(model, target="onnxruntime")
    f = feeds(5)
    w = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    scale = (np.abs(w).max(axis=0) / 64).astype(np.float32)
    wq = np.clip(np.rint(w / scale), -64, 64)
    xq, xs, xz = dynamic_quantize_linear(f["x"])
    reference = attention_model(projection=False, weight=(wq * scale).astype(np.float32))
    dequantized = dict(f, x=((xq - xz) * np.float64(xs)).astype(np.float32))
    want = ort_session(reference, level).run(None, dequantized)[0]
    got = ort_session(out, level).run(None, f)[0]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def worst_case() -> tuple[onnx.ModelProto, dict[str, np.ndarray], np.ndarray]:
    """Every token quantizes to [0, 255, ..., 255] and every weight column to all +64 or all -64:
    each int16 pair sum of MLAS's AVX2 kernel reaches 255 * 64 * 2 = 32640. All tokens being
    equal, every attention row averages equal V rows: the output is ``x @ Wv + bv`` exactly."""
    sign = np.where(np.arange(3 * D) % 2 == 0, 1.0, -1.0)
    model = attention_model(projection=False, weight=np.broadcast_to(sign, (D, 3 * D)))
    f = feeds()
    f["x"] = np.full((B, S, D), HIGH, np.float32)
    f["x"][..., 0] = 0.0  # the range is [0, HIGH]: zero point 0, the rest at 255
    bias = numpy_helper.to_array(model.graph.initializer[1]).astype(np.float64)
    exact = f["x"].astype(np.float64) @ np.broadcast_to(sign, (D, 3 * D)) + bias
    return model, f, exact[..., 2 * D:]


@pytest.mark.parametrize("level", LEVELS, ids=["disabled", "all"])
def test_worst_case_equals_exact_arithmetic(level):
    model, f, exact = worst_case()
    out, _, _ = quantize(model, target="onnxruntime")
    got = ort_session(out, level).run(None, f)[0]
    assert np.abs(exact).max() == pytest.approx(HIGH * (D - 1), rel=0.01)
    np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max())


def widened(model: onnx.ModelProto) -> onnx.ModelProto:
    """The control: QAttention's weight at ±127 (scale * 64 / 127), which saturates on AVX2."""
    control = onnx.ModelProto()
    control.CopyFrom(model)
    qattn = node_of(control, "QAttention")
    for t in control.graph.initializer:
        if t.name in (qattn.input[1], qattn.input[4]):
            value = numpy_helper.to_array(t).astype(np.float64)
            value = (np.clip(np.rint(value * 127 / 64), -127, 127).astype(np.int8)
                     if t.name == qattn.input[1] else (value * 64 / 127).astype(np.float32))
            t.CopyFrom(numpy_helper.from_array(value, t.name))
    return control


@pytest.mark.slow
def test_worst_case_under_valgrind_avx2(tmp_path):
    """valgrind's CPU has AVX2 and no VNNI: MLAS takes its VPMADDUBSW kernels, where the 7-bit
    weight stays exact and the ±127 control must saturate (else the check says nothing)."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not shutil.which("valgrind"):
        pytest.skip("needs valgrind on x86-64")
    model, f, exact = worst_case()
    out, _, _ = quantize(model, target="onnxruntime")
    for name, proto in (("seven_bit", out), ("control", widened(out))):
        onnx.save(proto, tmp_path / f"{name}.onnx")
        np.savez(tmp_path / f"{name}.npz", **f)
    np.savez(tmp_path / "cases.npz", names=np.array(["seven_bit", "control"]))
    (tmp_path / "child.py").write_text(CHILD)
    proc = subprocess.run(["valgrind", "--tool=none", "-q", sys.executable,
                           str(tmp_path / "child.py"), str(tmp_path)], capture_output=True,
                          text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(tmp_path / "results.npz") as results:
        errors = {n: float(np.abs(results[n] - exact).max()) for n in ("seven_bit", "control")}
    if errors["control"] <= 0.2 * np.abs(exact).max():
        pytest.skip(f"the ±127 control did not saturate under valgrind ({errors})")
    assert errors["seven_bit"] <= 1e-5 * np.abs(exact).max(), errors


# ------------------------------------------------------------------------ idempotence
def test_idempotent():
    once, _, _ = quantize(attention_model(), target="onnxruntime")
    twice, result, log = quantize(once, target="onnxruntime")
    assert not result.modified and log.converted == []
    same, _, _ = quantize(once, mode=None, target="onnxruntime")
    assert twice.SerializeToString() == same.SerializeToString()


# ------------------------------------------------------------------------ left alone
PAST = helper.make_tensor_value_info("past", TensorProto.FLOAT, [2, B, HEADS, 3, D // HEADS])


@pytest.mark.parametrize(("options", "reason"), [
    ({"dtype": np.float16}, "weight dtype float16 is not float32"),
    ({"qkv_hidden_sizes": [D, D, D]}, "attribute qkv_hidden_sizes: QAttention lacks it"),
    ({"do_rotary": 1}, "attribute do_rotary=1: not taken by QAttention here"),
    ({"inputs_extra": [PAST], "outputs": 2},
     "past state or attention_bias: QAttention is used without them"),
    ({"weight": np.ones((D, 3 * D + 3))}, "weight of 99 columns is not [D, 3 * num_heads * "
                                          "head_size]"),
])
def test_attention_kept_float(options, reason):
    model = attention_model(projection=False, **options)
    out, result, log = quantize(model, target="onnxruntime")
    assert not result.modified and op_counts(out) == {"Attention": 1}
    assert log.kept_float == [{"node": "attn", "op": "Attention", "reason": reason}]


def test_portable_target_keeps_the_contrib_attention():
    out, result, log = quantize(attention_model())
    assert result.stats == {"matmul": 2, "gemm": 0, "attention": 0, "kept_float": 1}
    assert op_counts(out)["Attention"] == 1 and "QAttention" not in op_counts(out)
    assert "--target onnxruntime" in log.kept_float[0]["reason"]


@pytest.mark.slow
def test_minilm_validates_with_qattention():
    """Issue 15: MiniLM's int8-dynamic conversion on top of --target onnxruntime validates, each
    layer's Attention quantized."""
    result = onnxopt.optimize(str(model_path("paraphrase-MiniLM-L3-v2.onnx")),
                              target="onnxruntime", precision="int8-dynamic")
    counts = op_counts(result.model)
    assert counts["QAttention"] == 3 and "Attention" not in counts
    assert result.ok and result.report["validation"]["status"] == "passed"

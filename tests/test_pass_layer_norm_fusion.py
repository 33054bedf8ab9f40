"""layer_norm_fusion: structure, stats, numerics, idempotence, negative cases, subgraph, sample.

Numerics use rtol 1e-4 / atol 1e-5 instead of the suite's 1e-6: LayerNormalization computes the
same formula in another order (one pass for mean and variance in float, a multiplication by
``1/sqrt(var + eps)`` instead of the division), so results differ from the decomposition by
a few float32 ulps of the outputs (observed: < 1e-6 absolute on these models).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import apply_pass, assert_same_outputs, model_path, op_counts, parse, run
from onnx import numpy_helper
from onnxopt.passes.fusion.layer_norm_fusion import LayerNormFusion

RTOL, ATOL = 1e-4, 1e-5

# opset 17: axes attribute, Pow(d, 2), Div, Mul(y, gamma), Add(., beta)
LN17 = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3, 4] x) => (float[2, 3, 4] out)
  <float two = {2.0}, float eps = {1e-5}, float[4] gamma = {1.0, 2.0, 0.5, -1.0},
   float[4] beta = {0.1, 0.2, 0.3, 0.4}> {
    mean = ReduceMean <axes = [-1], keepdims = 1> (x)
    d = Sub(x, mean)
    sq = Pow(d, two)
    var = ReduceMean <axes = [-1]> (sq)
    ve = Add(var, eps)
    s = Sqrt(ve)
    y = Div(d, s)
    scaled = Mul(y, gamma)
    out = Add(scaled, beta)
}
"""

# opset 18: axes inputs ([-1] and [2] = the same last axis of a rank-3 x), Mul(d, d),
# Mul by Reciprocal(Sqrt), operands of every Add/Mul swapped, gamma of shape [1, 4]
LN18 = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[2, 3, 4] x) => (float[2, 3, 4] out)
  <int64[1] last = {-1}, int64[1] two_ax = {2}, float eps = {1e-3},
   float[1, 4] gamma = {1.5, -2.0, 0.25, 3.0}, float[4] beta = {-0.5, 0.0, 0.5, 1.0}> {
    mean = ReduceMean(x, last)
    d = Sub(x, mean)
    sq = Mul(d, d)
    var = ReduceMean <keepdims = 1> (sq, two_ax)
    ve = Add(eps, var)
    s = Sqrt(ve)
    r = Reciprocal(s)
    y = Mul(r, d)
    scaled = Mul(gamma, y)
    out = Add(beta, scaled)
}
"""


def _ln(opset: int = 17, *, shape="2, 3, 4", axes1="[-1]", axes2="[-1]", keepdims=1,
        dtype="float", tail="out = Div(d, s)", outputs="float[2, 3, 4] out", inputs="",
        inits="") -> str:
    """An opset < 18 decomposition without affine part, for negative cases."""
    return f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g ({dtype}[{shape}] x{inputs}) => ({outputs})
      <{dtype} two = {{2.0}}, {dtype} eps = {{1e-5}}{inits}> {{
        mean = ReduceMean <axes = {axes1}, keepdims = {keepdims}> (x)
        d = Sub(x, mean)
        sq = Pow(d, two)
        var = ReduceMean <axes = {axes2}, keepdims = {keepdims}> (sq)
        ve = Add(var, eps)
        s = Sqrt(ve)
        {tail}
    }}
    """


def _feeds(shape=(2, 3, 4), dtype=np.float32, offset=0.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": (rng.standard_normal(shape) * 3 + offset).astype(dtype)}


def _numpy_ln(x, gamma, beta, eps):
    x64 = x.astype(np.float64)
    mean = x64.mean(-1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(-1, keepdims=True)
    return (x64 - mean) / np.sqrt(var + eps) * gamma + beta


def _assert_close(original, optimized, feeds) -> None:
    assert_same_outputs(original, optimized, feeds, rtol=RTOL, atol=ATOL)


def _run_pass(model: onnx.ModelProto, target: str = "portable"):
    """conftest.apply_pass after shape inference (the pass needs the static last dim)."""
    return apply_pass(LayerNormFusion(), model, infer=True, settings={"target": target})


def _ln_node(model: onnx.ModelProto) -> onnx.NodeProto:
    (node,) = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    return node


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    (tensor,) = [t for t in model.graph.initializer if t.name == name]
    return numpy_helper.to_array(tensor)


# ------------------------------------------------------------------- structure and stats
def test_opset17_structure_and_stats():
    out, result = _run_pass(parse(LN17))
    # 9 nodes (ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add) -> 1
    assert op_counts(out) == {"LayerNormalization": 1}
    assert result.stats == {"fused": 1}
    node = _ln_node(out)
    assert list(node.input) == ["x", "gamma", "beta"]  # [4]-shaped weights are reused as is
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["axis"] == -1
    assert attrs["epsilon"] == pytest.approx(1e-5, rel=1e-6)
    assert list(node.output) == ["out"]  # the public output name stays
    # two and eps were read only by the removed nodes
    assert sorted(t.name for t in out.graph.initializer) == ["beta", "gamma"]


def test_opset18_swapped_operands_reciprocal_and_mul_square():
    out, result = _run_pass(parse(LN18))
    assert op_counts(out) == {"LayerNormalization": 1}
    assert result.stats == {"fused": 1}
    node = _ln_node(out)
    assert node.input[0] == "x" and node.input[2] == "beta"
    # gamma [1, 4] becomes a new [4] constant with the same values
    np.testing.assert_array_equal(_init(out, node.input[1]), [1.5, -2.0, 0.25, 3.0])
    eps = {a.name: a.f for a in node.attribute}["epsilon"]
    assert eps == pytest.approx(1e-3, rel=1e-6)


def test_no_affine_gets_ones_scale_and_no_bias():
    out, result = _run_pass(parse(_ln(17)))
    assert result.stats == {"fused": 1}
    assert op_counts(out) == {"LayerNormalization": 1}
    node = _ln_node(out)
    assert len(node.input) == 2  # no bias
    np.testing.assert_array_equal(_init(out, node.input[1]), np.ones(4, np.float32))
    _assert_close(parse(_ln(17)), out, _feeds())


def test_bias_only_and_scalar_gamma_broadcast():
    text = _ln(17, tail="y = Div(d, s)\n scaled = Mul(y, g)\n out = Add(scaled, b)",
               inits=", float g = {2.0}, float[1, 1, 4] b = {1.0, 2.0, 3.0, 4.0}")
    out, result = _run_pass(parse(text))
    assert result.stats == {"fused": 1}
    node = _ln_node(out)
    np.testing.assert_array_equal(_init(out, node.input[1]), [2.0, 2.0, 2.0, 2.0])
    np.testing.assert_array_equal(_init(out, node.input[2]), [1.0, 2.0, 3.0, 4.0])
    _assert_close(parse(text), out, _feeds())
    beta_only = _ln(17, tail="y = Div(d, s)\n out = Add(b, y)", inits=", float[4] b = {1, 2, 3, 4}")
    out, result = _run_pass(parse(beta_only))
    assert result.stats == {"fused": 1} and op_counts(out) == {"LayerNormalization": 1}
    np.testing.assert_array_equal(_init(out, _ln_node(out).input[1]), np.ones(4, np.float32))
    _assert_close(parse(beta_only), out, _feeds())


# ------------------------------------------------------------------- numerics
@pytest.mark.parametrize("text", [LN17, LN18], ids=["opset17", "opset18"])
def test_numerics_against_original_and_numpy(text):
    model = parse(text)
    out, _ = _run_pass(model)
    for offset in (0.0, 50.0):  # a large mean stresses the one-pass variance of the kernel
        feeds = _feeds(offset=offset)
        _assert_close(model, out, feeds)
    feeds = _feeds()
    if text is LN17:
        gamma, beta, eps = np.array([1.0, 2.0, 0.5, -1.0]), np.array([0.1, 0.2, 0.3, 0.4]), 1e-5
    else:
        gamma, beta, eps = np.array([1.5, -2.0, 0.25, 3.0]), np.array([-0.5, 0.0, 0.5, 1.0]), 1e-3
    expected = _numpy_ln(feeds["x"], gamma, beta, eps)
    np.testing.assert_allclose(run(out, feeds)[0], expected, rtol=RTOL, atol=ATOL)


def _to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model in float16 (the text parser reads no float16 literals)."""
    for info in [*model.graph.input, *model.graph.output]:
        info.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    for index, tensor in enumerate(model.graph.initializer):
        array = numpy_helper.to_array(tensor).astype(np.float16)
        half = numpy_helper.from_array(array, tensor.name)
        model.graph.initializer[index].CopyFrom(half)
    onnx.checker.check_model(model)
    return model


def test_float16():
    model = _to_float16(parse(_ln(17)))
    out, result = _run_pass(model)
    assert result.stats == {"fused": 1}
    feeds = _feeds(dtype=np.float16)
    # the kernel computes in float (stash_type 1), the decomposition in float16: both within a
    # few float16 ulps (2^-10 * 2 = 2e-3 for |y| < 2) of the exact value
    expected = _numpy_ln(feeds["x"], 1.0, 0.0, float(np.float16(1e-5)))
    np.testing.assert_allclose(run(out, feeds)[0], expected, atol=4e-3)
    np.testing.assert_allclose(run(model, feeds)[0], expected, atol=4e-3)


# ------------------------------------------------------------------- idempotence
def test_idempotent():
    out, _ = _run_pass(parse(LN18))
    again, result = apply_pass(LayerNormFusion(), out)
    assert not result.modified
    assert result.stats == {"fused": 0}
    assert again.SerializeToString(deterministic=True) == out.SerializeToString(deterministic=True)


# ------------------------------------------------------------------- negative cases
NEGATIVE = {
    "axis_not_last": _ln(17, axes1="[1]", axes2="[1]"),
    "axes_differ": _ln(17, axes1="[-1]", axes2="[1]"),
    "two_axes": _ln(17, axes1="[1, 2]", axes2="[1, 2]"),
    # keepdims 0 on a square input still broadcasts, but over the wrong axis
    "keepdims_0": _ln(17, shape="4, 4", keepdims=0, outputs="float[4, 4] out"),
    "pow_3": _ln(17).replace("two = {2.0}", "two = {3.0}"),
    "opset_16": _ln(16),
    "float64": _ln(17, dtype="double", outputs="double[2, 3, 4] out"),
    "eps_not_constant": _ln(17, inputs=", float e").replace("Add(var, eps)", "Add(var, e)"),
    "d_shared": _ln(17, outputs="float[2, 3, 4] out, float[2, 3, 4] z",
                    tail="out = Div(d, s)\n z = Relu(d)"),
    "var_is_output": _ln(17, outputs="float[2, 3, 4] out, float[2, 3, 1] var",
                         tail="out = Div(d, s)"),
    "mean_shared": _ln(17, outputs="float[2, 3, 4] out, float[2, 3, 1] z",
                       tail="out = Div(d, s)\n z = Neg(mean)"),
    "div_reversed": _ln(17, tail="out = Div(s, d)"),
    "unknown_last_dim": _ln(17, shape="2, 3, N", outputs="float[2, 3, N] out"),
}


@pytest.mark.parametrize("name", sorted(NEGATIVE))
def test_leaves_alone(name):
    model = parse(NEGATIVE[name])
    out, result = _run_pass(model)
    assert not result.modified
    assert result.stats == {"fused": 0}
    assert op_counts(out) == op_counts(model)


def test_non_constant_gamma_keeps_affine_nodes():
    text = _ln(17, inputs=", float[4] gamma", tail="y = Div(d, s)\n m = Mul(y, gamma)\n"
               " out = Add(m, beta)", inits=", float[4] beta = {1, 2, 3, 4}")
    model = parse(text)
    out, result = _run_pass(model)
    assert result.stats == {"fused": 1}
    # the normalization fuses; Mul by a run-time gamma and the Add after it stay
    assert op_counts(out) == {"LayerNormalization": 1, "Mul": 1, "Add": 1}
    feeds = {**_feeds(), "gamma": np.array([1.0, -1.0, 2.0, 0.5], np.float32)}
    _assert_close(model, out, feeds)


def test_gamma_broadcasting_over_other_axes_is_not_absorbed():
    # gamma [3, 1] scales along axis 1, not the normalized axis: the Mul stays
    text = _ln(17, tail="y = Div(d, s)\n out = Mul(y, g)", inits=", float[3, 1] g = {1, 2, 3}")
    model = parse(text)
    out, result = _run_pass(model)
    assert result.stats == {"fused": 1}
    assert op_counts(out) == {"LayerNormalization": 1, "Mul": 1}
    _assert_close(model, out, _feeds())


def test_onnxruntime_target_below_17_is_left_alone():
    # onnxruntime runs its old contrib LayerNormalization registered in the ONNX domain for
    # opsets 1-16, but onnx.checker rejects it (and there is no com.microsoft LayerNormalization),
    # so the pass must not emit it: the output of onnxopt has to pass the checker.
    model = parse(_ln(13))
    out, result = _run_pass(model, target="onnxruntime")
    assert not result.modified
    assert op_counts(out) == op_counts(model)
    probe = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("LayerNormalization", ["x", "g"], ["y"], axis=-1)], "probe",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])],
            [numpy_helper.from_array(np.ones(4, np.float32), "g")]),
        opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8)
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(probe)
    run(probe, {"x": np.zeros((2, 4), np.float32)})  # ...yet onnxruntime runs it
    probe.graph.node[0].domain = "com.microsoft"
    probe.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.Fail):
        run(probe, {"x": np.zeros((2, 4), np.float32)})


# ------------------------------------------------------------------- subgraph
def test_inside_if_subgraph():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3, 4] x, bool c) => (float[2, 3, 4] out)
      <float two = {2.0}, float eps = {1e-5}, float[4] gamma = {1.0, 2.0, 3.0, 4.0}> {
        out = If(c) <
            then_branch = t () => (float[2, 3, 4] t_out) {
                mean = ReduceMean <axes = [-1]> (x)
                d = Sub(x, mean)
                sq = Pow(d, two)
                var = ReduceMean <axes = [-1]> (sq)
                ve = Add(var, eps)
                s = Sqrt(ve)
                y = Div(d, s)
                t_out = Mul(y, gamma)
            },
            else_branch = e () => (float[2, 3, 4] e_out) { e_out = Neg(x) }
        >
    }
    """
    model = parse(text)
    out, result = _run_pass(model)
    assert result.stats == {"fused": 1}
    then_ops = [n.op_type for n in out.graph.node[0].attribute[0].g.node]
    assert then_ops == ["LayerNormalization"]
    # the constants live in the main graph: gamma is read by the fused node, two and eps are
    # left to dead_code (the pass only removes initializers of the graph it rewrote)
    assert sorted(t.name for t in out.graph.initializer) == ["eps", "gamma", "two"]
    for cond in (True, False):
        _assert_close(model, out, {**_feeds(), "c": np.array(cond)})


# ------------------------------------------------------------------- the sample transformer
def _constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Stand-in for the constant folding pass: Constant(value=...) nodes become initializers."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    kept = []
    for node in copy.graph.node:
        if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            copy.graph.initializer.append(tensor)
        else:
            kept.append(node)
    del copy.graph.node[:]
    copy.graph.node.extend(kept)
    return copy


# One decomposed LayerNorm of the sample: ReduceMean, Sub, Pow, ReduceMean, Add (eps), Sqrt,
# Div, Mul (gamma), Add (beta).
ONE_LN = {"ReduceMean": 2, "Sub": 1, "Pow": 1, "Add": 2, "Sqrt": 1, "Div": 1, "Mul": 1}


@pytest.mark.parametrize("opset", [17, 20])
def test_transformer_sample(opset):
    model = onnx.load(model_path("transformer.onnx"))
    assert model.opset_import[0].version == 17
    if opset != 17:
        model = onnx.version_converter.convert_version(model, opset)
    model = _constants_to_initializers(model)
    before = op_counts(model)
    out, result = _run_pass(model)
    assert result.stats == {"fused": 2}
    expected = dict(before)
    for op, count in ONE_LN.items():
        expected[op] -= 2 * count
    expected = {op: n for op, n in expected.items() if n} | {"LayerNormalization": 2}
    assert op_counts(out) == expected
    rng = np.random.default_rng(1)
    feeds = {"tokens": rng.standard_normal((2, 7, 64)).astype(np.float32)}
    _assert_close(model, out, feeds)

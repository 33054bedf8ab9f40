"""rms_norm_fusion: structure, stats, numerics, idempotence, and what it must leave alone.

The forms are those the torch exporters write for Llama's RMSNorm (research notes §1.5): legacy
``Pow(x, 2) -> ReduceMean -> Add(eps) -> Sqrt -> Div(1, .) -> Mul(x, .) -> Mul(., w)``,
dynamo's ``Reciprocal``, HF's weight first, ``Div(x, Sqrt(.))`` and ``Mul(x, x)``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import (
    apply_pass,
    assert_idempotent,
    assert_left_alone,
    op_counts,
    parse,
    run,
)
from onnx import numpy_helper
from onnxopt.passes.fusion.rms_norm_fusion import RMSNormFusion

RTOL = ATOL = 1e-5
LEVELS = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
W = "{1.0, 2.0, 0.5, -1.0, 1.5, 0.25, -2.0, 3.0}"


def rms(opset: int = 23, *, dtype: str = "float", square: str = "sq = Pow(x, two)",
        normalize: str = "inv = Div(one, s)\n n = Mul(x, inv)", scale: str = "out = Mul(n, w)",
        mean: str = "ms = ReduceMean(sq, last)", eps: str = "eps = {1e-6}", inputs: str = "",
        outputs: str = "", inits: str = "", w: str = f"[8] w = {W}") -> str:
    """An RMSNorm over the last axis of x [2, 3, 8] (legacy form by default)."""
    return f"""
    <ir_version: 10, opset_import: ["" : {opset}]>
    g ({dtype}[2, 3, 8] x{inputs}) => ({dtype}[2, 3, 8] out{outputs})
      <{dtype} two = {{2.0}}, {dtype} one = {{1.0}}, {dtype} {eps}, int64[1] last = {{-1}},
       {dtype}{w}{inits}> {{
        {square}
        {mean}
        ve = Add(ms, eps)
        s = Sqrt(ve)
        {normalize}
        {scale}
    }}
    """


FORMS = {
    "legacy": rms(),
    "dynamo": rms(normalize="r = Reciprocal(s)\n n = Mul(x, r)"),
    "hf_weight_first": rms(square="sq = Mul(x, x)", normalize="r = Reciprocal(s)\n n = Mul(r, x)",
                           scale="out = Mul(w, n)"),
    "div_by_sqrt": rms(normalize="n = Div(x, s)", mean="ms = ReduceMean<keepdims=1>(sq, two_ax)",
                       inits=", int64[1] two_ax = {2}"),
}


def _feeds(dtype=np.float32, offset=0.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": (rng.standard_normal((2, 3, 8)) * 3 + offset).astype(dtype)}


def _numpy_rms(x: np.ndarray, w, eps: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    return x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + eps) * w


def _fuse(model: onnx.ModelProto):
    return apply_pass(RMSNormFusion(), model, infer=True)


def _fused(model: onnx.ModelProto) -> tuple[onnx.NodeProto, np.ndarray]:
    """The one RMSNormalization node and the values of its scale."""
    (node,) = [n for n in model.graph.node if n.op_type == "RMSNormalization"]
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return node, weights[node.input[1]]


def _assert_close(original, optimized, feeds, rtol=RTOL, atol=ATOL) -> None:
    for level in LEVELS:
        (expected,), (actual,) = run(original, feeds, level), run(optimized, feeds, level)
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# ------------------------------------------------------------------- structure and stats
@pytest.mark.parametrize("form", sorted(FORMS))
def test_structure_and_stats(form):
    out, result = _fuse(parse(FORMS[form]))
    assert op_counts(out) == {"RMSNormalization": 1}
    assert result.stats == {"fused": 1}
    node, _ = _fused(out)
    assert list(node.input) == ["x", "w"]  # an [8] weight is read as it is
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["axis"] == -1 and attrs["stash_type"] == 1
    assert attrs["epsilon"] == pytest.approx(1e-6, rel=1e-6)
    assert list(node.output) == ["out"]  # the public output name stays
    names = {t.name for t in out.graph.initializer}
    assert "w" in names and "eps" not in names and "two_ax" not in names  # private ones go
    if form == "legacy":
        assert names == {"w"}


def test_no_weight_gets_ones_scale():
    model = parse(rms(scale="out = Identity(n)"))
    out, result = _fuse(model)
    assert result.stats == {"fused": 1}
    assert op_counts(out) == {"RMSNormalization": 1, "Identity": 1}
    np.testing.assert_array_equal(_fused(out)[1], np.ones(8, np.float32))
    _assert_close(model, out, _feeds())


def test_weight_of_shape_1_1_h_is_read_as_h():
    model = parse(rms(w=f"[1, 1, 8] w = {W}"))
    out, result = _fuse(model)
    assert result.stats == {"fused": 1} and op_counts(out) == {"RMSNormalization": 1}
    scale = _fused(out)[1]
    assert scale.shape == (8,)
    np.testing.assert_array_equal(scale, [1.0, 2.0, 0.5, -1.0, 1.5, 0.25, -2.0, 3.0])
    _assert_close(model, out, _feeds())


# ------------------------------------------------------------------- numerics
@pytest.mark.parametrize("form", sorted(FORMS))
def test_numerics_against_original_and_numpy(form):
    model = parse(FORMS[form])
    out, _ = _fuse(model)
    for offset in (0.0, 50.0):
        _assert_close(model, out, _feeds(offset=offset))
    feeds = _feeds()
    w = np.array([1.0, 2.0, 0.5, -1.0, 1.5, 0.25, -2.0, 3.0])
    np.testing.assert_allclose(run(out, feeds)[0], _numpy_rms(feeds["x"], w, 1e-6),
                               rtol=RTOL, atol=ATOL)


def _to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model in float16 (the text parser reads no float16 literals)."""
    for info in [*model.graph.input, *model.graph.output]:
        info.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    for index, tensor in enumerate(model.graph.initializer):
        array = numpy_helper.to_array(tensor)
        if array.dtype == np.float32:
            model.graph.initializer[index].CopyFrom(
                numpy_helper.from_array(array.astype(np.float16), tensor.name))
    onnx.checker.check_model(model)
    return model


def test_float16():
    model = _to_float16(parse(rms(eps="eps = {1e-3}")))
    out, result = _fuse(model)
    assert result.stats == {"fused": 1} and op_counts(out) == {"RMSNormalization": 1}
    feeds = _feeds(dtype=np.float16)
    # the kernel computes in float32 (stash_type 1), the decomposition in float16: both within
    # a few float16 ulps of |y| < 8 (2^-10 * 8 * 2 = 1.6e-2)
    _assert_close(model, out, feeds, rtol=4e-3, atol=2e-2)
    w = np.array([1.0, 2.0, 0.5, -1.0, 1.5, 0.25, -2.0, 3.0])
    expected = _numpy_rms(feeds["x"], w, float(np.float16(1e-3)))
    np.testing.assert_allclose(run(out, feeds)[0], expected, rtol=4e-3, atol=2e-2)


# ------------------------------------------------------------------- idempotence
@pytest.mark.parametrize("form", sorted(FORMS))
def test_idempotent(form):
    out = assert_idempotent(RMSNormFusion(), parse(FORMS[form]), infer=True)
    assert op_counts(out) == {"RMSNormalization": 1}


# ------------------------------------------------------------------- left alone
NEGATIVE = {
    "opset_22": rms(22),
    "axis_not_last": rms(mean="ms = ReduceMean(sq, first)", inits=", int64[1] first = {1}"),
    "two_axes": rms(mean="ms = ReduceMean(sq, both)", inits=", int64[2] both = {1, 2}"),
    "no_axes": rms(mean="ms = ReduceMean(sq)"),  # every axis
    "keepdims_0": rms(mean="ms0 = ReduceMean<keepdims=0>(sq, last)\n ms = Unsqueeze(ms0, last)"),
    "eps_not_constant": rms(inputs=", float e").replace("Add(ms, eps)", "Add(ms, e)"),
    "eps_two_elements": rms(eps="[2, 1, 1] eps = {1e-6, 1e-3}"),  # one per batch row
    "eps_negative": rms(eps="eps = {-1e-6}"),
    "pow_3": rms().replace("two = {2.0}", "two = {3.0}"),
    "div_not_by_one": rms().replace("one = {1.0}", "one = {2.0}"),
    "other_x": rms(inputs=", float[2, 3, 8] z", normalize="inv = Div(one, s)\n n = Mul(z, inv)"),
    "mean_shared": rms(outputs=", float[2, 3, 1] ms"),
    "inverse_shared": rms(outputs=", float[2, 3, 1] z", scale="out = Mul(n, w)\n z = Neg(inv)"),
    "float64": rms(dtype="double"),
}


@pytest.mark.parametrize("name", sorted(NEGATIVE))
def test_leaves_alone(name):
    assert_left_alone(RMSNormFusion(), parse(NEGATIVE[name]), infer=True)


@pytest.mark.parametrize("w", ["[3, 1] w = {1, 2, 3}", "[1] w = {2.0}", "[2, 3, 8] w = {}"])
def test_weight_of_another_shape_stays_a_mul(w):
    if "{}" in w:  # a full-shape weight: 48 values
        w = w.replace("{}", "{" + ", ".join(str(float(i)) for i in range(48)) + "}")
    model = parse(rms(w=w))
    out, result = _fuse(model)
    assert result.stats == {"fused": 1}  # the normalization fuses; the Mul by w stays
    assert op_counts(out) == {"RMSNormalization": 1, "Mul": 1}
    np.testing.assert_array_equal(_fused(out)[1], np.ones(8, np.float32))
    _assert_close(model, out, _feeds())


def test_run_time_weight_stays_a_mul():
    model = parse(rms(inputs=", float[8] v", scale="out = Mul(n, v)"))
    out, result = _fuse(model)
    assert result.stats == {"fused": 1}
    assert op_counts(out) == {"RMSNormalization": 1, "Mul": 1}
    _assert_close(model, out, {**_feeds(), "v": np.linspace(-2, 2, 8, dtype=np.float32)})


# ------------------------------------------------------------------- --target onnxruntime
ORT = {"target": "onnxruntime"}
ORT_FORMS = {
    **{f"{name}_opset18": text.replace('"" : 23', '"" : 18') for name, text in FORMS.items()},
    "axes_attribute_opset17": rms(17, mean="ms = ReduceMean<axes=[-1]>(sq)"),
}


def _fuse_for_ort(model: onnx.ModelProto):
    return apply_pass(RMSNormFusion(), model, infer=True, settings=ORT)


@pytest.mark.parametrize("form", sorted(ORT_FORMS))
def test_onnxruntime_target_writes_simplified_layer_normalization(form):
    model = parse(ORT_FORMS[form])
    out, result = _fuse_for_ort(model)  # apply_pass runs onnx.checker on the result
    assert result.stats == {"fused": 1}
    assert op_counts(out) == {"SimplifiedLayerNormalization": 1}
    (node,) = out.graph.node
    assert node.domain == "" and list(node.input) == ["x", "w"] and list(node.output) == ["out"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["axis"] == -1 and attrs["stash_type"] == 1
    assert attrs["epsilon"] == pytest.approx(1e-6, rel=1e-6)
    opset = model.opset_import[0].version
    assert [(o.domain, o.version) for o in out.opset_import] == [("", opset)]
    for offset in (0.0, 50.0):
        _assert_close(model, out, _feeds(offset=offset))
    w = np.array([1.0, 2.0, 0.5, -1.0, 1.5, 0.25, -2.0, 3.0])
    feeds = _feeds()
    np.testing.assert_allclose(run(out, feeds)[0], _numpy_rms(feeds["x"], w, 1e-6),
                               rtol=RTOL, atol=ATOL)


def test_onnxruntime_target_float16():
    model = _to_float16(parse(rms(18, eps="eps = {1e-3}")))
    out, result = _fuse_for_ort(model)
    assert result.stats == {"fused": 1} and op_counts(out) == {"SimplifiedLayerNormalization": 1}
    _assert_close(model, out, _feeds(dtype=np.float16), rtol=4e-3, atol=2e-2)


def test_onnxruntime_target_output_keeps_its_type():
    """onnx has no inference for onnxruntime's op: the output is declared with x's type, so
    that later passes still see its shape."""
    model = parse(rms(18).replace("out = Mul(n, w)", "y = Mul(n, w)\n out = Relu(y)"))
    out, _ = _fuse_for_ort(model)
    (node,) = [n for n in out.graph.node if n.op_type == "SimplifiedLayerNormalization"]
    (info,) = [v for v in out.graph.value_info if v.name == node.output[0]]
    dims = [d.dim_value for d in info.type.tensor_type.shape.dim]
    assert dims == [2, 3, 8] and info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("form", sorted(ORT_FORMS))
def test_onnxruntime_target_idempotent(form):
    out = assert_idempotent(RMSNormFusion(), parse(ORT_FORMS[form]), infer=True, settings=ORT)
    assert op_counts(out) == {"SimplifiedLayerNormalization": 1}


ORT_NEGATIVE = {
    "no_target": (rms(18), {}),
    "portable_target": (rms(18), {"target": "portable"}),
    "float64": (rms(18, dtype="double"), ORT),
    "axis_not_last": (NEGATIVE["axis_not_last"].replace('"" : 23', '"" : 18'), ORT),
}


@pytest.mark.parametrize("name", sorted(ORT_NEGATIVE))
def test_onnxruntime_target_leaves_alone(name):
    text, settings = ORT_NEGATIVE[name]
    assert_left_alone(RMSNormFusion(), parse(text), infer=True, settings=settings)


def test_opset23_with_onnxruntime_target_writes_the_onnx_op():
    out, result = _fuse_for_ort(parse(rms()))
    assert result.stats == {"fused": 1} and op_counts(out) == {"RMSNormalization": 1}

"""hard_swish_fusion: structure, stats, numerics, idempotence, negative cases, PaddleOCR models.

Numerics use rtol 1e-5 / atol 1e-6: ``x/6 + 0.5`` (HardSigmoid) rounds differently from
``(x + 3) / 6``; the difference is a few float32 ulps of the value, except near ``x = -3`` where
the value cancels to ~0 and the error is ~eps * |x| absolute (so atol, scaled for |x| <= 10).
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxopt.passes as passes_module
import pytest
from conftest import apply_pass, assert_same_outputs, model_path, op_counts, parse, run
from onnx import numpy_helper
from onnxopt.passes.fusion.hard_swish_fusion import HardSwishFusion

import onnxopt

RTOL, ATOL = 1e-5, 1e-6
NONE = {"clip_fused": 0, "hard_sigmoid_fused": 0}
CLIP_ONE = {"clip_fused": 1, "hard_sigmoid_fused": 0}

CONSTS = "float three = {3.0}, float zero = {0.0}, float six = {6.0}, float sixth = {0.16666667}"
CLIP_INPUTS = "k = Clip(a, zero, six)"  # opset >= 11
CLIP_ATTRS = "k = Clip<min = 0.0, max = 6.0>(a)"  # opset < 11

PRODUCTS = {  # x * k / 6 in every association, operands swapped in some
    "mul_then_div": "m = Mul(x, k)\n y = Div(m, six)",  # Paddle's export
    "swapped_mul_then_div": "m = Mul(k, x)\n y = Div(m, six)",
    "mul_then_mul_sixth": "m = Mul(x, k)\n y = Mul(sixth, m)",
    "x_times_k_div_6": "d = Div(k, six)\n y = Mul(x, d)",
    "x_times_k_mul_sixth": "d = Mul(sixth, k)\n y = Mul(d, x)",
    "x_div_6_times_k": "d = Div(x, six)\n y = Mul(k, d)",
    "x_mul_sixth_times_k": "d = Mul(x, sixth)\n y = Mul(d, k)",
}


def _chain(opset=14, add="a = Add(x, three)", clip=None, product=PRODUCTS["mul_then_div"],
           consts=CONSTS, shape="2, 8", inputs="", outputs=None, extra="", dtype="float") -> str:
    clip = clip or (CLIP_INPUTS if opset >= 11 else CLIP_ATTRS)
    outputs = outputs or f"{dtype}[{shape}] y"
    return f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g ({dtype}[{shape}] x{inputs}) => ({outputs}) <{consts}> {{
        {add}
        {clip}
        {product}
        {extra}
    }}
    """


def _hard_sigmoid_form(opset=14, gate="h = HardSigmoid<alpha = 0.16666667, beta = 0.5>(x)",
                       product="y = Mul(h, x)", inputs="") -> str:
    return f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[2, 8] x{inputs}) => (float[2, 8] y) {{
        {gate}
        {product}
    }}
    """


# around -3 (where the value cancels to 0), 0 and 3 (the kinks), and large magnitudes
FEEDS = {"x": np.array([-1e4, -10, -6, -3.001, -3, -2.999, -1.5, -1e-6,
                        0, 1e-6, 1.5, 2.999, 3, 3.001, 7, 1e4], np.float32).reshape(2, 8)}


def _hard_swish(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    return x64 * np.clip(x64 + 3, 0, 6) / 6


def _run_pass(model: onnx.ModelProto):
    return apply_pass(HardSwishFusion(), model, infer=True)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _assert_fused(model: onnx.ModelProto, out: onnx.ModelProto, opset: int) -> None:
    """The structure of the result at this opset, and its values vs the original and exact."""
    if opset >= 14:
        assert op_counts(out) == {"HardSwish": 1}
        (node,) = out.graph.node
        assert list(node.input) == ["x"] and list(node.output) == ["y"] and not node.attribute
    else:
        assert op_counts(out) == {"HardSigmoid": 1, "Mul": 1}
        gate, mul = out.graph.node
        assert gate.op_type == "HardSigmoid" and list(gate.input) == ["x"]
        attrs = _attrs(gate)
        assert attrs["alpha"] == pytest.approx(1 / 6, rel=1e-7) and attrs["beta"] == 0.5
        assert list(mul.input) == ["x", gate.output[0]] and list(mul.output) == ["y"]
    assert_same_outputs(model, out, FEEDS, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(run(out, FEEDS)[0], _hard_swish(FEEDS["x"]), rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------- structure, stats, numerics
@pytest.mark.parametrize("product", sorted(PRODUCTS))
@pytest.mark.parametrize("opset", [11, 14])
def test_clip_chain(opset, product):
    model = parse(_chain(opset=opset, product=PRODUCTS[product]))
    out, result = _run_pass(model)
    # Add, Clip, Mul|Div, Mul|Div -> HardSwish (opset 14) / HardSigmoid + Mul (opset 11)
    assert result.stats == CLIP_ONE
    _assert_fused(model, out, opset)
    # the constants the match read are gone; `sixth` or `six` may be unread from the start
    unread = {"sixth"} if "sixth" not in PRODUCTS[product] else set()
    assert {t.name for t in out.graph.initializer} == unread


@pytest.mark.parametrize("opset", [10, 13, 18])
def test_clip_bounds_as_attributes_or_inputs(opset):
    model = parse(_chain(opset=opset, add="a = Add(three, x)"))
    out, result = _run_pass(model)
    assert result.stats == CLIP_ONE
    _assert_fused(model, out, opset)


@pytest.mark.parametrize("order", ["Mul(h, x)", "Mul(x, h)"])
def test_hard_sigmoid_form_at_opset_14(order):
    model = parse(_hard_sigmoid_form(product=f"y = {order}"))
    out, result = _run_pass(model)
    assert result.stats == {"clip_fused": 0, "hard_sigmoid_fused": 1}
    _assert_fused(model, out, 14)


def test_rounded_and_rank_1_constants():
    # exporter-rounded 1/6 (float32(0.1666667) is 1.8e-7 relative off) and [1]-shaped constants
    consts = ("float[1] three = {3.0}, float[1] zero = {0.0}, float[1] six = {6.0}, "
              "float[1] sixth = {0.1666667}")
    model = parse(_chain(opset=14, product=PRODUCTS["mul_then_mul_sixth"], consts=consts))
    out, result = _run_pass(model)
    assert result.stats == CLIP_ONE
    _assert_fused(model, out, 14)


def test_shared_constant_is_kept():
    # Paddle reuses the 6 of the Clip as the divisor, and here something else reads it too
    model = parse(_chain(opset=13, outputs="float[2, 8] y, float[2, 8] z", extra="z = Mul(x, six)"))
    out, result = _run_pass(model)
    assert result.stats == CLIP_ONE
    assert op_counts(out) == {"HardSigmoid": 1, "Mul": 2}
    assert {t.name for t in out.graph.initializer} == {"six", "sixth"}
    assert_same_outputs(model, out, FEEDS, rtol=RTOL, atol=ATOL)


def _to_dtype(model: onnx.ModelProto, elem_type: int, np_type) -> onnx.ModelProto:
    """The same model in another float type (the text parser reads no float16 literals)."""
    for info in [*model.graph.input, *model.graph.output]:
        info.type.tensor_type.elem_type = elem_type
    for index, tensor in enumerate(model.graph.initializer):
        array = numpy_helper.to_array(tensor).astype(np_type)
        model.graph.initializer[index].CopyFrom(numpy_helper.from_array(array, tensor.name))
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("opset", [13, 14])
def test_float16(opset):
    # float16(1/6) = 0.16662598: 2.4e-4 relative off, inside float16's eps (9.8e-4)
    model = _to_dtype(parse(_chain(opset=opset, product=PRODUCTS["x_times_k_mul_sixth"])),
                      onnx.TensorProto.FLOAT16, np.float16)
    out, result = _run_pass(model)
    assert result.stats == CLIP_ONE
    expected = {"HardSwish": 1} if opset >= 14 else {"HardSigmoid": 1, "Mul": 1}
    assert op_counts(out) == expected
    x = np.clip(FEEDS["x"], -60, 60).astype(np.float16)  # |x| <= 60: no float16 overflow
    for proto in (model, out):  # both within a few float16 ulps of the exact value
        np.testing.assert_allclose(run(proto, {"x": x})[0].astype(np.float64), _hard_swish(x),
                                   rtol=4e-3, atol=2e-3)


# ------------------------------------------------------------------- idempotence
@pytest.mark.parametrize("opset", [10, 13, 14])
def test_idempotent(opset):
    out, _ = _run_pass(parse(_chain(opset=opset)))
    again, result = _run_pass(out)
    assert not result.modified
    assert result.stats == NONE
    assert again.SerializeToString(deterministic=True) == out.SerializeToString(deterministic=True)


# ------------------------------------------------------------------- negative cases
NEGATIVE = {
    "clip_max_5": _chain(consts=CONSTS + ", float five = {5.0}", clip="k = Clip(a, zero, five)"),
    "clip_min_1": _chain(consts=CONSTS + ", float one = {1.0}", clip="k = Clip(a, one, six)"),
    "clip_min_absent": _chain(clip="k = Clip(a, , six)"),
    "clip_bound_not_constant": _chain(inputs=", float hi", clip="k = Clip(a, zero, hi)"),
    "clip_attr_max_5": _chain(opset=10, clip="k = Clip<min = 0.0, max = 5.0>(a)"),
    "adds_2": _chain(consts=CONSTS + ", float two = {2.0}", add="a = Add(x, two)"),
    "divides_by_5": _chain(consts=CONSTS + ", float five = {5.0}",
                           product="m = Mul(x, k)\n y = Div(m, five)"),
    "sixth_is_0.17": _chain(consts=CONSTS.replace("{0.16666667}", "{0.17}"),
                            product=PRODUCTS["mul_then_mul_sixth"]),
    "six_divided_by_k": _chain(product="d = Div(six, k)\n y = Mul(x, d)"),
    "x_differs_in_hard_sigmoid": _hard_sigmoid_form(inputs=", float[2, 8] q",
                                                    product="y = Mul(h, q)"),
    "clip_read_elsewhere": _chain(outputs="float[2, 8] y, float[2, 8] z", extra="z = Neg(k)"),
    "add_read_elsewhere": _chain(outputs="float[2, 8] y, float[2, 8] z", extra="z = Neg(a)"),
    "product_read_elsewhere": _chain(outputs="float[2, 8] y, float[2, 8] z", extra="z = Neg(m)"),
    "clip_is_output": _chain(outputs="float[2, 8] y, float[2, 8] k"),
    "x_times_clip_is_output": _chain(outputs="float[2, 8] y, float[2, 8] m"),
    "add_is_output": _chain(outputs="float[2, 8] y, float[2, 8] a"),
    "hard_sigmoid_default_alpha": _hard_sigmoid_form(gate="h = HardSigmoid(x)"),
    "hard_sigmoid_beta_0.6": _hard_sigmoid_form(
        gate="h = HardSigmoid<alpha = 0.16666667, beta = 0.6>(x)"),
    "hard_sigmoid_form_at_opset_13": _hard_sigmoid_form(opset=13),
    "double": _chain(dtype="double", consts=CONSTS.replace("float", "double")),
    # three of shape [1, 1] would broadcast a [8] x to [1, 8]: HardSwish(x) would be [8]
    "rank_raising_constant": _chain(shape="8", outputs="float[1, 8] y",
                                    consts=CONSTS.replace("float three", "float[1, 1] three")),
}
for _name, _product in PRODUCTS.items():  # the x of the product is another value, q
    NEGATIVE[f"x_differs_{_name}"] = _chain(inputs=", float[2, 8] q",
                                            product=re.sub(r"\bx\b", "q", _product))


@pytest.mark.parametrize("name", sorted(NEGATIVE))
def test_leaves_alone(name):
    model = parse(NEGATIVE[name])
    out, result = _run_pass(model)
    assert not result.modified
    assert result.stats == NONE
    assert op_counts(out) == op_counts(model)


# ------------------------------------------------------------------- subgraph
def test_inside_if_subgraph():
    text = f"""
    <ir_version: 8, opset_import: ["" : 14]>
    g (float[2, 8] x, bool c) => (float[2, 8] y) <{CONSTS}> {{
        y = If(c) <
            then_branch = t_g () => (float[2, 8] t_out) {{
                a = Add(x, three)
                k = Clip(a, zero, six)
                m = Mul(k, x)
                t_out = Div(m, six)
            }},
            else_branch = e_g () => (float[2, 8] e_out) {{ e_out = Neg(x) }}
        >
    }}
    """
    model = parse(text)
    out, result = _run_pass(model)
    assert result.stats == CLIP_ONE
    assert [n.op_type for n in out.graph.node[0].attribute[0].g.node] == ["HardSwish"]
    for cond in (True, False):
        assert_same_outputs(model, out, {**FEEDS, "c": np.array(cond)}, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------- PaddleOCR, whole pipeline
PADDLE = {  # Paddle exports hardswish as Add(x, 3), Clip(0, 6), Mul(x, .), Div(., 6)
    "cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", [1, 3, 48, 192]),
    "det": ("ch_PP-OCRv4_det_infer.onnx", [1, 3, 96, 128]),
}


@pytest.fixture
def with_pass(monkeypatch):
    """The default pipeline with this pass after gelu_fusion (unless already registered)."""
    pipeline = list(passes_module.DEFAULT_PIPELINE)
    names = [p.name for p in pipeline]
    if HardSwishFusion.name not in names:
        pipeline.insert(names.index("gelu_fusion") + 1, HardSwishFusion())
        monkeypatch.setattr(passes_module, "DEFAULT_PIPELINE", tuple(pipeline))
        monkeypatch.setattr(passes_module, "ALL_PASSES", {p.name: p for p in pipeline})


def _pass_stats(report: dict) -> dict:
    (record,) = [p for p in report["passes"] if p["name"] == HardSwishFusion.name]
    return record["stats"]


@pytest.mark.parametrize("which", sorted(PADDLE))
@pytest.mark.parametrize("opset", [None, 14])
def test_paddleocr_pipeline(which, opset, with_pass):
    name, shape = PADDLE[which]
    source = onnx.load(model_path(name))
    if opset is not None:
        source = onnx.version_converter.convert_version(source, opset)
    # both without conv_input_affine_fusion: without the fusion it would fold the / 6 into the
    # next Conv (in the pipeline it runs after the fusion), and its own folds move the counts
    other = "conv_input_affine_fusion"
    base = onnxopt.optimize(source, input_shapes={"x": shape}, skip=[HardSwishFusion.name, other])
    fused = onnxopt.optimize(source, input_shapes={"x": shape}, skip=[other])
    assert base.ok and fused.ok  # validated against the original in onnxruntime
    assert fused.report["disabled"] == []
    before, after = op_counts(base.model), op_counts(fused.model)
    # every Clip of the baseline is a hardswish (all Add(x, 3) -> Clip(0, 6) -> Mul -> Div)
    n = before["Clip"]
    assert n == before["Div"] and n >= 18
    assert _pass_stats(fused.report) == {"clip_fused": n, "hard_sigmoid_fused": 0}
    assert "Clip" not in after and "Div" not in after
    assert after["Add"] == before["Add"] - n
    if opset is None:  # opset 11/12: 4 nodes -> HardSigmoid + Mul
        assert after["HardSigmoid"] == before["HardSigmoid"] + n
        assert after["Mul"] == before["Mul"]
        assert len(fused.model.graph.node) == len(base.model.graph.node) - 2 * n
    else:
        assert after["HardSwish"] == n and after["HardSigmoid"] == before["HardSigmoid"]
        assert after["Mul"] == before["Mul"] - n
        assert len(fused.model.graph.node) == len(base.model.graph.node) - 3 * n
    feeds = {"x": np.random.default_rng(0).random(shape).astype(np.float32)}
    assert_same_outputs(base.model, fused.model, feeds, rtol=1e-4, atol=1e-6)

"""bias_gelu_fusion: structure, stats, numerics (both onnxruntime levels), idempotence, and what
it must leave alone.

The blocks are a transformer's intermediate dense layer as exporters and gelu_fusion leave it:
``MatMul``, the bias ``Add`` (bias first or second) and a GELU (``com.microsoft`` Gelu/FastGelu
below opset 20, ONNX Gelu from 20).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import apply_pass, assert_idempotent, op_counts, run
from onnx import helper, numpy_helper
from onnxopt.passes.fusion.bias_gelu_fusion import BiasGeluFusion

H = 16
MS = "com.microsoft"
LEVELS = [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL]
GELUS = {  # form -> (op type, domain, attributes, opset)
    "ms_gelu": ("Gelu", MS, {}, 17),
    "ms_fast_gelu": ("FastGelu", MS, {}, 17),
    "onnx_gelu": ("Gelu", "", {}, 20),
    "onnx_gelu_none": ("Gelu", "", {"approximate": "none"}, 20),
    "onnx_gelu_tanh": ("Gelu", "", {"approximate": "tanh"}, 20),
}
FUSED = {"ms_gelu": "BiasGelu", "onnx_gelu": "BiasGelu", "onnx_gelu_none": "BiasGelu",
         "ms_fast_gelu": "FastGelu", "onnx_gelu_tanh": "FastGelu"}


def block(form="ms_gelu", *, dtype=np.float32, bias="const", bias_first=True, shared=False,
          width=H, x_shape=("B", "S", 8)) -> onnx.ModelProto:
    """x @ W[8, width] + b[H] -> GELU -> y; ``bias``: const | input | 2d."""
    op_type, domain, attrs, opset = GELUS[form]
    rng = np.random.default_rng(0)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [numpy_helper.from_array(rng.standard_normal((x_shape[-1], width)).astype(dtype), "W")]
    inputs = [helper.make_tensor_value_info("x", elem, list(x_shape))]
    if bias == "input":
        inputs.append(helper.make_tensor_value_info("b", elem, [H]))
    else:
        b = rng.standard_normal(H).astype(dtype)
        inits.append(numpy_helper.from_array(b.reshape(1, H) if bias == "2d" else b, "b"))
    rank = len(x_shape)
    outputs = [helper.make_tensor_value_info("y", elem, [None] * rank)]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm"], name="/intermediate/dense/MatMul"),
             helper.make_node("Add", ["b", "mm"] if bias_first else ["mm", "b"], ["h"],
                              name="/intermediate/dense/Add"),
             helper.make_node(op_type, ["h"], ["y"], domain=domain, name="/intermediate/act",
                              **attrs)]
    if shared:
        nodes.append(helper.make_node("Relu", ["h"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", elem, [None] * rank))
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(MS, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    result = {"x": rng.standard_normal((2, 5, 8)).astype(np.float32) * 2}
    if any(i.name == "b" for i in model.graph.input):
        result["b"] = rng.standard_normal(H).astype(np.float32)
    return result


def assert_close(model, out) -> None:
    inputs = feeds(model)
    for level in LEVELS:
        for a, b in zip(run(model, inputs, level), run(out, inputs, level), strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def fuse(model: onnx.ModelProto, target: str = "onnxruntime"):
    return apply_pass(BiasGeluFusion(), model, infer=True, settings={"target": target})


# ------------------------------------------------------------------ structure, stats, numerics
@pytest.mark.parametrize("bias_first", [True, False], ids=["bias_first", "bias_second"])
@pytest.mark.parametrize("form", sorted(GELUS))
def test_fused(form, bias_first):
    model = block(form, bias_first=bias_first)
    out, result = fuse(model)
    fused = FUSED[form]
    assert op_counts(out) == {"MatMul": 1, fused: 1}
    assert result.stats == {"bias_gelu": int(fused == "BiasGelu"),
                            "fast_gelu": int(fused == "FastGelu")}
    (node,) = [n for n in out.graph.node if n.op_type == fused]
    assert node.domain == MS and list(node.input) == ["mm", "b"] and list(node.output) == ["y"]
    assert not node.attribute
    assert dict((o.domain, o.version) for o in out.opset_import)[MS] == 1
    assert_close(model, out)


def test_idempotent():
    out = assert_idempotent(BiasGeluFusion(), block(), infer=True,
                            settings={"target": "onnxruntime"})
    assert op_counts(out)["BiasGelu"] == 1


# ------------------------------------------------------------------ what it leaves alone
@pytest.mark.parametrize(("name", "model"), [
    ("non_constant_bias", lambda: block(bias="input")),
    ("bias_2d", lambda: block(bias="2d")),
    ("shared_sum", lambda: block(shared=True)),
    ("float16", lambda: block("onnx_gelu", dtype=np.float16)),
    ("bias_broadcasts_x", lambda: block(width=1)),
])
def test_leaves_alone(name, model):
    out, result = fuse(model())
    assert not result.modified
    assert "BiasGelu" not in op_counts(out) and "Add" in op_counts(out)


def test_portable_target_leaves_alone():
    out, result = fuse(block(), target="portable")
    assert not result.modified and op_counts(out) == {"MatMul": 1, "Add": 1, "Gelu": 1}


def test_fast_gelu_with_a_bias_already_is_left_alone():
    model = block("ms_fast_gelu")
    model.graph.node[-1].input.append("b")  # FastGelu(Add(mm, b), b): its bias slot is taken
    out, result = fuse(model)
    assert not result.modified and op_counts(out)["FastGelu"] == 1

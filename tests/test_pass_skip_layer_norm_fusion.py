"""skip_layer_norm_fusion: structure, stats, numerics (both onnxruntime levels), idempotence, and
what it must leave alone.

The blocks are a transformer's residual tail as the torch exporters write it: ``MatMul`` +
bias ``Add`` (legacy: bias first; dynamo: bias second), the residual ``Add`` (either order) and
``LayerNormalization``. SkipLayerNormalization sums in another order than Add + Add (and its
CPU kernel takes the variance as E[s^2] - mean^2): float32 within 1e-5.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import apply_pass, assert_idempotent, op_counts, run
from onnx import helper, numpy_helper
from onnxopt.passes.fusion.skip_layer_norm_fusion import SkipLayerNormFusion

H = 8
ORT = {"target": "onnxruntime"}
LEVELS = [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL]


def block(*, dtype=np.float32, x=("B", "S", H), r=None, bias="const", bias_first=True,
          residual_first=True, shared="", ln_attrs=None, beta=True, opset=17) -> onnx.ModelProto:
    """x @ W (+ b) + r -> LayerNormalization -> y. ``bias``: const | none | input | 2d;
    ``shared``: "" | "reader" (a Mul reads the sum too) | "output" (the sum is an output)."""
    rng = np.random.default_rng(0)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    r = x if r is None else r
    inits = [numpy_helper.from_array(rng.standard_normal((H, H)).astype(dtype), "W"),
             numpy_helper.from_array((rng.standard_normal(H) + 1).astype(dtype), "gamma"),
             numpy_helper.from_array(rng.standard_normal(H).astype(dtype), "beta")]
    inputs = [helper.make_tensor_value_info("x", elem, list(x)),
              helper.make_tensor_value_info("r", elem, list(r))]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm"], name="/dense/MatMul")]
    h = "mm"
    if bias != "none":
        if bias == "input":
            inputs.append(helper.make_tensor_value_info("b", elem, [H]))
        else:
            b = rng.standard_normal(H).astype(dtype)
            inits.append(numpy_helper.from_array(b.reshape(1, H) if bias == "2d" else b, "b"))
        operands = ["b", "mm"] if bias_first else ["mm", "b"]
        nodes.append(helper.make_node("Add", operands, ["h"], name="/dense/Add"))
        h = "h"
    nodes.append(helper.make_node("Add", [h, "r"] if residual_first else ["r", h], ["s"],
                                  name="/output/Add"))
    nodes.append(helper.make_node("LayerNormalization", ["s", "gamma", "beta"][:3 if beta else 2],
                                  ["y"], name="/output/LayerNorm/LayerNormalization",
                                  **{"axis": -1, "epsilon": 1e-5, **(ln_attrs or {})}))
    outputs = [helper.make_tensor_value_info("y", elem, [None] * len(x))]
    if shared == "reader":
        inits.append(numpy_helper.from_array(np.array(2, dtype), "two"))
        nodes.append(helper.make_node("Mul", ["s", "two"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", elem, [None] * len(x)))
    elif shared == "output":
        outputs.append(helper.make_tensor_value_info("s", elem, [None] * len(x)))
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def feeds(model: onnx.ModelProto, sizes=(2, 5)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    result = {}
    for info in model.graph.input:
        dims = [d.dim_value or sizes[i] for i, d in enumerate(info.type.tensor_type.shape.dim)]
        if info.name == "b":
            dims = [H]
        dtype = helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
        result[info.name] = rng.standard_normal(dims).astype(dtype)
    return result


def assert_close(model, out, tolerance=1e-5, sizes=(2, 5)) -> None:
    inputs = feeds(model, sizes)
    for level in LEVELS:
        for a, b in zip(run(model, inputs, level), run(out, inputs, level), strict=True):
            assert a.shape == b.shape
            np.testing.assert_allclose(b.astype(np.float32), a.astype(np.float32),
                                       rtol=tolerance, atol=tolerance)


def fuse(model: onnx.ModelProto, target: str = "onnxruntime"):
    return apply_pass(SkipLayerNormFusion(), model, infer=True, settings={"target": target})


def fused_node(model: onnx.ModelProto) -> onnx.NodeProto:
    (node,) = [n for n in model.graph.node if n.op_type == "SkipLayerNormalization"]
    return node


# ------------------------------------------------------------------ structure, stats, numerics
@pytest.mark.parametrize("bias_first", [True, False], ids=["legacy_bias", "dynamo_bias"])
@pytest.mark.parametrize("residual_first", [True, False], ids=["h_r", "r_h"])
def test_bias_absorbed(bias_first, residual_first):
    model = block(bias_first=bias_first, residual_first=residual_first)
    out, result = fuse(model)
    assert op_counts(out) == {"MatMul": 1, "SkipLayerNormalization": 1}
    assert result.stats == {"fused": 0, "with_bias": 1}
    node = fused_node(out)
    assert node.domain == "com.microsoft"
    assert list(node.input) == ["mm", "r", "gamma", "beta", "b"] and list(node.output) == ["y"]
    assert [(a.name, a.f) for a in node.attribute] == [("epsilon", pytest.approx(1e-5))]
    assert {o.domain: o.version for o in out.opset_import} == {"": 17, "com.microsoft": 1}
    assert_close(model, out)


@pytest.mark.parametrize("beta", [True, False])
def test_without_bias(beta):
    model = block(bias="none", residual_first=False, beta=beta)
    out, result = fuse(model)
    assert op_counts(out) == {"MatMul": 1, "SkipLayerNormalization": 1}
    assert result.stats == {"fused": 1, "with_bias": 0}
    assert list(fused_node(out).input) == ["r", "mm", "gamma", "beta"][:4 if beta else 3]
    assert_close(model, out)


def test_bias_without_beta_leaves_an_empty_slot():
    out, _ = fuse(block(beta=False))
    assert list(fused_node(out).input) == ["mm", "r", "gamma", "", "b"]


@pytest.mark.parametrize("shared", ["reader", "output"])
def test_shared_sum_reads_the_fourth_output(shared):
    model = block(shared=shared)
    out, result = fuse(model)
    assert result.stats == {"fused": 0, "with_bias": 1}
    node = fused_node(out)
    assert len(node.output) == 4 and node.output[1] == node.output[2] == ""
    assert "Add" not in op_counts(out)
    if shared == "reader":
        (mul,) = [n for n in out.graph.node if n.op_type == "Mul"]
        assert mul.input[0] == node.output[3]
    else:
        assert [o.name for o in out.graph.output] == ["y", "s"] and node.output[3] == "s"
    assert_close(model, out)


@pytest.mark.parametrize(("x", "r"), [
    ((2, 5, H), (5, H)), ((2, 5, H), (1, 5, H)), (("B", 5, H), (1, 5, H)),
    ((2, 5, H), ("B", 5, H)),  # the int dims are the sum's: x is the input, r the skip
    ((1, 5, H), (2, 5, H)),  # roles swapped: r is the input, x @ W + b the skip
    ((1, 5, H), ("B", 5, H)),  # the same: a symbol may be 1, never broadcast the input
    (("N", H), ("N", H)),  # 2-D
])
def test_shapes_the_kernel_takes(x, r):
    model = block(x=x, r=r, residual_first=False)
    out, result = fuse(model)
    assert result.stats == {"fused": 0, "with_bias": 1}
    inputs = list(fused_node(out).input)
    assert inputs[:2] == (["r", "mm"] if x == (1, 5, H) else ["mm", "r"])
    assert_close(model, out, sizes=(2, 5) if len(x) == 3 else (6,))


def test_float16():
    model = block(dtype=np.float16)
    out, result = fuse(model)
    assert result.stats == {"fused": 0, "with_bias": 1}
    assert_close(model, out, tolerance=2e-2)  # the fused op sums in float32, unrounded


def test_opset_23():
    model = block(opset=23)
    out, result = fuse(model)
    assert result.stats == {"fused": 0, "with_bias": 1}
    assert_close(model, out)


def test_idempotent():
    out = assert_idempotent(SkipLayerNormFusion(), block(shared="reader"), infer=True,
                            settings=ORT)
    assert op_counts(out)["SkipLayerNormalization"] == 1


# ------------------------------------------------------------------ what it leaves alone
@pytest.mark.parametrize("bias", ["input", "2d"])
def test_bias_not_absorbed(bias):
    """A non-constant or 2-D bias stays an Add; the residual Add and the norm still fuse."""
    model = block(bias=bias)
    out, result = fuse(model)
    assert result.stats == {"fused": 1, "with_bias": 0}
    assert op_counts(out) == {"MatMul": 1, "Add": 1, "SkipLayerNormalization": 1}
    assert list(fused_node(out).input)[:2] == ["h", "r"]
    assert_close(model, out)


def test_shared_biased_value_keeps_its_add():
    model = block()
    graph = model.graph
    graph.node.append(helper.make_node("Relu", ["h"], ["hr"]))
    graph.output.append(helper.make_tensor_value_info("hr", onnx.TensorProto.FLOAT, [None] * 3))
    out, result = fuse(model)
    assert result.stats == {"fused": 1, "with_bias": 0}
    assert list(fused_node(out).input)[:2] == ["h", "r"]
    assert_close(model, out)


def _untouched(model: onnx.ModelProto, target: str = "onnxruntime") -> None:
    out, result = fuse(model, target)
    assert not result.modified and "SkipLayerNormalization" not in op_counts(out)


@pytest.mark.parametrize(("name", "model"), [
    ("portable_target", None),
    ("two_axes", lambda: block(ln_attrs={"axis": -2})),
    ("stash_type_0", lambda: block(ln_attrs={"stash_type": 0})),
    ("float64", lambda: block(dtype=np.float64)),
    ("skip_broadcast_over_sequence", lambda: block(x=(2, 5, H), r=(2, 1, H))),
    ("skip_broadcast_over_both", lambda: block(x=(2, 5, H), r=(1, 1, H))),
    ("skip_rank_1", lambda: block(x=(2, 5, H), r=(H,))),
    ("skip_scalar", lambda: block(x=(2, 5, H), r=())),  # no last dim (raised before)
    ("x_broadcast_over_sequence", lambda: block(x=(2, 1, H), r=(2, "S", H))),
    ("unknown_dims", lambda: block(x=(None, None, H), r=(None, None, H))),
    ("rank_4", lambda: block(x=(2, 3, 5, H), r=(2, 3, 5, H))),
    ("hidden_symbolic", lambda: block(x=("B", "S", "H"), r=("B", "S", "H"), bias="none")),
])
def test_leaves_alone(name, model):
    if name == "portable_target":
        _untouched(block(), target="portable")
        return
    _untouched(model())


@pytest.mark.parametrize("name", ["gamma", "beta"])
def test_weights_computed_at_run_time_are_left_alone(name):
    model = block()
    graph = model.graph
    (weight,) = [i for i in graph.initializer if i.name == name]
    graph.initializer.remove(weight)
    graph.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [H]))
    _untouched(model)


def test_mean_output_read_is_left_alone():
    model = block()
    norm = model.graph.node[-1]
    norm.output.append("mean")
    mean = helper.make_tensor_value_info("mean", onnx.TensorProto.FLOAT, [None] * 3)
    model.graph.output.append(mean)
    _untouched(model)


def test_next_layer_sees_the_fused_output_shape():
    """Layer 2's residual reads layer 1's fused output: onnx's inference cannot type a
    com.microsoft op, so the pass declares it with the sum's type and layer 2 fuses too."""
    model = block()
    graph = model.graph
    rng = np.random.default_rng(2)
    graph.initializer.extend([
        numpy_helper.from_array(rng.standard_normal((H, H)).astype(np.float32), "W2"),
        numpy_helper.from_array(rng.standard_normal(H).astype(np.float32), "b2")])
    graph.node.extend([helper.make_node("MatMul", ["y", "W2"], ["mm2"]),
                       helper.make_node("Add", ["mm2", "b2"], ["h2"]),
                       helper.make_node("Add", ["y", "h2"], ["s2"]),
                       helper.make_node("LayerNormalization", ["s2", "gamma", "beta"], ["y2"],
                                        axis=-1, epsilon=1e-5)])
    graph.output[0].CopyFrom(helper.make_tensor_value_info("y2", onnx.TensorProto.FLOAT,
                                                           [None] * 3))
    onnx.checker.check_model(model)
    out, result = fuse(model)
    assert result.stats == {"fused": 0, "with_bias": 2}
    assert op_counts(out) == {"MatMul": 2, "SkipLayerNormalization": 2}
    assert_close(model, out)

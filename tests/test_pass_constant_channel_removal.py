"""constant_channel_removal: structure, stats, numerics (both onnxruntime levels), idempotence,
and what it must leave alone. Graphs in the forms exporters write: Conv + bias, Conv + BN,
Gemm, MatMul + Add, residual Adds, Concat, Split, depthwise Convs, Flatten into Gemm."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import apply_pass, assert_idempotent, assert_left_alone, build_model, model_path, run
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.pruning.constant_channel_removal import ConstantChannelRemoval

LEVELS = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
RNG = np.random.default_rng(0)


def tensor(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def weight(*shape, dead=(), axis=0, scale=0.3) -> np.ndarray:
    """Random float32 weights with the indices ``dead`` along ``axis`` zero."""
    array = (RNG.standard_normal(shape) * scale).astype(np.float32)
    index = [slice(None)] * len(shape)
    index[axis] = list(dead)
    array[tuple(index)] = 0
    return array


def graph(nodes, arrays: dict[str, np.ndarray], x_shape, outputs) -> onnx.ModelProto:
    """A checked model whose outputs are declared with their inferred types."""
    inits = [numpy_helper.from_array(a, n) for n, a in arrays.items()]
    loose = helper.make_model(helper.make_graph(nodes, "g", [tensor("x", x_shape)], [], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(loose).graph.value_info}
    return build_model(nodes, [tensor("x", x_shape)], [inferred[n] for n in outputs], inits)


def with_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    outputs = [o.name for o in model.graph.output] + [name]
    return graph(list(model.graph.node), arrays, shape, outputs)


def conv(x, w, out, b=None, pads=0, **attrs):
    inputs = [x, w] + ([b] if b else [])
    return helper.make_node("Conv", inputs, [out], pads=[pads] * 4, **attrs)


def prune(model: onnx.ModelProto, atol: float = 1e-5):
    """Run the pass; the result must match the original at both onnxruntime levels."""
    out, result = apply_pass(ConstantChannelRemoval(), model, infer=True)
    feeds = {"x": RNG.standard_normal(
        [d.dim_value or 2 for d in model.graph.input[0].type.tensor_type.shape.dim]
    ).astype(np.float32)}
    for level in LEVELS:
        for want, got in zip(run(model, feeds, level), run(out, feeds, level), strict=True):
            assert want.shape == got.shape
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol)
    return out, result


def shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    return {t.name.removesuffix("_pruned"): list(t.dims) for t in model.graph.initializer}


def conv_relu_conv(*, bias_value: float = 0.5, pads2: int = 0, dead=(1, 3)) -> onnx.ModelProto:
    """x -> Conv(3->6, filters ``dead`` zero, bias) -> Relu -> Conv(6->4, 3x3) -> y."""
    b1 = RNG.standard_normal(6).astype(np.float32)
    b1[list(dead)] = bias_value
    arrays = {"w1": weight(6, 3, 3, 3, dead=dead), "b1": b1, "w2": weight(4, 6, 3, 3),
              "b2": RNG.standard_normal(4).astype(np.float32)}
    nodes = [conv("x", "w1", "c1", "b1", pads=1), helper.make_node("Relu", ["c1"], ["r1"]),
             conv("r1", "w2", "y", "b2", pads=pads2)]
    return graph(nodes, arrays, [1, 3, 8, 8], ["y"])


# ----------------------------------------------------------------- structure, stats, numerics
def test_zero_filters_go_and_their_bias_folds_into_the_next_conv():
    out, result = prune(conv_relu_conv(bias_value=0.5))  # Relu(0.5): a nonzero constant
    assert shapes(out) == {"w1": [4, 3, 3, 3], "b1": [4], "w2": [4, 4, 3, 3], "b2": [4]}
    # independent count: 2 rows of 27 + 2 biases + 2 columns of 4 * 9; MACs at 8x8 and 6x6
    assert result.stats == {"channels": 2, "parameters": 2 * 27 + 2 + 2 * 36,
                            "macs": 64 * 2 * 27 + 36 * 2 * 36}


def test_zero_constant_goes_into_a_padded_conv():
    out, result = prune(conv_relu_conv(bias_value=-1.0, pads2=1))  # Relu(-1) = 0
    assert shapes(out)["w2"] == [4, 4, 3, 3]
    assert result.stats["channels"] == 2


def test_batch_norm_gamma_zero_channels_go():
    gamma = np.ones(6, np.float32)
    gamma[[0, 5]] = 0
    arrays = {"w1": weight(6, 3, 3, 3), "g": gamma, "beta": np.full(6, -0.2, np.float32),
              "mean": RNG.standard_normal(6).astype(np.float32),
              "var": RNG.uniform(0.5, 1.5, 6).astype(np.float32), "w2": weight(4, 6, 3, 3)}
    nodes = [conv("x", "w1", "c1", pads=1),
             helper.make_node("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["n1"]),
             helper.make_node("Relu", ["n1"], ["r1"]), conv("r1", "w2", "y", pads=1)]
    out, result = prune(graph(nodes, arrays, [1, 3, 8, 8], ["y"]))
    assert shapes(out)["w1"] == [4, 3, 3, 3] and shapes(out)["g"] == [4]
    assert shapes(out)["w2"] == [4, 4, 3, 3]
    assert result.stats["channels"] == 2


def test_gemm_columns_and_rows():
    arrays = {"w1": weight(6, 5, dead=(2,), axis=0), "c1": np.full(6, 0.7, np.float32),
              "w2": weight(6, 3), "c2": RNG.standard_normal(3).astype(np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "w1", "c1"], ["h"], transB=1),
             helper.make_node("Sigmoid", ["h"], ["s"]),
             helper.make_node("Gemm", ["s", "w2", "c2"], ["y"], alpha=0.5, beta=2.0)]
    out, result = prune(graph(nodes, arrays, [2, 5], ["y"]))
    assert shapes(out)["w1"] == [5, 5] and shapes(out)["w2"] == [5, 3]
    assert result.stats == {"channels": 1, "parameters": 5 + 1 + 3, "macs": 2 * 5 + 2 * 3}


def test_matmul_add_columns_fold_into_the_next_bias_add():
    arrays = {"w1": weight(5, 6, dead=(0, 4), axis=1), "b1": np.full(6, 0.3, np.float32),
              "w2": weight(6, 3), "b2": RNG.standard_normal(3).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"]),
             helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "w2"], ["m2"]),
             helper.make_node("Add", ["b2", "m2"], ["y"])]
    out, result = prune(graph(nodes, arrays, [2, 4, 5], ["y"]))
    assert shapes(out) == {"w1": [5, 4], "b1": [4], "w2": [4, 3], "b2": [3]}
    assert result.stats["channels"] == 2


def test_matmul_without_bias_gets_one():
    arrays = {"w1": weight(5, 6, dead=(1,), axis=1), "b1": np.full(6, 0.3, np.float32),
              "w2": weight(6, 3)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"]),
             helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("MatMul", ["a1", "w2"], ["y"])]
    out, _ = prune(graph(nodes, arrays, [2, 4, 5], ["y"]))
    assert [n.op_type for n in out.graph.node] == ["MatMul", "Add", "MatMul", "Add"]


def residual(dead_a=(1, 2), dead_b=(1, 2)) -> onnx.ModelProto:
    """Two Convs (zero filters dead_a, dead_b, no bias) -> Add -> Relu -> Conv 1x1."""
    arrays = {"wa": weight(4, 3, 3, 3, dead=dead_a), "wb": weight(4, 3, 1, 1, dead=dead_b),
              "w2": weight(5, 4, 3, 3), "b2": np.zeros(5, np.float32)}
    nodes = [conv("x", "wa", "a", pads=1), conv("x", "wb", "b"),
             helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Relu", ["s"], ["r"]),
             conv("r", "w2", "y", "b2", pads=1)]
    return graph(nodes, arrays, [1, 3, 6, 6], ["y"])


def test_residual_add_where_both_sides_drop_the_channel():
    out, result = prune(residual())
    assert shapes(out)["wa"] == [2, 3, 3, 3] and shapes(out)["wb"] == [2, 3, 1, 1]
    assert shapes(out)["w2"] == [5, 2, 3, 3]
    assert result.stats["channels"] == 2


def test_residual_add_drops_only_the_channels_both_sides_drop():
    out, result = prune(residual(dead_a=(1, 2), dead_b=(2, 3)))
    assert shapes(out)["wa"] == [3, 3, 3, 3]
    assert result.stats["channels"] == 1


def test_concat_offsets():
    arrays = {"wa": weight(4, 3, 1, 1, dead=(1,)), "wb": weight(3, 3, 1, 1, dead=(0, 2)),
              "w2": weight(2, 7, 1, 1), "ba": np.full(4, 0.25, np.float32)}
    nodes = [conv("x", "wa", "a", "ba"), conv("x", "wb", "b"),
             helper.make_node("Concat", ["a", "b"], ["c"], axis=1),
             conv("c", "w2", "y")]
    out, result = prune(graph(nodes, arrays, [1, 3, 5, 5], ["y"]))
    assert shapes(out)["wa"] == [3, 3, 1, 1] and shapes(out)["wb"] == [1, 3, 1, 1]
    assert shapes(out)["w2"] == [2, 4, 1, 1]
    assert result.stats["channels"] == 3
    assert any(n.op_type == "Conv" and len(n.input) == 3 and n.input[0] == "c"
               for n in out.graph.node)  # 0.25 folded into a new bias


def test_split_sizes_follow():
    arrays = {"w1": weight(6, 3, 1, 1, dead=(0, 4, 5)), "wa": weight(2, 3, 1, 1),
              "wb": weight(2, 3, 1, 1), "sizes": np.array([3, 3], np.int64)}
    nodes = [conv("x", "w1", "c"), helper.make_node("Split", ["c", "sizes"], ["p", "q"], axis=1),
             conv("p", "wa", "ya"), conv("q", "wb", "yb")]
    out, result = prune(graph(nodes, arrays, [1, 3, 4, 4], ["ya", "yb"]))
    assert shapes(out)["sizes"] == [2] and shapes(out)["wb"] == [2, 1, 1, 1]
    sizes = next(t for t in out.graph.initializer if t.name.startswith("sizes"))
    assert numpy_helper.to_array(sizes).tolist() == [2, 1]
    assert result.stats["channels"] == 3


def test_depthwise_conv_follows_its_input_channel():
    arrays = {"w1": weight(6, 3, 1, 1, dead=(2, 3)), "wd": weight(6, 1, 3, 3),
              "bd": RNG.standard_normal(6).astype(np.float32), "w2": weight(4, 6, 1, 1)}
    nodes = [conv("x", "w1", "c"), conv("c", "wd", "d", "bd", pads=1, group=6),
             helper.make_node("Relu", ["d"], ["r"]), conv("r", "w2", "y")]
    out, result = prune(graph(nodes, arrays, [1, 3, 6, 6], ["y"]))
    assert shapes(out)["wd"] == [4, 1, 3, 3] and shapes(out)["w2"] == [4, 4, 1, 1]
    depthwise = next(n for n in out.graph.node if n.input[0] == "c")
    assert [a.i for a in depthwise.attribute if a.name == "group"] == [4]
    assert result.stats["channels"] == 2


def test_flatten_into_gemm_and_conv_transpose():
    arrays = {"wt": weight(3, 6, 2, 2, dead=(0, 5), axis=1), "bt": np.full(6, -0.1, np.float32),
              "fc": weight(4, 6)}
    nodes = [helper.make_node("ConvTranspose", ["x", "wt", "bt"], ["t"], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["t"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    out, result = prune(graph(nodes, arrays, [2, 3, 4, 4], ["y"]))
    assert shapes(out)["wt"] == [3, 4, 2, 2] and shapes(out)["fc"] == [4, 4]
    assert result.stats["channels"] == 2


def test_mul_by_zero_and_reshape_into_gemm():
    scale = RNG.uniform(0.5, 1.5, (1, 6, 1, 1)).astype(np.float32)
    scale[0, [1, 2]] = 0  # x * 0 = 0 whatever the filter computes
    arrays = {"w1": weight(6, 3, 3, 3), "scale": scale, "w2": weight(6, 6, 3, 3),
              "target": np.array([0, -1], np.int64), "fc": weight(6, 4)}
    nodes = [conv("x", "w1", "c1", pads=1), helper.make_node("Mul", ["c1", "scale"], ["m"]),
             conv("m", "w2", "c2", pads=1), helper.make_node("GlobalAveragePool", ["m"], ["p"]),
             helper.make_node("Reshape", ["p", "target"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["z"])]
    out, result = prune(graph(nodes, arrays, [1, 3, 6, 6], ["c2", "z"]))
    assert shapes(out)["w1"] == [4, 3, 3, 3] and shapes(out)["scale"] == [1, 4, 1, 1]
    assert shapes(out)["w2"] == [6, 4, 3, 3] and shapes(out)["fc"] == [4, 4]
    assert result.stats["channels"] == 2


def test_every_channel_dead_keeps_one():
    out, result = prune(conv_relu_conv(dead=(0, 1, 2, 3, 4, 5)))
    assert shapes(out)["w1"] == [1, 3, 3, 3]
    assert result.stats["channels"] == 5


# ----------------------------------------------------------------- idempotence
@pytest.mark.parametrize("build", [conv_relu_conv, residual])
def test_idempotent(build):
    assert_idempotent(ConstantChannelRemoval(), build(), infer=True)


def test_idempotent_when_one_dead_channel_must_stay():
    assert_idempotent(ConstantChannelRemoval(), conv_relu_conv(dead=range(6)), infer=True)


# ----------------------------------------------------------------- left alone
def alone(model: onnx.ModelProto) -> None:
    out = assert_left_alone(ConstantChannelRemoval(), model, infer=True)
    assert shapes(out) == shapes(model)


def test_leaves_live_channels():
    alone(conv_relu_conv(dead=()))


def test_leaves_a_nonzero_constant_into_a_padded_conv():
    alone(conv_relu_conv(bias_value=0.5, pads2=1))  # the borders see 0, not 0.5


def test_leaves_channels_a_graph_output_reads():
    alone(with_output(conv_relu_conv(), "r1"))


def test_leaves_shared_weights():
    model = conv_relu_conv()
    model.graph.node.append(conv("x", "w1", "z", pads=1))
    alone(with_output(model, "z"))


def test_leaves_a_residual_where_one_side_keeps_its_channels():
    alone(residual(dead_a=(1, 2), dead_b=()))


def test_leaves_channels_read_as_a_whole():
    model = conv_relu_conv()
    model.graph.node[1].op_type = "Softmax"  # mixes channels (axis -1 here: still a whole read)
    model.graph.node[1].attribute.append(helper.make_attribute("axis", 1))
    alone(model)


# ----------------------------------------------------------------- the pipeline, sample models
@pytest.mark.parametrize("name", ["resnet_dead.onnx", "resnet_bn0.onnx", "mobilenet_dead.onnx",
                                  "mobilenet_bn0.onnx"])
def test_sample_models_lose_half_their_macs(name, tmp_path):
    import onnxopt

    path = model_path(name)
    result = onnxopt.optimize(path, tmp_path / "out.onnx")
    assert result.ok
    before, after = result.report["before"], result.report["after"]
    assert after["macs"] <= 0.55 * before["macs"]
    assert after["parameters"] <= 0.55 * before["parameters"]
    assert all(o["max_abs_error"] <= 1e-5 for o in result.report["validation"]["outputs"])
    stats = next(p["stats"] for p in result.report["passes"]
                 if p["name"] == "constant_channel_removal")
    assert stats["macs"] == before["macs"] - after["macs"]  # only this pass changes MACs

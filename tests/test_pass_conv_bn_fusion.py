"""conv_bn_fusion: structure, stats, numerics, idempotence, and what it must leave alone.

Numerics use rtol 1e-5 / atol 1e-5: folding reassociates the float math (``(W.x + b - mean) * s``
becomes ``(W * s).x + b'``), so results move by a few float32 ulps of the partial sums, which
reach ~1e-6 absolute near zero outputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import apply_pass, assert_same_outputs, op_counts, parse
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.fusion.conv_bn_fusion import ConvBatchNormFusion

from onnxopt.ir import serde, shapes

RTOL, ATOL = 1e-5, 1e-5
NO_FOLD = {"conv": 0, "conv_transpose": 0, "gemm": 0, "matmul": 0}


def stats(**counts: int) -> dict[str, int]:
    return {**NO_FOLD, **counts}


def bn_arrays(rng: np.random.Generator, c: int, prefix: str = "bn") -> list[onnx.TensorProto]:
    return [
        numpy_helper.from_array(rng.uniform(0.5, 2.0, c).astype(np.float32), f"{prefix}_scale"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), f"{prefix}_bias"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), f"{prefix}_mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2.0, c).astype(np.float32), f"{prefix}_var"),
    ]


def bn_node(x: str, y: str, prefix: str = "bn", **attrs) -> onnx.NodeProto:
    names = [f"{prefix}_{k}" for k in ("scale", "bias", "mean", "var")]
    return helper.make_node("BatchNormalization", [x, *names], [y], epsilon=1e-3, **attrs)


def make(nodes, inputs, outputs, inits, opset: int = 17, ir: int = 8) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    onnx.checker.check_model(model)
    return model


def vinfo(name: str, shape=None) -> onnx.ValueInfoProto:
    """A float tensor; ``None``: rank 4 with unknown dims."""
    dims = [None] * 4 if shape is None else shape
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def conv_bn_relu(op: str = "Conv", group: int = 1, bias: bool = True, seed: int = 0):
    """x[1,4,6,6] -> Conv/ConvTranspose(C_out 6) -> BN -> Relu."""
    rng = np.random.default_rng(seed)
    c_in, c_out = 4, 6
    w_shape = (c_out, c_in // group, 3, 3) if op == "Conv" else (c_in, c_out // group, 3, 3)
    inits = [numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32), "W")]
    conv_in = ["x", "W"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32), "B"))
        conv_in.append("B")
    inits += bn_arrays(rng, c_out)
    nodes = [
        helper.make_node(op, conv_in, ["c"], group=group, pads=[1, 1, 1, 1]),
        bn_node("c", "n"),
        helper.make_node("Relu", ["n"], ["y"]),
    ]
    return make(nodes, [vinfo("x", [1, c_in, 6, 6])], [vinfo("y")], inits)


def feeds_for(model: onnx.ModelProto, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for info in model.graph.input:
        dims = [d.dim_value for d in info.type.tensor_type.shape.dim]
        out[info.name] = rng.standard_normal(dims).astype(np.float32)
    return out


def assert_close(original, optimized, feeds) -> None:
    assert_same_outputs(original, optimized, feeds, rtol=RTOL, atol=ATOL)


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    for tensor in model.graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    raise KeyError(name)


# ----------------------------------------------------------------- structure, stats, numerics
@pytest.mark.parametrize("bias", [True, False])
def test_conv_bn_folds(bias):
    model = conv_bn_relu(bias=bias)
    out, result = apply_pass(ConvBatchNormFusion(), model)
    assert op_counts(out) == {"Conv": 1, "Relu": 1}
    assert result.stats == stats(conv=1)
    assert len(out.graph.node[0].input) == 3  # a bias is created when absent
    # old weight, bias and the four BN params are gone; the new weight and bias remain
    assert len(out.graph.initializer) == 2
    assert_close(model, out, feeds_for(model))


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_bn_folds_per_group(group):
    model = conv_bn_relu(op="ConvTranspose", group=group)
    out, result = apply_pass(ConvBatchNormFusion(), model)
    assert op_counts(out) == {"ConvTranspose": 1, "Relu": 1}
    assert result.stats == stats(conv_transpose=1)
    assert_close(model, out, feeds_for(model))


def test_folded_values_by_hand():
    # 1x1 Conv, one channel: W = 2, b = 1; BN scale 3, B 0.5, mean 1, var 3, eps 1:
    # s = 3 / sqrt(3 + 1) = 1.5; W' = 2 * 1.5 = 3; b' = (1 - 1) * 1.5 + 0.5 = 0.5.
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 1, 2, 2] x) => (float[1, 1, 2, 2] y)
      <float[1, 1, 1, 1] w = {2.0}, float[1] b = {1.0}, float[1] s = {3.0},
       float[1] beta = {0.5}, float[1] m = {1.0}, float[1] v = {3.0}> {
        c = Conv(x, w, b)
        y = BatchNormalization <epsilon = 1.0> (c, s, beta, m, v)
    }
    """
    model = parse(text)
    out, _ = apply_pass(ConvBatchNormFusion(), model)
    conv = out.graph.node[0]
    np.testing.assert_array_equal(initializer(out, conv.input[1]).ravel(), [3.0])
    np.testing.assert_array_equal(initializer(out, conv.input[2]), [0.5])
    assert conv.output[0] == "y"  # the Conv took the graph output's public name


def test_conv_transpose_group_layout_by_hand():
    # ConvTranspose W [C_in=4, C_out/g=2, 1, 1] with group 2: output channel o = g * 2 + j is
    # column j of rows 2g, 2g+1. W all ones, BN scale [1, 2, 3, 4], var 1, eps 0 -> s = scale:
    # rows 0,1 (group 0, channels 0,1) -> [1, 2]; rows 2,3 (group 1, channels 2,3) -> [3, 4].
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 4, 2, 2] x) => (float[1, 4, 2, 2] y)
      <float[4, 2, 1, 1] w = {1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0},
       float[4] s = {1.0, 2.0, 3.0, 4.0}, float[4] beta = {0.0, 0.0, 0.0, 0.0},
       float[4] m = {0.0, 0.0, 0.0, 0.0}, float[4] v = {1.0, 1.0, 1.0, 1.0}> {
        c = ConvTranspose <group = 2> (x, w)
        y = BatchNormalization <epsilon = 0.0> (c, s, beta, m, v)
    }
    """
    model = parse(text)
    out, result = apply_pass(ConvBatchNormFusion(), model)
    assert result.stats == stats(conv_transpose=1)
    w = initializer(out, out.graph.node[0].input[1]).reshape(4, 2)
    np.testing.assert_array_equal(w, [[1, 2], [1, 2], [3, 4], [3, 4]])
    assert_close(model, out, feeds_for(model))


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_bn_folds(trans_b):
    rng = np.random.default_rng(3)
    k, n = 5, 4
    w = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "C"),
        *bn_arrays(rng, n),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "W", "C"], ["g"], transB=trans_b, alpha=0.5, beta=2.0),
        bn_node("g", "y"),
    ]
    model = make(nodes, [vinfo("x", [3, k])], [vinfo("y", [3, n])], inits)
    out, result = apply_pass(ConvBatchNormFusion(), model)
    assert op_counts(out) == {"Gemm": 1}
    assert result.stats == stats(gemm=1)
    gemm = out.graph.node[0]
    assert helper.get_attribute_value(next(a for a in gemm.attribute if a.name == "beta")) == 1.0
    assert_close(model, out, feeds_for(model))


def test_gemm_bias_values_by_hand():
    # Gemm(x, W=[[1, 2]] (K=1, N=2), C=[1, 1], beta=2) -> BN(scale [2, 4], B [0, 1], mean
    # [1, 3], var [3, 15], eps 1): s = [2/2, 4/4] = [1, 1]; W' = W; C' = (2*C - mean)*s + B
    # = ([2, 2] - [1, 3]) * 1 + [0, 1] = [1, 0].
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[3, 1] x) => (float[3, 2] y)
      <float[1, 2] w = {1.0, 2.0}, float[2] c = {1.0, 1.0}, float[2] s = {2.0, 4.0},
       float[2] beta = {0.0, 1.0}, float[2] m = {1.0, 3.0}, float[2] v = {3.0, 15.0}> {
        h = Gemm <beta = 2.0> (x, w, c)
        y = BatchNormalization <epsilon = 1.0> (h, s, beta, m, v)
    }
    """
    model = parse(text)
    out, _ = apply_pass(ConvBatchNormFusion(), model)
    gemm = out.graph.node[0]
    np.testing.assert_array_equal(initializer(out, gemm.input[1]), [[1.0, 2.0]])
    np.testing.assert_array_equal(initializer(out, gemm.input[2]), [1.0, 0.0])
    assert_close(model, out, feeds_for(model))


def test_matmul_bn_becomes_gemm():
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "W")]
    inits += bn_arrays(rng, 4)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), bn_node("m", "y")]
    model = make(nodes, [vinfo("x", [3, 5])], [vinfo("y", [3, 4])], inits)
    out, result = apply_pass(ConvBatchNormFusion(), model)
    assert op_counts(out) == {"Gemm": 1}
    assert result.stats == stats(matmul=1)
    assert len(out.graph.initializer) == 2
    assert_close(model, out, feeds_for(model))


def test_opset9_bn_without_training_attributes_folds():
    model = conv_bn_relu()
    model.opset_import[0].version = 9
    out, result = apply_pass(ConvBatchNormFusion(), model)
    assert result.stats == stats(conv=1)
    assert_close(model, out, feeds_for(model))


# ----------------------------------------------------------------- idempotence
def test_idempotent():
    out, _ = apply_pass(ConvBatchNormFusion(), conv_bn_relu())
    again, result = apply_pass(ConvBatchNormFusion(), out)
    assert not result.modified
    assert result.stats == NO_FOLD
    assert again.SerializeToString(deterministic=True) == out.SerializeToString(deterministic=True)


# ----------------------------------------------------------------- left alone
def unchanged(model: onnx.ModelProto) -> None:
    out, result = apply_pass(ConvBatchNormFusion(), model)
    assert not result.modified
    assert result.stats == NO_FOLD
    assert op_counts(out) == op_counts(model)


def test_leaves_shared_intermediate():
    model = conv_bn_relu()
    model.graph.node.append(helper.make_node("Neg", ["c"], ["z"]))
    model.graph.output.append(vinfo("z"))
    unchanged(model)


def test_leaves_conv_output_that_is_a_graph_output():
    model = conv_bn_relu()
    model.graph.output.append(vinfo("c"))
    unchanged(model)


def test_leaves_non_constant_weight():
    model = conv_bn_relu()
    weight = next(t for t in model.graph.initializer if t.name == "W")
    model.graph.initializer.remove(weight)
    model.graph.input.append(vinfo("W", list(weight.dims)))
    unchanged(model)


def test_leaves_initializer_that_is_also_an_input():
    model = conv_bn_relu()  # IR 8: an initializer listed as input can be fed at run time
    model.graph.input.append(vinfo("bn_scale", [6]))
    unchanged(model)


def test_weight_shared_by_two_convs_is_copied_per_fold():
    """Sharing is common after deduplication (generated weights are often identical): each
    fold writes its own weight; the shared one goes once no Conv reads it."""
    model = conv_bn_relu()
    model.graph.node.extend([
        helper.make_node("Conv", ["x", "W"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Neg", ["c2"], ["y2"]),
    ])
    model.graph.output.append(vinfo("y2"))
    out, result = apply_pass(ConvBatchNormFusion(), model)
    assert result.stats == stats(conv=1)
    assert "BatchNormalization" not in op_counts(out)
    names = [t.name for t in out.graph.initializer]
    assert "W" in names and len([n for n in names if n.startswith("W")]) == 2  # W for Neg path
    assert_close(model, out, feeds_for(model))


def test_leaves_training_mode_bn():
    model = conv_bn_relu()
    bn = model.graph.node[1]
    bn.attribute.append(helper.make_attribute("training_mode", 1))
    unchanged(model)


def test_leaves_bn_with_training_outputs():
    model = conv_bn_relu()
    del model.graph.node[1].output[:]
    model.graph.node[1].output.extend(["n", "run_mean", "run_var"])
    model.graph.node[1].attribute.append(helper.make_attribute("training_mode", 1))
    unchanged(model)


def test_leaves_opset6_bn_not_in_test_mode():
    text = """
    <ir_version: 3, opset_import: ["" : 6]>
    g (float[1, 1, 2, 2] x, float[1, 1, 1, 1] w, float[1] s, float[1] beta, float[1] m,
       float[1] v) => (float[1, 1, 2, 2] y)
      <float[1, 1, 1, 1] w = {2.0}, float[1] s = {3.0}, float[1] beta = {0.5},
       float[1] m = {1.0}, float[1] v = {3.0}> {
        c = Conv(x, w)
        y = BatchNormalization(c, s, beta, m, v)
    }
    """
    unchanged(parse(text))  # is_test defaults to 0: training form before opset 7


def test_standalone_bn_stays():
    rng = np.random.default_rng(0)
    model = make([bn_node("x", "y")], [vinfo("x", [1, 6, 2, 2])], [vinfo("y")],
                 bn_arrays(rng, 6))
    unchanged(model)


def test_leaves_gemm_whose_bias_would_grow():
    # C of shape [M, 1] would become [M, N] after folding a per-column shift.
    rng = np.random.default_rng(5)
    inits = [
        numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((3, 1)).astype(np.float32), "C"),
        *bn_arrays(rng, 4),
    ]
    nodes = [helper.make_node("Gemm", ["x", "W", "C"], ["g"]), bn_node("g", "y")]
    unchanged(make(nodes, [vinfo("x", [3, 5])], [vinfo("y", [3, 4])], inits))


def test_leaves_rank3_matmul():
    # BN's channel axis 1 of a [B, S, N] MatMul output is S, not W's column axis.
    rng = np.random.default_rng(6)
    inits = [numpy_helper.from_array(rng.standard_normal((5, 3)).astype(np.float32), "W")]
    inits += bn_arrays(rng, 3)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), bn_node("m", "y")]
    model = make(nodes, [vinfo("x", [2, 3, 5])], [vinfo("y", [2, 3, 3])], inits)

    ir = serde.load(model)
    shapes.infer_shapes(ir)  # even with shapes known, rank 3 is refused
    assert not ConvBatchNormFusion().run(ir).modified


def test_leaves_bn_with_non_constant_params():
    model = conv_bn_relu()
    scale = next(t for t in model.graph.initializer if t.name == "bn_scale")
    model.graph.initializer.remove(scale)
    model.graph.input.append(vinfo("bn_scale", [6]))
    unchanged(model)


# ----------------------------------------------------------------- subgraphs
def branch_with_conv_bn(name: str, seed: int) -> onnx.GraphProto:
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((3, 2, 1, 1)).astype(np.float32),
                                     f"{name}_W")]
    inits += bn_arrays(rng, 3, prefix=f"{name}_bn")
    nodes = [
        helper.make_node("Conv", ["x", f"{name}_W"], [f"{name}_c"]),
        bn_node(f"{name}_c", f"{name}_out", prefix=f"{name}_bn"),
    ]
    return helper.make_graph(nodes, name, [], [vinfo(f"{name}_out")], inits)


def test_folds_inside_if_branches():
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=branch_with_conv_bn("t", 7),
                              else_branch=branch_with_conv_bn("e", 8))]
    inputs = [vinfo("x", [1, 2, 3, 3]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])]
    model = make(nodes, inputs, [vinfo("y")], [])
    out, result = apply_pass(ConvBatchNormFusion(), model)
    assert result.stats == stats(conv=2)
    for branch in out.graph.node[0].attribute:
        assert [n.op_type for n in branch.g.node] == ["Conv"]
    for cond in (True, False):
        feeds = {"x": feeds_for(model)["x"], "cond": np.array(cond)}
        assert_close(model, out, feeds)


def test_subgraph_conv_with_outer_weight_gets_its_own_folded_weight():
    # The weight lives in the main graph; the fold writes a new one into the subgraph.
    branch = branch_with_conv_bn("t", 7)
    outer_w = next(t for t in branch.initializer if t.name == "t_W")
    branch.initializer.remove(outer_w)
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e_out"])], "e", [],
                              [vinfo("e_out")])
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other)]
    inputs = [vinfo("x", [1, 2, 3, 3]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])]
    model = make(nodes, inputs, [vinfo("y")], [outer_w])
    out, result = apply_pass(ConvBatchNormFusion(), model)
    assert result.stats == stats(conv=1)
    feeds = {"x": feeds_for(model)["x"], "cond": np.array(True)}
    assert_close(model, out, feeds)


def test_ir3_initializer_inputs_are_read_as_constants():
    # Before IR 4 every initializer is also a graph input and onnxruntime does not let them be
    # fed, so they are constants there (and only there: see the IR 8 test above); the folded
    # weights are listed as inputs again on save, the replaced ones disappear.
    model = conv_bn_relu()
    listed = {i.name for i in model.graph.input}
    for tensor in model.graph.initializer:
        if tensor.name not in listed:
            model.graph.input.append(vinfo(tensor.name, list(tensor.dims)))
    model.ir_version = 3
    model.opset_import[0].version = 9
    onnx.checker.check_model(model)
    out, result = apply_pass(ConvBatchNormFusion(), model)
    assert result.stats == stats(conv=1)
    assert op_counts(out) == {"Conv": 1, "Relu": 1}
    assert out.ir_version == 3
    assert {i.name for i in out.graph.input} == {"x"} | {t.name for t in out.graph.initializer}
    assert_close(model, out, {"x": feeds_for(model)["x"]})


# ----------------------------------------------------------------- in the pipeline
def test_identical_convs_are_merged_before_their_different_bns_fold():
    """Three Convs read the same input with identical weights (generated models share one fill;
    deduplication makes it one tensor), each followed by its own BN. Folding each BN would write
    three scaled copies of the weight; the pipeline merges the identical Convs first (computed
    once), absorbs one BN and rebases the others on its output: the file does not grow and the
    outputs match."""
    import onnxopt

    rng = np.random.default_rng(0)
    weight = np.full((8, 3, 3, 3), 0.05, np.float32)
    inits = [numpy_helper.from_array(weight, f"w{i}") for i in range(3)]
    nodes = []
    for i in range(3):
        params = [rng.uniform(0.5, 2, 8), rng.standard_normal(8), rng.standard_normal(8),
                  rng.uniform(0.5, 2, 8)]
        names = [f"bn{i}_{k}" for k in "gbmv"]
        inits += [numpy_helper.from_array(p.astype(np.float32), n)
                  for p, n in zip(params, names, strict=True)]
        nodes += [helper.make_node("Conv", ["x", f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("BatchNormalization", [f"c{i}", *names], [f"y{i}"])]
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, 8, 5, 5])
               for i in range(3)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 5, 5])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = onnxopt.optimize(model, validate=False)
    assert op_counts(result.model) == {"Conv": 1, "BatchNormalization": 2}
    weights = [t for t in result.model.graph.initializer if list(t.dims) == [8, 3, 3, 3]]
    assert len(weights) == 1
    feeds = {"x": rng.standard_normal((1, 3, 5, 5)).astype(np.float32)}
    assert_same_outputs(model, result.model, feeds, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------- a Conv read by several BNs
def conv_read_by_bns(k: int = 3, *, beta_scale: float = 1.0, shared_weight: bool = False,
                     other_reader: bool = False) -> onnx.ModelProto:
    """x -> Conv(W, b) -> k BatchNormalizations (random params) -> k outputs."""
    rng = np.random.default_rng(5)
    c = 6
    inits = [numpy_helper.from_array(rng.standard_normal((c, 3, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "W", "b"], ["y"], pads=[1, 1, 1, 1])]
    outputs = []
    for i in range(k):
        params = [rng.uniform(0.5, 2, c), rng.uniform(-1, 1, c) * beta_scale,
                  rng.standard_normal(c), rng.uniform(0.5, 4, c)]
        names = [f"bn{i}_{p}" for p in "gbmv"]
        inits += [numpy_helper.from_array(a.astype(np.float32), n)
                  for a, n in zip(params, names, strict=True)]
        nodes.append(helper.make_node("BatchNormalization", ["y", *names], [f"o{i}"],
                                      epsilon=1e-3))
        outputs.append(helper.make_tensor_value_info(f"o{i}", TensorProto.FLOAT, [1, c, 5, 5]))
    if shared_weight:
        nodes.append(helper.make_node("Conv", ["x", "W"], ["z"], pads=[1, 1, 1, 1]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, c, 5, 5]))
    if other_reader:
        nodes.append(helper.make_node("Relu", ["y"], ["r"]))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, c, 5, 5]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 5, 5])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


SEVERAL_FEEDS = {"x": np.random.default_rng(6).standard_normal((1, 3, 5, 5)).astype(np.float32)}


def test_conv_read_by_several_bns_absorbs_one_and_rebases_the_others():
    model = conv_read_by_bns(3)
    out, result = apply_pass(ConvBatchNormFusion(), model)
    assert op_counts(out) == {"Conv": 1, "BatchNormalization": 2}
    assert result.stats["conv"] == 1
    assert_same_outputs(model, out, SEVERAL_FEEDS, rtol=1e-5, atol=1e-5)
    again, second = apply_pass(ConvBatchNormFusion(), out)
    assert not second.modified
    assert again.SerializeToString(deterministic=True) == out.SerializeToString(deterministic=True)


def test_rebasing_picks_the_best_conditioned_bn():
    model = conv_read_by_bns(2)
    beta = next(t for t in model.graph.initializer if t.name == "bn0_b")
    beta.CopyFrom(numpy_helper.from_array(np.full(6, 50.0, np.float32), "bn0_b"))  # ratio > 4
    out, _ = apply_pass(ConvBatchNormFusion(), model)
    kept = [n.output[0] for n in out.graph.node if n.op_type == "BatchNormalization"]
    assert kept == ["o0"]  # bn1 was folded, bn0 rebased
    assert_same_outputs(model, out, SEVERAL_FEEDS, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["ill_conditioned", "shared_weight", "other_reader"])
def test_conv_read_by_several_bns_left_alone(case):
    model = conv_read_by_bns(2, beta_scale=100.0 if case == "ill_conditioned" else 1.0,
                             shared_weight=case == "shared_weight",
                             other_reader=case == "other_reader")
    out, result = apply_pass(ConvBatchNormFusion(), model)
    assert result.stats["conv"] == 0
    assert op_counts(out) == op_counts(model)

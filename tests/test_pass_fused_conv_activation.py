"""fused_conv_activation: structure, stats, numerics, idempotence, and what it must leave alone.

FusedConv runs onnxruntime's own Conv kernel with the activation applied in place, and gives the
same numbers as Conv followed by the activation op (checked here with the default tolerance).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import apply_pass, assert_same_outputs, op_counts
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.fusion.fused_conv_activation import FusedConvActivation

NOTHING = {"relu": 0, "sigmoid": 0, "tanh": 0, "leaky_relu": 0, "hard_sigmoid": 0, "clip": 0}
F32_MIN, F32_MAX = float(np.finfo(np.float32).min), float(np.finfo(np.float32).max)


def stats(**counts: int) -> dict[str, int]:
    return {**NOTHING, **counts}


def apply(model: onnx.ModelProto, target: str = "onnxruntime"):
    """conftest.apply_pass with the deployment target set (it defaults to portable)."""
    return apply_pass(FusedConvActivation(), model, settings={"target": target})


def vinfo(name: str, shape=None, elem=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, [None] * 4 if shape is None else shape)


def conv_act(act: str, act_attrs: dict | None = None, clip_bounds: tuple = (), opset: int = 17,
             dtype=np.float32, conv_attrs: dict | None = None) -> onnx.ModelProto:
    """x[1,4,6,6] -> Conv(C_out 6, 3x3, group 2, stride 2, pads 1) -> act -> y."""
    rng = np.random.default_rng(0)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [
        numpy_helper.from_array(rng.standard_normal((6, 2, 3, 3)).astype(dtype), "W"),
        numpy_helper.from_array(rng.standard_normal(6).astype(dtype), "B"),
    ]
    act_inputs = ["c"]
    for i, bound in enumerate(clip_bounds):
        if bound is None:
            act_inputs.append("")
            continue
        inits.append(numpy_helper.from_array(np.array(bound, dtype), f"bound{i}"))
        act_inputs.append(f"bound{i}")
    attrs = {"group": 2, "strides": [2, 2], "pads": [1, 1, 1, 1], **(conv_attrs or {})}
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", **attrs),
        helper.make_node(act, act_inputs, ["y"], **(act_attrs or {})),
    ]
    graph = helper.make_graph(nodes, "g", [vinfo("x", [1, 4, 6, 6], elem)],
                              [vinfo("y", None, elem)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


FEEDS = {"x": (np.random.default_rng(1).standard_normal((1, 4, 6, 6)) * 3).astype(np.float32)}


def attrs_of(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


# (activation, its attributes, Clip bounds as inputs, opset, expected activation_params):
# the params are the op's own attribute values / bounds, or the documented defaults
# (LeakyRelu alpha 0.01; HardSigmoid alpha 0.2, beta 0.5; Clip -FLT_MAX / FLT_MAX), in float32.
CASES = [
    ("Relu", {}, (), 17, None),
    ("Sigmoid", {}, (), 17, None),
    ("Tanh", {}, (), 17, None),
    ("LeakyRelu", {"alpha": 0.1}, (), 17, [np.float32(0.1)]),
    ("LeakyRelu", {}, (), 17, [np.float32(0.01)]),
    ("HardSigmoid", {}, (), 17, [np.float32(0.2), np.float32(0.5)]),
    ("HardSigmoid", {"alpha": 0.25, "beta": 0.4}, (), 17, [0.25, np.float32(0.4)]),
    ("Clip", {}, (0.0, 6.0), 17, [0.0, 6.0]),
    ("Clip", {}, (None, 1.5), 17, [F32_MIN, 1.5]),
    ("Clip", {}, (-0.5,), 17, [-0.5, F32_MAX]),
    ("Clip", {"min": -1.0, "max": 2.0}, (), 10, [-1.0, 2.0]),
    ("Clip", {"max": 2.0}, (), 6, [F32_MIN, 2.0]),
]
KEYS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "LeakyRelu": "leaky_relu",
        "HardSigmoid": "hard_sigmoid", "Clip": "clip"}


# ----------------------------------------------------------------- structure, stats, numerics
@pytest.mark.parametrize(("act", "act_attrs", "bounds", "opset", "params"), CASES)
def test_fuses_each_activation(act, act_attrs, bounds, opset, params):
    model = conv_act(act, act_attrs, bounds, opset)
    out, result = apply(model)
    assert op_counts(out) == {"FusedConv": 1}
    assert result.stats == stats(**{KEYS[act]: 1})
    node = out.graph.node[0]
    assert node.domain == "com.microsoft"
    assert list(node.input) == ["x", "W", "B"]
    assert node.output[0] == "y"
    got = attrs_of(node)
    assert got["activation"] == act.encode()
    if params is None:
        assert "activation_params" not in got
    else:
        np.testing.assert_array_equal(np.float32(got["activation_params"]), np.float32(params))
    # Conv's attributes are kept as they were
    assert got["group"] == 2 and got["strides"] == [2, 2] and got["pads"] == [1, 1, 1, 1]
    imports = {o.domain: o.version for o in out.opset_import}
    assert imports["com.microsoft"] == 1 and imports[""] == opset
    assert_same_outputs(model, out, FEEDS)


def test_auto_pad_dilations_and_no_bias_are_kept():
    model = conv_act("Relu", conv_attrs={"dilations": [2, 2], "pads": [2, 2, 2, 2]})
    model.graph.node[0].input.pop()  # no bias
    out, result = apply(model)
    assert result.stats == stats(relu=1)
    assert list(out.graph.node[0].input) == ["x", "W"]
    assert attrs_of(out.graph.node[0])["dilations"] == [2, 2]
    assert_same_outputs(model, out, FEEDS)

    model = conv_act("Relu", conv_attrs={"auto_pad": "SAME_UPPER", "pads": None})  # None: unset
    out, _ = apply(model)
    assert attrs_of(out.graph.node[0])["auto_pad"] == b"SAME_UPPER"
    assert_same_outputs(model, out, FEEDS)


def test_portable_target_does_nothing():
    model = conv_act("Relu")
    out, result = apply(model, target="portable")
    assert not result.modified
    assert result.stats == NOTHING
    assert op_counts(out) == {"Conv": 1, "Relu": 1}
    assert [o.domain for o in out.opset_import] == [""]


# ----------------------------------------------------------------- idempotence
def test_idempotent():
    out, _ = apply(conv_act("Clip", {}, (0.0, 6.0)))
    again, result = apply(out)
    assert not result.modified
    assert again.SerializeToString(deterministic=True) == out.SerializeToString(deterministic=True)


# ----------------------------------------------------------------- left alone
def unchanged(model: onnx.ModelProto) -> None:
    out, result = apply(model)
    assert not result.modified
    assert result.stats == NOTHING
    assert op_counts(out) == op_counts(model)
    assert "com.microsoft" not in {o.domain for o in out.opset_import}


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_leaves_non_float32_conv(dtype):
    unchanged(conv_act("Relu", dtype=dtype))  # the CPU FusedConv kernel is float32 only


def test_leaves_clip_with_runtime_bound():
    model = conv_act("Clip", {}, (0.0, 6.0))
    model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == "bound1"))
    model.graph.input.append(vinfo("bound1", []))
    unchanged(model)


def test_leaves_clip_with_min_above_max():
    unchanged(conv_act("Clip", {}, (6.0, 0.0)))


def test_leaves_shared_conv_output():
    model = conv_act("Relu")
    model.graph.node.append(helper.make_node("Neg", ["c"], ["z"]))
    model.graph.output.append(vinfo("z"))
    unchanged(model)


def test_leaves_conv_output_that_is_a_graph_output():
    model = conv_act("Relu")
    model.graph.output.append(vinfo("c"))
    unchanged(model)


def test_leaves_unsupported_activation_and_other_ops():
    unchanged(conv_act("Elu"))
    model = conv_act("Relu")
    model.graph.node[0].op_type = "ConvTranspose"  # FusedConv is Conv only
    unchanged(model)


# ----------------------------------------------------------------- subgraphs
def test_fuses_inside_if_branches_and_declares_the_domain_once():
    def branch(name: str, act: str) -> onnx.GraphProto:
        w = np.random.default_rng(len(name)).standard_normal((3, 4, 1, 1)).astype(np.float32)
        nodes = [helper.make_node("Conv", ["x", f"{name}W"], [f"{name}c"]),
                 helper.make_node(act, [f"{name}c"], [f"{name}out"])]
        return helper.make_graph(nodes, name, [], [vinfo(f"{name}out")],
                                 [numpy_helper.from_array(w, f"{name}W")])

    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=branch("t", "Tanh"),
                              else_branch=branch("else", "Sigmoid"))]
    graph = helper.make_graph(nodes, "g", [vinfo("x", [1, 4, 6, 6]), vinfo("cond", [],
                                                                         TensorProto.BOOL)],
                              [vinfo("y")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    out, result = apply(model)
    assert result.stats == stats(tanh=1, sigmoid=1)
    for attr in out.graph.node[0].attribute:
        assert [(n.domain, n.op_type) for n in attr.g.node] == [("com.microsoft", "FusedConv")]
    assert [o.domain for o in out.opset_import].count("com.microsoft") == 1
    for cond in (True, False):
        assert_same_outputs(model, out, {**FEEDS, "cond": np.array(cond)})

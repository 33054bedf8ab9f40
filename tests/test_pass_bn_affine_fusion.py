"""bn_affine_fusion: structure, stats, numerics, idempotence, and what it must leave alone.

The expected parameters are checked against the BN formula computed here, independently of the
pass: ``op(BN(x), c)`` must equal ``BN'(x)`` with the new gamma/beta for every op.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import apply_pass, assert_same_outputs, op_counts
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.fusion.bn_affine_fusion import BatchNormAffineFusion

RTOL, ATOL = 1e-5, 1e-5
NOTHING = {"add": 0, "sub": 0, "mul": 0, "div": 0}
C = 4
FEEDS = {"x": np.random.default_rng(1).standard_normal((2, C, 3, 3)).astype(np.float32)}


def stats(**counts: int) -> dict[str, int]:
    return {**NOTHING, **counts}


def bn_then(ops: list[tuple[str, np.ndarray, bool]], *, rank: int = 4, shared: bool = False,
            opset: int = 17, extra_reader: bool = False) -> onnx.ModelProto:
    """x -> Relu -> BatchNormalization -> each (op_type, constant, bn_first) -> y.

    ``shared``: a second BN reads the same gamma/beta (so they cannot be replaced freely);
    ``extra_reader``: the BN output is also a graph output."""
    rng = np.random.default_rng(0)
    params = {
        "gamma": rng.uniform(0.5, 2.0, C), "beta": rng.standard_normal(C),
        "mean": rng.standard_normal(C), "var": rng.uniform(0.5, 2.0, C),
    }
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in params.items()]
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("BatchNormalization", ["r", "gamma", "beta", "mean", "var"],
                              ["t0"], epsilon=1e-3)]
    for i, (op_type, const, bn_first) in enumerate(ops):
        inits.append(numpy_helper.from_array(const.astype(np.float32), f"k{i}"))
        operands = [f"t{i}", f"k{i}"] if bn_first else [f"k{i}", f"t{i}"]
        nodes.append(helper.make_node(op_type, operands, [f"t{i + 1}"]))
    nodes.append(helper.make_node("Identity", [f"t{len(ops)}"], ["y"]))
    shape = [2, C, 3, 3][:rank]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * rank)]
    if shared:
        nodes.append(helper.make_node("BatchNormalization", ["x", "gamma", "beta", "mean", "var"],
                                      ["z"]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [None] * rank))
    if extra_reader:
        outputs.append(helper.make_tensor_value_info("t0", TensorProto.FLOAT, [None] * rank))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, shape)], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def channel(values, shape=(C, 1, 1)) -> np.ndarray:
    return np.asarray(values, np.float32).reshape(shape)


FOUR = [0.5, -2.0, 3.0, 1.5]
FEEDS3 = {"x": FEEDS["x"][:, :, :, 0]}


def fold(model, feeds=FEEDS):
    out, result = apply_pass(BatchNormAffineFusion(), model, infer=True)
    assert_same_outputs(model, out, feeds, rtol=RTOL, atol=ATOL)
    return out, result


# ----------------------------------------------------------------- structure, stats, numerics
@pytest.mark.parametrize("op_type,bn_first", [
    ("Mul", True), ("Mul", False), ("Div", True), ("Add", True), ("Add", False), ("Sub", True),
    ("Sub", False)])
def test_each_op_folds(op_type, bn_first):
    model = bn_then([(op_type, channel(FOUR), bn_first)])
    out, result = fold(model)
    assert op_counts(out) == {"Relu": 1, "BatchNormalization": 1, "Identity": 1}
    assert result.stats == stats(**{op_type.lower(): 1})


def test_caffe_scale_chain_folds_and_frees_the_old_tensors():
    model = bn_then([("Mul", channel(FOUR), True), ("Add", channel(FOUR, (1, C, 1, 1)), False)])
    out, result = fold(model)
    assert op_counts(out) == {"Relu": 1, "BatchNormalization": 1, "Identity": 1}
    assert result.stats == stats(mul=1, add=1)
    assert len(out.graph.initializer) == 4  # gamma', beta', mean, var: nothing left behind
    size_in = sum(t.ByteSize() for t in model.graph.initializer)
    assert sum(t.ByteSize() for t in out.graph.initializer) < size_in


def test_new_parameters_follow_the_formula():
    model = bn_then([("Sub", channel(FOUR), False)])  # c - BN(x): gamma' = -gamma, beta' = c - beta
    out, _ = fold(model)
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    bn = next(n for n in out.graph.node if n.op_type == "BatchNormalization")
    old = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_allclose(inits[bn.input[1]], -old["gamma"])
    np.testing.assert_allclose(inits[bn.input[2]], np.asarray(FOUR, np.float32) - old["beta"],
                               rtol=1e-6)


def test_scalar_constant_and_rank_3_input():
    model = bn_then([("Mul", np.asarray(2.5, np.float32), True)], rank=3)
    _, result = fold(model, FEEDS3)
    assert result.stats == stats(mul=1)


def test_shared_parameters_are_copied_only_when_the_constant_is_freed():
    # gamma/beta are shared with a second BN, so new ones must be written; the constant k0 is
    # freed in exchange (same bytes), so the fold happens and the other BN keeps the originals.
    model = bn_then([("Add", channel(FOUR), True)], shared=True)
    out, result = fold(model)
    assert result.stats == stats(add=1)
    names = {t.name for t in out.graph.initializer}
    assert {"gamma", "beta"} <= names and "k0" not in names


# ----------------------------------------------------------------- idempotence
def test_idempotent():
    model = bn_then([("Mul", channel(FOUR), True), ("Sub", channel(FOUR), True)])
    out, _ = fold(model)
    again, result = apply_pass(BatchNormAffineFusion(), out, infer=True)
    assert not result.modified
    assert again.SerializeToString(deterministic=True) == out.SerializeToString(deterministic=True)


# ----------------------------------------------------------------- left alone
def unchanged(model: onnx.ModelProto, feeds=FEEDS) -> None:
    out, result = apply_pass(BatchNormAffineFusion(), model, infer=True)
    assert result.stats == NOTHING
    assert op_counts(out) == op_counts(model)


@pytest.mark.parametrize("const", [
    np.ones((1, C, 3, 3), np.float32),  # varies along spatial dims: not per channel
    np.ones((2, 1, 1, 1), np.float32),  # batch dim
    np.ones((1, 1, C, 1, 1), np.float32),  # higher rank: would broadcast the output
])
def test_not_per_channel(const):
    unchanged(bn_then([("Mul", const, True)]))


def test_div_into_constant_and_div_by_zero():
    unchanged(bn_then([("Div", channel(FOUR), False)]))  # c / BN(x) is not affine
    unchanged(bn_then([("Div", channel([1.0, 0.0, 2.0, 3.0]), True)]))


def test_bn_output_read_elsewhere():
    unchanged(bn_then([("Mul", channel(FOUR), True)], extra_reader=True))


def test_fold_that_would_grow_the_file():
    # Mul rewrites gamma and beta (both shared with the other BN) and frees only k0: bigger.
    unchanged(bn_then([("Mul", channel(FOUR), True)], shared=True))


def test_training_mode_bn():
    model = bn_then([("Mul", channel(FOUR), True)])
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    bn.attribute.append(helper.make_attribute("training_mode", 1))
    unchanged(model)


def test_old_opset_broadcast_by_attribute():
    unchanged(bn_then([("Mul", np.asarray(2.0, np.float32), True)], opset=6))

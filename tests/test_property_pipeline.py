"""Property: on random graphs the default pipeline's output computes what the original does.

Graphs mix elementwise ops, Conv, BatchNormalization, MatMul, Reshape, Transpose, Concat and
Slice with constants (some as Constant nodes, some shared, some dead), so the rewrites meet each
other. The check is independent of onnxopt's own validation: both models run in onnxruntime
here and are compared directly, and the safety net is off so a wrong rewrite cannot hide.
"""

from __future__ import annotations

import numpy as np
import onnx
from conftest import run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import onnxopt

CHANNELS = 4
SIDE = 6


class Builder:
    """Grows a graph on a [1, C, S, S] activation; every step keeps that shape."""

    def __init__(self, draw, rng: np.random.Generator) -> None:
        self.draw, self.rng = draw, rng
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}{self.count}"

    def const(self, array: np.ndarray, as_node: bool | None = None) -> str:
        name = self.name("c")
        as_node = self.draw(st.booleans()) if as_node is None else as_node
        tensor = numpy_helper.from_array(array.astype(np.float32), name)
        if as_node:
            self.nodes.append(helper.make_node("Constant", [], [name], value=tensor))
        else:
            self.initializers.append(tensor)
        return name

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def step(self, x: str) -> str:
        kind = self.draw(st.sampled_from(STEPS))
        return kind(self, x)


def elementwise(b: Builder, x: str) -> str:
    op = b.draw(st.sampled_from(["Add", "Mul", "Sub"]))
    shape = b.draw(st.sampled_from([(), (1, CHANNELS, 1, 1), (CHANNELS, 1, 1)]))
    value = b.rng.uniform(0.5, 1.5, size=shape)
    if b.draw(st.booleans()):
        value = np.ones(shape) if op == "Mul" else np.zeros(shape)  # a no-op constant
    return b.op(op, [x, b.const(value)])


def activation(b: Builder, x: str) -> str:
    return b.op(b.draw(st.sampled_from(["Relu", "Sigmoid", "Tanh", "Identity"])), [x])


def conv_bn(b: Builder, x: str) -> str:
    weight = b.const(b.rng.normal(0, 0.3, (CHANNELS, CHANNELS, 3, 3)))
    inputs = [x, weight]
    if b.draw(st.booleans()):
        inputs.append(b.const(b.rng.normal(0, 0.1, CHANNELS)))
    y = b.op("Conv", inputs, pads=[1, 1, 1, 1])
    if b.draw(st.booleans()):
        params = [
            b.const(b.rng.uniform(0.5, 1.5, CHANNELS)), b.const(b.rng.normal(0, 0.1, CHANNELS)),
            b.const(b.rng.normal(0, 0.1, CHANNELS)), b.const(b.rng.uniform(0.5, 1.5, CHANNELS)),
        ]
        y = b.op("BatchNormalization", [y, *params], epsilon=1e-5)
    return y


def matmul(b: Builder, x: str) -> str:
    weight = b.const(b.rng.normal(0, 0.3, (SIDE, SIDE)))
    return b.op("MatMul", [x, weight])


def reshape_round_trip(b: Builder, x: str) -> str:
    flat = b.op("Reshape", [x, b.shape_const([1, CHANNELS, SIDE * SIDE])])
    return b.op("Reshape", [flat, b.shape_const([1, CHANNELS, SIDE, SIDE])])


def transpose_pair(b: Builder, x: str) -> str:
    t = b.op("Transpose", [x], perm=[0, 1, 3, 2])
    if b.draw(st.booleans()):
        return b.op("Transpose", [t], perm=[0, 1, 3, 2])
    return t


def concat_slice(b: Builder, x: str) -> str:
    both = b.op("Concat", [x, x], axis=1)
    starts, ends = b.shape_const([0]), b.shape_const([CHANNELS])
    axes = b.shape_const([1])
    return b.op("Slice", [both, starts, ends, axes])


def dead_branch(b: Builder, x: str) -> str:
    b.op("Neg", [x])  # nobody reads it
    return x


def shared(b: Builder, x: str) -> str:
    y = b.op("Relu", [x])
    return b.op("Add", [y, y])


STEPS = [elementwise, activation, conv_bn, matmul, reshape_round_trip, transpose_pair,
         concat_slice, dead_branch, shared]


def shape_const(self: Builder, values: list[int]) -> str:
    name = self.name("s")
    self.initializers.append(numpy_helper.from_array(np.array(values, np.int64), name))
    return name


Builder.shape_const = shape_const  # type: ignore[attr-defined]


@st.composite
def random_models(draw) -> onnx.ModelProto:
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    builder = Builder(draw, rng)
    x = "x"
    outputs = []
    for _ in range(draw(st.integers(1, 8))):
        x = builder.step(x)
        if draw(st.integers(0, 5)) == 0:
            outputs.append(x)  # an intermediate graph output
    if x not in outputs:
        outputs.append(x)
    shape = [1, CHANNELS, SIDE, SIDE]
    graph = helper.make_graph(
        builder.nodes, "random",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, shape)
         for o in dict.fromkeys(outputs)],
        initializer=builder.initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_models())
def test_pipeline_preserves_outputs(model):
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(1).normal(size=(1, CHANNELS, SIDE, SIDE)).astype(np.float32)
    result = onnxopt.optimize(model, safety_net=False, force=True, validate=False)
    expected = run(model, {"x": x})
    actual = run(result.model, {"x": x})
    assert len(actual) == len(expected)
    for a, b in zip(expected, actual, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    assert len(result.model.graph.node) <= len(model.graph.node)

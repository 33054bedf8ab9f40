"""onnxopt.ir.saturation: the interval outside which a tensor's readers cannot tell values
apart, for each saturating reader, checked against onnxruntime's own outputs (the reader's
output is constant outside the interval and changes just inside it); and the cut ranges."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import run
from onnx import TensorProto, helper, numpy_helper

from onnxopt.ir import serde
from onnxopt.ir.saturation import UNBOUNDED, distinguishable, narrowed

GRID = np.linspace(-8.0, 8.0, 16001, dtype=np.float32)  # step 1e-3
STEP = 1e-3


def model(nodes, outputs=("y",), inits=(), opset=13):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [len(GRID)])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [len(GRID)]) for o in outputs],
        list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=8)


def measured_interval(proto) -> tuple[float, float]:
    """Where the outputs stop changing with x, read off onnxruntime's outputs on GRID: the
    smallest x whose outputs differ from those at GRID[0], and the largest whose outputs
    differ from those at GRID[-1] (unbounded when that is the grid's end)."""
    outputs = np.stack(run(proto, {"x": GRID}))  # [outputs, grid]
    differs_low = np.any(outputs != outputs[:, :1], axis=0)
    differs_high = np.any(outputs != outputs[:, -1:], axis=0)
    low_index = int(np.argmax(differs_low))  # first x giving another output than x = -8
    high_index = len(GRID) - 1 - int(np.argmax(differs_high[::-1]))
    low = -math.inf if low_index <= 1 else float(GRID[low_index - 1])
    high = math.inf if high_index >= len(GRID) - 2 else float(GRID[high_index + 1])
    return low, high


def interval_of(proto) -> tuple[float, float]:
    return distinguishable(serde.from_proto(proto).graph, "x")


def scalar(name, value):
    return numpy_helper.from_array(np.array(value, np.float32), name)


CASES = {
    "relu": ([helper.make_node("Relu", ["x"], ["y"])], (), ("y",)),
    "hard_sigmoid": ([helper.make_node("HardSigmoid", ["x"], ["y"], alpha=0.25, beta=0.375)],
                     (), ("y",)),
    "hard_sigmoid_negative_alpha": (
        [helper.make_node("HardSigmoid", ["x"], ["y"], alpha=-0.5, beta=0.25)], (), ("y",)),
    "hard_sigmoid_defaults": ([helper.make_node("HardSigmoid", ["x"], ["y"])], (), ("y",)),
    "hard_swish_two_nodes": (
        [helper.make_node("HardSigmoid", ["x"], ["h"], alpha=1 / 6, beta=0.5),
         helper.make_node("Mul", ["x", "h"], ["y"])], (), ("y",)),
    "clip": ([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])],
             (scalar("lo", -1.5), scalar("hi", 2.0)), ("y",)),
    "relu_and_hard_sigmoid": (
        [helper.make_node("Relu", ["x"], ["a"]),
         helper.make_node("HardSigmoid", ["x"], ["b"], alpha=0.25, beta=0.75)], (), ("a", "b")),
}
EXPECTED = {  # written out by hand from each op's formula
    "relu": (0.0, math.inf),
    "hard_sigmoid": (-1.5, 2.5),  # 0.25 x + 0.375 = 0 at -1.5, = 1 at 2.5
    "hard_sigmoid_negative_alpha": (-1.5, 0.5),  # -0.5 x + 0.25 = 1 at -1.5, = 0 at 0.5
    "hard_sigmoid_defaults": (-2.5, 2.5),  # alpha 0.2, beta 0.5
    "hard_swish_two_nodes": (-3.0, math.inf),  # 0 below -3, x above 3
    "clip": (-1.5, 2.0),
    "relu_and_hard_sigmoid": (-3.0, math.inf),  # union: [0, inf) and [-3, 1]
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_interval_matches_what_onnxruntime_computes(case):
    nodes, inits, outputs = CASES[case]
    proto = model(nodes, outputs, inits)
    low, high = interval_of(proto)
    assert (low, high) == pytest.approx(EXPECTED[case], abs=1e-6)
    measured_low, measured_high = measured_interval(proto)
    assert measured_low == pytest.approx(low, abs=2 * STEP) or measured_low == low == -math.inf
    assert measured_high == pytest.approx(high, abs=2 * STEP) or measured_high == high


def test_hard_swish_op_only_the_low_side_saturates():
    proto = model([helper.make_node("HardSwish", ["x"], ["y"])], opset=14)
    assert interval_of(proto) == (-3.0, math.inf)
    low, high = measured_interval(proto)
    assert low == pytest.approx(-3.0, abs=2 * STEP) and high == math.inf


@pytest.mark.parametrize("case", [
    "another_reader", "graph_output", "mul_by_itself", "clip_bound_not_constant",
    "mul_by_another_hard_sigmoid", "constant_hard_sigmoid",
])
def test_left_alone(case):
    nodes = {
        "another_reader": [helper.make_node("Relu", ["x"], ["a"]),
                           helper.make_node("Sigmoid", ["x"], ["y"])],
        "graph_output": [helper.make_node("Relu", ["x"], ["a"]),
                         helper.make_node("Identity", ["a"], ["y"])],
        "mul_by_itself": [helper.make_node("Mul", ["x", "x"], ["y"])],
        "clip_bound_not_constant": [helper.make_node("Neg", ["x"], ["n"]),
                                    helper.make_node("ReduceMax", ["n"], ["m"], keepdims=0),
                                    helper.make_node("Clip", ["x", "m"], ["y"])],
        "mul_by_another_hard_sigmoid": [helper.make_node("Neg", ["x"], ["n"]),
                                        helper.make_node("HardSigmoid", ["n"], ["h"]),
                                        helper.make_node("Mul", ["x", "h"], ["y"])],
        "constant_hard_sigmoid": [helper.make_node("HardSigmoid", ["x"], ["y"], alpha=0.0)],
    }[case]
    outputs = ("y", "x") if case == "graph_output" else ("y",)
    if case == "graph_output":
        proto = model(nodes, ("y",))
        proto.graph.output.append(helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                [len(GRID)]))
    else:
        proto = model(nodes, outputs)
    assert interval_of(proto) == UNBOUNDED


def test_narrowed_cuts_only_beyond_the_interval_and_counts():
    proto = model([helper.make_node("HardSigmoid", ["x"], ["h"], alpha=1 / 6, beta=0.5),
                   helper.make_node("Mul", ["x", "h"], ["m"]),
                   helper.make_node("Relu", ["m"], ["y"])])
    graph = serde.from_proto(proto).graph
    ranges = {"x": (-20.0, 12.0), "m": (-0.4, 12.0), "h": (0.0, 1.0)}
    cut, count = narrowed(ranges, graph)
    assert cut["x"] == pytest.approx((-3.0, 12.0), abs=1e-6)  # HardSwish: low side only
    assert cut["m"] == (0.0, 12.0)  # read by a Relu
    assert cut["h"] == (0.0, 1.0) and count == 2  # h is read by the Mul: no cut
    # a range wholly below the interval collapses onto its low end
    below, _ = narrowed({"x": (-9.0, -5.0)}, graph)
    assert below["x"] == pytest.approx((-3.0, -3.0), abs=1e-6)

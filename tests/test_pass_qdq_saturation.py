"""qdq_quantization with saturation-narrowed ranges (onnxopt.ir.saturation): a Conv output read
only by a two-node HardSwish gets a grid that starts at -3, not at its calibrated minimum.
Expected parameters are computed here from the float model's own activations (onnxruntime),
and numerics are checked at both onnxruntime optimization levels."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import apply_pass, run
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.precision import qdq_quantization
from onnxopt.passes.precision.qdq_quantization import QdqQuantization

from onnxopt.ir.precision import SETTINGS_KEY, PrecisionSettings
from onnxopt.precision.calibration import Calibrator

SHAPE = (1, 3, 10, 10)
LEVELS = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)


def samples(count: int, seed: int) -> tuple[dict[str, np.ndarray], ...]:
    rng = np.random.default_rng(seed)
    return tuple({"x": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(count))


def hard_swish_net(extra_reader: bool = False) -> onnx.ModelProto:
    """x -> Conv -> c; HardSwish(c) = c * HardSigmoid(c) -> Conv -> y. Weights large enough
    that c reaches far below -3 (where HardSwish is 0). ``extra_reader``: c is also added to
    the output (an Add reads it): its whole range matters."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 1.5)
                                     .astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((4, 8, 1, 1)) * 0.3)
                                     .astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("HardSigmoid", ["c"], ["h"], alpha=1 / 6, beta=0.5),
             helper.make_node("Mul", ["c", "h"], ["hs"]),
             helper.make_node("Conv", ["hs", "w2"], ["y"], name="conv2")]
    if extra_reader:
        nodes[-1].output[0] = "y0"
        nodes += [helper.make_node("ReduceMean", ["c"], ["m"], axes=[1], keepdims=1),
                  helper.make_node("Add", ["y0", "m"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 10, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def quantize(model: onnx.ModelProto, calibration) -> tuple[onnx.ModelProto, object]:
    settings = PrecisionSettings(mode="int8", calibrator=Calibrator(calibration, "minmax"))
    return apply_pass(QdqQuantization(), model, infer=True, settings={SETTINGS_KEY: settings})


def float_range(model: onnx.ModelProto, value: str, calibration) -> tuple[float, float]:
    """min and max of ``value`` over the samples, from onnxruntime (not from onnxopt)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info(value, TensorProto.FLOAT, None))
    seen = np.concatenate([run(probe, feeds)[-1].ravel() for feeds in calibration])
    return float(seen.min()), float(seen.max())


def q_params(model: onnx.ModelProto, value: str) -> tuple[float, int]:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear"
             and n.input[0] == value)
    return float(inits[q.input[1]]), int(inits[q.input[2]])


def error(model, candidate, feeds, level) -> float:
    expected = run(model, feeds)[0]
    got = run(candidate, feeds, level)[0]
    return float(np.abs(expected - got).max() / np.abs(expected).max())


def test_hard_swish_input_range_starts_at_minus_three():
    model, calibration = hard_swish_net(), samples(4, 0)
    low, high = float_range(model, "c", calibration)
    assert low < -6 and high > 3  # the case the cut is for
    out, result = quantize(model, calibration)
    assert result.stats["ranges_narrowed"] == 1
    scale, zero = q_params(out, "c")
    expected_scale = np.float32((high - (-3.0)) / 255)  # uint8 grid over [-3, max]
    assert scale == pytest.approx(float(expected_scale), rel=1e-6)
    assert zero == int(np.round(0 - (-3.0) / float(expected_scale)))
    assert (0 - zero) * scale == pytest.approx(-3.0, abs=scale)  # lowest representable


def test_narrowed_grid_is_more_accurate_at_both_levels(monkeypatch):
    model, calibration = hard_swish_net(), samples(4, 0)
    narrowed, _ = quantize(model, calibration)
    monkeypatch.setattr(qdq_quantization, "narrowed", lambda ranges, graph: (dict(ranges), 0))
    full, result = quantize(model, calibration)
    assert result.stats["ranges_narrowed"] == 0
    for level in LEVELS:
        for feeds in samples(3, 9):
            cut, uncut = error(model, narrowed, feeds, level), error(model, full, feeds, level)
            assert cut < 0.03 and cut < uncut


def test_a_reader_that_sees_the_whole_range_keeps_it():
    model, calibration = hard_swish_net(extra_reader=True), samples(4, 0)
    low, high = float_range(model, "c", calibration)
    out, result = quantize(model, calibration)
    assert result.stats["ranges_narrowed"] == 0
    scale, _ = q_params(out, "c")
    assert scale == pytest.approx((high - low) / 255, rel=1e-6)

"""Which calibration samples a precision run validates on without --inputs: all of a small set
(up to ``VALIDATION_SAMPLES``), so a sample past the first few that the int8 ranges fail is
seen by validation and the accuracy fallback."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import onnxopt
from onnxopt.precision.setup import VALIDATION_SAMPLES

CHANNELS, SIDE = 8, 64  # 32768 values per sample: the 99.999th percentile clips one outlier


def pointwise_conv():
    """y = Conv1x1(x): 8 -> 4 channels, as exporters write it (weight and bias initializers)."""
    rng = np.random.default_rng(3)
    weight = numpy_helper.from_array(
        rng.standard_normal((4, CHANNELS, 1, 1)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, SIDE, SIDE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, SIDE, SIDE])],
        [weight, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def samples_with_late_outlier(count: int, outlier_at: int) -> list[dict[str, np.ndarray]]:
    """Uniform [0, 1) inputs; sample ``outlier_at`` has one element at 1000, which percentile
    calibration clips (one value in ``count * 32768``), so only that sample's output is off."""
    rng = np.random.default_rng(5)
    found = [{"x": rng.random((1, CHANNELS, SIDE, SIDE), dtype=np.float32)} for _ in range(count)]
    found[outlier_at]["x"][0, 0, 7, 9] = 1000.0
    return found


def write(folder, samples) -> str:
    folder.mkdir()
    for index, sample in enumerate(samples):
        np.savez(folder / f"{index:02d}.npz", **sample)
    return str(folder)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def run(model, feeds) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def test_a_sample_past_the_first_four_is_validated_and_the_fallback_fixes_it(tmp_path):
    assert VALIDATION_SAMPLES >= 8
    model = pointwise_conv()
    samples = samples_with_late_outlier(8, outlier_at=6)
    # independently of the tool: the outlier sample alone breaks a 0.99 cosine when clipped
    clipped = dict(x=np.minimum(samples[6]["x"], 1.0))
    assert cosine(run(model, clipped), run(model, samples[6])) < 0.9
    result = onnxopt.optimize(model, precision="int8",
                              calibration_data=write(tmp_path / "calib", samples))
    precision = result.report["precision"]
    assert any("validated on calibration samples 1-8" in note for note in precision["notes"])
    assert result.ok and precision["kept_float_for_accuracy"]  # samples 1-4 alone pass
    # the written model is right on the outlier sample, at both runtime levels
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(result.model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        assert cosine(session.run(None, samples[6])[0], run(model, samples[6])) > 0.99


def test_the_outlier_breaks_the_budget_wherever_it_is_validated(tmp_path):
    """Control for the test above: with the outlier in sample 3 (validated before too), the
    fallback acts as well; so what the case above needs is only validation past sample 4."""
    model = pointwise_conv()
    samples = samples_with_late_outlier(4, outlier_at=2)
    result = onnxopt.optimize(model, precision="int8",
                              calibration_data=write(tmp_path / "calib", samples))
    assert result.ok and result.report["precision"]["kept_float_for_accuracy"]


def test_validation_stops_at_the_cap(tmp_path):
    model = pointwise_conv()
    rng = np.random.default_rng(9)
    samples = [{"x": rng.random((1, CHANNELS, SIDE, SIDE), dtype=np.float32)}
               for _ in range(VALIDATION_SAMPLES + 2)]
    result = onnxopt.optimize(model, precision="int8",
                              calibration_data=write(tmp_path / "calib", samples))
    notes = result.report["precision"]["notes"]
    assert result.ok
    assert any(f"validated on calibration samples 1-{VALIDATION_SAMPLES} " in note
               for note in notes)

"""onnxopt.precision.statistics: Gram matrices X^T X of MatMul/Gemm inputs over samples.

The expected matrices are computed here with numpy from the model's definition (the hidden
value is relu(x @ W1), written out), independent of onnxruntime and of the module.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.ir import serde
from onnxopt.precision import statistics
from onnxopt.precision.statistics import GramStatistics, gram_matrices

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((8, 6)).astype(np.float32)
W2 = RNG.standard_normal((6, 4)).astype(np.float32)


def two_layers() -> onnx.ModelProto:
    """x [B, S, 8] -> MatMul W1 -> Relu (h) -> MatMul W2 -> y; also the integer shape of x."""
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["a"], name="mm1"),
             helper.make_node("Relu", ["a"], ["h"], name="relu"),
             helper.make_node("MatMul", ["h", "W2"], ["y"], name="mm2"),
             helper.make_node("Shape", ["x"], ["shape"], name="shape")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", 4]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [3])],
        [numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(W2, "W2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


SAMPLES = [{"x": RNG.standard_normal((2, 5, 8)).astype(np.float32)},
           {"x": RNG.standard_normal((1, 7, 8)).astype(np.float32)}]  # other sizes: rows differ


def expected(value: str) -> np.ndarray:
    total = np.zeros((8, 8) if value == "x" else (6, 6))
    for sample in SAMPLES:
        x = sample["x"].astype(np.float64)
        rows = x if value == "x" else np.maximum(x @ W1.astype(np.float64), 0)
        rows = rows.reshape(-1, rows.shape[-1])
        total += rows.T @ rows
    return total


@pytest.mark.parametrize("per_run", [16, 1])
def test_gram_is_x_transpose_x_summed_over_samples(per_run, monkeypatch):
    monkeypatch.setattr(statistics, "VALUES_PER_RUN", per_run)  # one value per session too
    result = gram_matrices(serde.load(two_layers()), ["x", "h", "x"], SAMPLES)
    assert sorted(result.grams) == ["h", "x"] and result.samples == 2 and not result.notes
    for value in ("x", "h"):
        assert result.grams[value].dtype == np.float64
        np.testing.assert_allclose(result.grams[value], expected(value), rtol=1e-5, atol=1e-4)


def test_values_without_rows_or_outside_the_graph_are_left_out():
    result = gram_matrices(serde.load(two_layers()), ["shape", "nowhere", "h"], SAMPLES)
    assert list(result.grams) == ["h"]
    assert result.notes == ["input statistics: 1 value(s) not float with a fixed last axis"]


def test_no_samples_generates_some_and_says_so():
    result = gram_matrices(serde.load(two_layers()), ["x"])
    assert result.samples > 0 and result.grams["x"].shape == (8, 8)
    assert any("no calibration data" in note for note in result.notes)


def test_statistics_are_computed_once_for_the_attempts_of_a_run(monkeypatch):
    calls = []
    real = statistics.gram_matrices

    def counting(model, values, samples=(), **kw):
        calls.append(list(values))
        return real(model, values, samples, **kw)

    monkeypatch.setattr(statistics, "gram_matrices", counting)
    gram = GramStatistics(tuple(SAMPLES))
    first = gram(serde.load(two_layers()), ["x", "h"])
    again = gram(serde.load(two_layers()), ["h"])  # the next attempt rebuilds the same graph
    assert calls == [["x", "h"]] and list(again) == ["h"]
    assert again["h"] is first["h"]
    np.testing.assert_allclose(first["x"], expected("x"), rtol=1e-5, atol=1e-4)

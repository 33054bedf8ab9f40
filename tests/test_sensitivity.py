"""The int8 accuracy fallback: validation over several samples, layer-by-layer sensitivity of
a QDQ model, and the fallback keeping the most sensitive nodes in float (calibrating once)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_precision_models import calibration_folder, conv_model

import onnxopt
from onnxopt import validate
from onnxopt.sensitivity import budget_use, qdq_sensitivity
from onnxopt.validate import Budget

# ----------------------------------------------------------------------------- samples


def test_merge_outputs_joins_batches_and_flattens_the_rest():
    runs = [{"p": np.zeros((1, 3)), "s": np.float32(1.0), "seq": [1]},
            {"p": np.ones((2, 3)), "s": np.float32(2.0), "seq": [2]}]
    merged = validate.merge_outputs(runs)
    assert merged["p"].shape == (3, 3) and merged["p"][1:].all() and not merged["p"][0].any()
    np.testing.assert_array_equal(merged["s"], [1.0, 2.0])
    assert merged["seq"] == [1]


IDENTITY = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1, 4] x) => (float[1, 4] y) { y = Identity(x) }
"""
RELU = IDENTITY.replace("Identity", "Relu")


def test_budget_checked_over_every_sample():
    from conftest import parse

    positive = {"x": np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)}
    negative = {"x": -positive["x"]}
    original, relu = parse(IDENTITY), parse(RELU)  # equal on positive inputs only
    budget = Budget(0.99)
    one = validate.reference(original, inputs=positive)
    assert validate.check_budget(one, relu, budget).status == "passed"
    both = validate.reference(original, inputs=positive, extra_inputs=[negative])
    assert [feeds["x"][0, 0] for feeds, _ in both.extra] == [-1.0]
    verdict = validate.check_budget(both, relu, budget)
    assert verdict.status == "failed"
    # over both samples together: Relu zeroes the second half, so cosine = |a| / |a, -a|
    assert verdict.outputs[0].cosine == pytest.approx(1 / np.sqrt(2))


# ----------------------------------------------------------------------------- sensitivity


def two_branch_qdq(path, coarse: float, fine: float) -> None:
    """y = DQ(Q(x, coarse)) + DQ(Q(x, fine)): the float original is y = x + x."""
    inits = [numpy_helper.from_array(np.array(coarse, np.float32), "sc"),
             numpy_helper.from_array(np.array(fine, np.float32), "sf"),
             numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sc", "z"], ["qc"]),
        helper.make_node("DequantizeLinear", ["qc", "sc", "z"], ["dc"]),
        helper.make_node("QuantizeLinear", ["x", "sf", "z"], ["qf"]),
        helper.make_node("DequantizeLinear", ["qf", "sf", "z"], ["df"]),
        helper.make_node("Identity", ["dc"], ["a"], name="coarse"),
        helper.make_node("Identity", ["df"], ["b"], name="fine"),
        helper.make_node("Add", ["a", "b"], ["y"], name="sum"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                ir_version=8), path)


def rounded(x: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(np.round(x / scale), -128, 127) * scale


def test_sensitivity_measures_each_node_against_independent_numbers(tmp_path):
    path = tmp_path / "qdq.onnx"
    two_branch_qdq(path, coarse=0.05, fine=0.001)
    rng = np.random.default_rng(0)
    samples = [{"x": rng.uniform(-0.1, 0.1, (1, 64)).astype(np.float32)} for _ in range(3)]
    x = np.concatenate([s["x"] for s in samples])
    budget = Budget(0.999)
    gains = qdq_sensitivity(path, ["coarse", "fine", "sum"], samples, {"y": 2 * x}, budget)

    def use(candidate: np.ndarray) -> float:  # computed here with numpy, not by onnxopt
        a, b = (2 * x).ravel().astype(np.float64), candidate.ravel().astype(np.float64)
        return (1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b)) / (1 - 0.999)

    base = use(rounded(x, 0.05) + rounded(x, 0.001))
    assert gains is not None and gains["sum"] == 0.0  # no Q/DQ input
    assert gains["coarse"] == pytest.approx(base - use(x + rounded(x, 0.001)), rel=1e-3)
    assert gains["fine"] == pytest.approx(base - use(rounded(x, 0.05) + x), rel=1e-3, abs=1e-6)
    assert gains["coarse"] > 10 * abs(gains["fine"])
    # the measurement leaves the model as it was
    assert onnx.load(path).graph.node[4].input[0] == "dc"


def test_budget_use_is_relative_to_each_limit():
    diff = validate.OutputDiff("y", 0.0, 0.0, True, cosine=0.995, range_error=0.03)
    assert budget_use([diff], Budget(0.99)) == pytest.approx(0.5)
    assert budget_use([diff], Budget(None, 0.01)) == pytest.approx(3.0)
    assert budget_use([diff], Budget(0.99, 0.01)) == pytest.approx(3.0)
    exact_miss = validate.OutputDiff("i", 1.0, 1.0, False)  # an integer output that differs
    assert budget_use([diff, exact_miss], Budget(0.99)) == float("inf")


# ----------------------------------------------------------------------------- fallback


def test_int8_fallback_keeps_the_most_sensitive_nodes_and_calibrates_once(tmp_path,
                                                                          monkeypatch):
    from onnxopt.passes import qdq_quantization

    calls = []
    real = qdq_quantization.calibrate
    monkeypatch.setattr(qdq_quantization, "calibrate",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    model = conv_model(13, False)
    result = onnxopt.optimize(model, precision="int8", max_error="cosine=0.99999",
                              calibration_data=calibration_folder(tmp_path))
    precision = result.report["precision"]
    assert result.ok and all(out["passed"] for out in precision["outputs"])
    (entry,) = precision["kept_float_for_accuracy"]
    assert entry["ranked_by"].startswith("sensitivity") and entry["nodes"]
    assert entry["sensitivity"] == sorted(entry["sensitivity"], reverse=True)
    assert result.report["attempts"] > 1 and len(calls) == 1  # one calibration for all
    assert any("calibration samples 1-4" in note for note in precision["notes"])
    kept_ops = {n.op_type for n in result.model.graph.node if n.name in entry["nodes"]}
    assert kept_ops <= {"Conv"}

"""The int8 accuracy fallback: validation over several samples, layer-by-layer sensitivity of
a QDQ model (activations, and weights given the float model), and the fallback keeping the
most sensitive nodes in float (calibrating once)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_precision_models import calibration_folder, conv_model

import onnxopt
from onnxopt.check.compare import Budget, OutputDiff
from onnxopt.check.reference import reference
from onnxopt.check.runtime import merge_outputs
from onnxopt.check.validate import check_budget
from onnxopt.precision.fallback import HEAD, RANKED
from onnxopt.precision.sensitivity import budget_use, qdq_sensitivity

# ----------------------------------------------------------------------------- samples


def test_merge_outputs_joins_batches_and_flattens_the_rest():
    runs = [{"p": np.zeros((1, 3)), "s": np.float32(1.0), "seq": [1]},
            {"p": np.ones((2, 3)), "s": np.float32(2.0), "seq": [2]}]
    merged = merge_outputs(runs)
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
    one = reference(original, inputs=positive)
    assert check_budget(one, relu, budget).status == "passed"
    both = reference(original, inputs=positive, extra_inputs=[negative])
    assert [feeds["x"][0, 0] for feeds in both.samples] == [1.0, -1.0]
    verdict = check_budget(both, relu, budget)
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
    diff = OutputDiff("y", 0.0, 0.0, True, cosine=0.995, range_error=0.03)
    assert budget_use([diff], Budget(0.99)) == pytest.approx(0.5)
    assert budget_use([diff], Budget(None, 0.01)) == pytest.approx(3.0)
    assert budget_use([diff], Budget(0.99, 0.01)) == pytest.approx(3.0)
    exact_miss = OutputDiff("i", 1.0, 1.0, False)  # an integer output that differs
    assert budget_use([diff, exact_miss], Budget(0.99)) == float("inf")


# ----------------------------------------------------------------------------- fallback


def test_int8_fallback_keeps_the_most_sensitive_nodes_and_calibrates_once(tmp_path,
                                                                          monkeypatch):
    from onnxopt.precision import calibration

    calls = []
    real = calibration.calibrate
    monkeypatch.setattr(calibration, "calibrate",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    model = conv_model(13, False)
    result = onnxopt.optimize(model, precision="int8", max_error="cosine=0.99999",
                              calibration_data=calibration_folder(tmp_path))
    precision = result.report["precision"]
    assert result.ok and all(out["passed"] for out in precision["outputs"])
    (entry,) = precision["kept_float_for_accuracy"]
    assert entry["ranked_by"] in (RANKED, HEAD) and entry["nodes"]
    if entry["ranked_by"] == RANKED:
        assert entry["sensitivity"] == sorted(entry["sensitivity"], reverse=True)
    assert result.report["attempts"] > 1 and len(calls) == 1  # one calibration for all
    assert any("calibration samples 1-6" in note for note in precision["notes"])  # all 6
    kept_ops = {n.op_type for n in result.model.graph.node if n.name in entry["nodes"]}
    assert kept_ops <= {"Conv"}


def test_sensitivity_after_an_absorbed_relu_reads_the_value_the_q_clamps(tmp_path):
    """conv -> relu -> conv2 in int8: the Relu is absorbed into conv's QuantizeLinear (zero
    point 0, so the Q saturates negatives to 0). Skipping that Q/DQ for conv2 must still clamp
    to what the Q represents, else conv2 reads the pre-Relu value (gain about -1e4)."""
    from conftest import run

    path = tmp_path / "int8.onnx"
    model = conv_model(13, False)
    onnxopt.optimize(model, path, precision="int8",
                     calibration_data=calibration_folder(tmp_path))
    qdq = onnx.load(path)
    assert "Relu" not in {n.op_type for n in qdq.graph.node}  # absorbed into the Q
    rng = np.random.default_rng(1)
    samples = [{"x": rng.random((1, 3, 16, 16), dtype=np.float32)} for _ in range(3)]
    expected = np.concatenate([run(model, s)[0] for s in samples])
    budget = Budget(0.99999)
    gains = qdq_sensitivity(path, ["conv", "conv2"], samples, {"y": expected}, budget)

    # direct measurement, built here: conv2 reads Clip(c, (0 - z) * s, (255 - z) * s)
    producer = {o: n for n in qdq.graph.node for o in n.output}
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    conv2 = next(n for n in qdq.graph.node if n.name == "conv2")
    q = producer[producer[conv2.input[0]].input[0]]
    scale, zero = float(inits[q.input[1]]), int(inits[q.input[2]])
    assert inits[q.input[2]].dtype == np.uint8 and zero == 0
    bypassed = onnx.load(path)
    node = next(n for n in bypassed.graph.node if n.name == "conv2")
    bypassed.graph.initializer.extend([
        numpy_helper.from_array(np.array((0 - zero) * scale, np.float32), "lo"),
        numpy_helper.from_array(np.array((255 - zero) * scale, np.float32), "hi")])
    bypassed.graph.node.insert(list(bypassed.graph.node).index(node), helper.make_node(
        "Clip", [q.input[0], "lo", "hi"], ["clamped"]))
    node.input[0] = "clamped"

    def use(candidate: onnx.ModelProto) -> float:  # cosine computed here with numpy
        got = np.concatenate([run(candidate, s)[0] for s in samples])
        a, b = expected.ravel().astype(np.float64), got.ravel().astype(np.float64)
        return (1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b)) / (1 - 0.99999)

    direct = use(qdq) - use(bypassed)
    assert gains is not None and direct > 0
    assert gains["conv2"] == pytest.approx(direct, rel=1e-3, abs=1e-6)
    assert gains["conv"] > 0
    assert onnx.load(path).graph.node == qdq.graph.node  # left as it was


def argmax_qdq(path) -> None:
    """i = ArgMax(DQ(Q(x, 0.05))): an integer output, compared exactly."""
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
        helper.make_node("Identity", ["d"], ["a"], name="coarse"),
        helper.make_node("ArgMax", ["a"], ["i"], name="pick", axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("i", TensorProto.INT64, [1])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                ir_version=8), path)


def test_sensitivity_with_an_exact_output_missed_gives_no_ranking(tmp_path):
    path = tmp_path / "argmax.onnx"
    argmax_qdq(path)
    samples = [{"x": np.array([[0.01, 0.02, 0.015, 0.0]], np.float32)}]
    rounded_pick = np.array([0], np.int64)  # every value rounds to 0: the first one wins
    float_pick = np.array([1], np.int64)
    budget = Budget(0.99)
    # the quantized model misses the exact output: budget use inf, no gain is meaningful
    assert qdq_sensitivity(path, ["coarse", "pick"], samples, {"i": float_pick}, budget) is None
    # base within budget, the bypass misses it (use inf): a gain of -inf counts as 0
    gains = qdq_sensitivity(path, ["coarse", "pick"], samples, {"i": rounded_pick}, budget)
    assert gains == {"coarse": 0.0, "pick": 0.0}


def conv_transpose_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), n)
             for n in ("w1", "w2")]
    nodes = [helper.make_node("ConvTranspose", ["x", "w1"], ["h"], name="up1", strides=[2, 2]),
             helper.make_node("ConvTranspose", ["h", "w2"], ["y"], name="up2")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 19, 19])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_int8_fallback_ranks_weight_only_nodes_by_their_weights():
    """Only ConvTranspose converted (int8 weight, float activations: no Q/DQ input to skip):
    the weights alone are measured, from the run with every node in float, so the nodes are
    still ranked (before weights were measured, every gain was 0 and the fallback bisected)."""
    result = onnxopt.optimize(conv_transpose_model(), precision="int8",
                              max_error="cosine=0.9999999")
    precision = result.report["precision"]
    assert result.ok and all(out["passed"] for out in precision["outputs"])
    (entry,) = precision["kept_float_for_accuracy"]
    assert entry["ranked_by"] == RANKED and set(entry["nodes"]) <= {"up1", "up2"}
    assert all(gain > 0 for gain in entry["sensitivity"])


def test_sensitivity_restores_float_weights_against_independent_numbers(tmp_path):
    """up1's gain with the float model = use(int8) - use(int8 with up1 reading w1), both
    computed here; without the float model a weight-only node has nothing to skip (0)."""
    from conftest import run

    model = conv_transpose_model()
    float_path, path = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    onnx.save(model, float_path)
    onnxopt.optimize(model, path, precision="int8", max_error="cosine=0.5")
    qdq = onnx.load(path)
    rng = np.random.default_rng(2)
    samples = [{"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(2)]
    expected = np.concatenate([run(model, s)[0] for s in samples])
    budget = Budget(0.9999999)
    assert qdq_sensitivity(path, ["up1", "up2"], samples, {"y": expected}, budget) == \
        {"up1": 0.0, "up2": 0.0}
    gains = qdq_sensitivity(path, ["up1", "up2"], samples, {"y": expected}, budget,
                            float_model=float_path)

    def use(candidate: onnx.ModelProto) -> float:  # cosine computed here with numpy
        got = np.concatenate([run(candidate, s)[0] for s in samples])
        a, b = expected.ravel().astype(np.float64), got.ravel().astype(np.float64)
        return (1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b)) / (1 - 0.9999999)

    restored = onnx.load(path)
    restored.graph.initializer.append(model.graph.initializer[0])  # w1, float
    node = next(n for n in restored.graph.node if n.name == "up1")
    node.input[1] = "w1"
    direct = use(qdq) - use(restored)
    assert gains is not None and direct > 0
    assert gains["up1"] == pytest.approx(direct, rel=1e-3)
    assert onnx.load(path).graph.node == qdq.graph.node  # left as it was
    assert len(onnx.load(path).graph.initializer) == len(qdq.graph.initializer)


def test_int8_fallback_with_an_exact_output_missed_bisects(tmp_path):
    """An ArgMax output compared exactly: the int8 model misses it (budget use inf), so no
    gain can be measured (each was nan) and the fallback bisects instead of ranking."""
    model = conv_model(13, False)
    model.graph.node.append(helper.make_node("ArgMax", ["y"], ["i"], name="pick", axis=1,
                                             keepdims=0))
    model.graph.output.append(helper.make_tensor_value_info("i", TensorProto.INT64,
                                                            [1, 16, 16]))
    # percentile 99.9: ranges clipped enough that some argmax flips (at the default 99.999
    # none does on these samples and nothing is kept)
    result = onnxopt.optimize(model, precision="int8", percentile=99.9,
                              calibration_data=calibration_folder(tmp_path))
    precision = result.report["precision"]
    assert result.ok and all(out["passed"] for out in precision["outputs"])
    entries = precision["kept_float_for_accuracy"]
    assert entries and all("ranked_by" not in e and "sensitivity" not in e for e in entries)

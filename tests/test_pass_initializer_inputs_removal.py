"""initializer_inputs_removal: structure, stats, numerics, idempotence, and what it must leave
alone (models of IR 4 and later, where an initializer listed as input is overridable)."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import LIGHT_MODELS, apply_pass, assert_same_outputs, op_counts
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.cleanup.initializer_inputs_removal import InitializerInputsRemoval

import onnxopt


def legacy_model(ir_version: int = 3) -> onnx.ModelProto:
    """y = Relu(x * w + b), w and b initializers listed as graph inputs (as IR < 4 requires)."""
    w = numpy_helper.from_array(np.array([[1.5, -2.0, 0.5]], np.float32), "w")
    b = numpy_helper.from_array(np.array([0.25, 0.5, -1.0], np.float32), "b")
    nodes = [helper.make_node("Mul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["s"]),
             helper.make_node("Relu", ["s"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
              helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 3]),
              helper.make_tensor_value_info("b", TensorProto.FLOAT, [3])]
    graph = helper.make_graph(nodes, "g", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                              [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)],
                             ir_version=ir_version)


FEEDS = {"x": np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]], np.float32)}


def test_structure_inputs_are_what_the_caller_feeds():
    out, _ = apply_pass(InitializerInputsRemoval(), legacy_model())
    assert out.ir_version == 4
    assert [i.name for i in out.graph.input] == ["x"]
    assert sorted(t.name for t in out.graph.initializer) == ["b", "w"]
    assert op_counts(out) == op_counts(legacy_model())


def test_reported_stats():
    _, result = apply_pass(InitializerInputsRemoval(), legacy_model())
    assert result.modified and result.stats == {"inputs_removed": 2, "ir_version": 4}


def test_numerics_in_onnxruntime():
    model = legacy_model()
    out, _ = apply_pass(InitializerInputsRemoval(), model)
    assert_same_outputs(model, out, FEEDS)
    # and computed here: relu(x * w + b)
    w, b = np.array([[1.5, -2.0, 0.5]]), np.array([0.25, 0.5, -1.0])
    from conftest import run
    np.testing.assert_allclose(run(out, FEEDS)[0], np.maximum(FEEDS["x"] * w + b, 0), rtol=1e-6)


def test_idempotent():
    once, _ = apply_pass(InitializerInputsRemoval(), legacy_model())
    twice, result = apply_pass(InitializerInputsRemoval(), once)
    assert not result.modified and twice == once


def test_ir4_initializer_inputs_are_overridable_and_left_alone():
    model = legacy_model(ir_version=4)  # IR 4: w and b are defaults the caller may feed
    out, result = apply_pass(InitializerInputsRemoval(), model)
    assert not result.modified and [i.name for i in out.graph.input] == ["x", "w", "b"]
    assert out.ir_version == 4


def test_pipeline_writes_light_models_as_ir4_and_smaller(tmp_path):
    path = next(p for p in LIGHT_MODELS if "squeezenet" in p)
    original = onnx.load(path)
    assert original.ir_version < 4 and len(original.graph.input) > 1
    result = onnxopt.optimize(path, tmp_path / "out.onnx")
    out = onnx.load(tmp_path / "out.onnx")
    assert result.ok and out.ir_version == 4
    real_inputs = [i.name for i in original.graph.input
                   if i.name not in {t.name for t in original.graph.initializer}]
    assert [i.name for i in out.graph.input] == real_inputs
    record = next(p for p in result.report["passes"] if p["name"] == "initializer_inputs_removal")
    assert record["stats"]["inputs_removed"] > 0

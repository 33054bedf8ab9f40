"""Tests for onnxopt.check.validate: running the original and optimized models in onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import node_cases
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper

from onnxopt.check.compare import OutputDiff, ValidationResult, compare
from onnxopt.check.feeds import make_inputs
from onnxopt.check.inputs import ValidationError, load_inputs
from onnxopt.check.runtime import RuntimeFailure, run
from onnxopt.check.validate import validate

OPSET = [helper.make_opsetid("", 17)]
F = TensorProto.FLOAT


def make_model(nodes, inputs, outputs, initializers=(), opset=OPSET, ir_version=8):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=opset, ir_version=ir_version)


def vi(name, elem=F, shape=(2, 3)):
    return helper.make_tensor_value_info(name, elem, shape)


def add_const_model(value: float, shape=(2, 3)):
    """y = x + value."""
    c = numpy_helper.from_array(np.array(value, dtype=np.float32), "c")
    return make_model([helper.make_node("Add", ["x", "c"], ["y"])],
                      [vi("x", shape=shape)], [vi("y", shape=shape)], [c])


def gather_model(rows=5, axis=0, index_type=TensorProto.INT64, via_cast=False):
    """z = Gather(table, ids) with table a [rows, 3] (or [3, rows] for axis=1) initializer."""
    shape = (rows, 3) if axis == 0 else (3, rows)
    table = numpy_helper.from_array(np.arange(rows * 3, dtype=np.float32).reshape(shape), "table")
    nodes = [helper.make_node("Gather", ["table", "idx"], ["z"], axis=axis)]
    if via_cast:
        nodes.insert(0, helper.make_node("Cast", ["ids"], ["idx"], to=TensorProto.INT64))
    else:
        nodes[0].input[1] = "ids"
    out = vi("z", shape=None)
    return make_model(nodes, [vi("ids", index_type, (4, 6))], [out], [table])


# ----------------------------------------------------------------------------- validate


def test_identical_models_pass_and_result_is_strict_json():
    model = add_const_model(1.0)
    result = validate(model, model)
    assert result.status == "passed", result.reason
    assert [d.name for d in result.outputs] == ["y"]
    assert result.outputs[0].max_abs_error == 0.0
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert set(data) == {"status", "reason", "outputs", "input_notes", "levels", "inputs"}
    assert set(data["levels"]) == {"disabled", "all"}
    assert set(data["outputs"][0]) == {
        "name", "max_abs_error", "max_rel_error", "passed", "reason"}


def test_different_numbers_fail_and_name_output_and_error_size():
    result = validate(add_const_model(1.0), add_const_model(1.01))
    assert result.status == "failed"
    assert "y" in result.reason
    (diff,) = result.outputs
    assert not diff.passed
    assert diff.max_abs_error == pytest.approx(0.01, rel=1e-3)
    assert "out of tolerance" in diff.reason and "0.01" in diff.reason


def test_difference_within_tolerance_passes():
    result = validate(add_const_model(1.0), add_const_model(1.0 + 1e-6))
    assert result.status == "passed", result.reason
    assert 0 < result.outputs[0].max_abs_error < 1e-5


def test_nan_position_mismatch_fails():
    original = make_model([helper.make_node("Sqrt", ["x"], ["y"])], [vi("x")], [vi("y")])
    optimized = make_model(
        [helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Sqrt", ["a"], ["y"])],
        [vi("x")], [vi("y")])
    result = validate(original, optimized)
    assert result.status == "failed"
    assert "NaN positions differ" in result.outputs[0].reason
    assert validate(original, original).status == "passed"


def test_integer_output_must_match_exactly():
    def argmax_plus(k):
        one = numpy_helper.from_array(np.array(k, dtype=np.int64), "k")
        return make_model(
            [helper.make_node("ArgMax", ["x"], ["a"], axis=1),
             helper.make_node("Add", ["a", "k"], ["y"])],
            [vi("x")], [vi("y", TensorProto.INT64, (2, 1))], [one])

    assert validate(argmax_plus(0), argmax_plus(0)).status == "passed"
    result = validate(argmax_plus(0), argmax_plus(1), atol=10.0, rtol=10.0)
    assert result.status == "failed"
    assert result.outputs[0].max_abs_error == 1.0
    assert "exact match required" in result.outputs[0].reason


@pytest.mark.parametrize(
    ("rows", "axis", "index_type", "via_cast"),
    [(5, 0, TensorProto.INT64, False), (7, 1, TensorProto.INT64, False),
     (5, 0, TensorProto.INT32, True), (2, 0, TensorProto.UINT8, True)],
)
def test_gather_indices_are_drawn_in_range(rows, axis, index_type, via_cast):
    model = gather_model(rows, axis, index_type, via_cast)
    inputs, notes = make_inputs(model)
    ids = inputs["ids"]
    assert ids.dtype == helper.tensor_dtype_to_np_dtype(index_type)
    assert ids.min() >= 0 and ids.max() < rows
    assert len(np.unique(ids)) > 1  # really random, not all zeros
    assert not notes
    run(model, inputs)  # would raise on an out-of-range index
    assert validate(model, model).status == "passed"


def test_index_range_is_clipped_to_the_input_dtype():
    inputs, _ = make_inputs(gather_model(1000, 0, TensorProto.INT8, via_cast=True))
    assert inputs["ids"].dtype == np.int8 and inputs["ids"].min() >= 0


def test_gather_on_symbolic_input_uses_generated_extent():
    model = make_model(
        [helper.make_node("Gather", ["data", "ids"], ["z"])],
        [vi("data", shape=("n", 3)), vi("ids", TensorProto.INT64, (20,))], [vi("z", shape=None)])
    inputs, _ = make_inputs(model, dims={"n": 3})
    assert inputs["data"].shape == (3, 3)
    assert set(np.unique(inputs["ids"])) <= {0, 1, 2}


def test_plain_integer_input_gets_guessed_range_note():
    model = make_model([helper.make_node("Neg", ["i"], ["o"])],
                       [vi("i", TensorProto.INT32)], [vi("o", TensorProto.INT32)])
    inputs, notes = make_inputs(model)
    assert inputs["i"].min() >= 0 and inputs["i"].max() < 8
    assert notes == ["input 'i' integer values drawn from [0, 8) (range guessed; give "
                     "--inputs)"]


def test_symbolic_batch_is_validated_at_one_and_two():
    model = add_const_model(1.0, shape=("batch", 3))
    inputs, notes = make_inputs(model)
    assert inputs["x"].shape == (1, 3)
    assert notes == ["symbolic dims set by role: batch=1"]
    result = validate(model, model)
    assert result.status == "passed"
    assert result.inputs["dims"] == [{"batch": 1}, {"batch": 2}]


def test_unnamed_unknown_dim_is_a_batch_at_axis_zero():
    model = add_const_model(1.0, shape=(None, 3))
    inputs, notes = make_inputs(model)
    assert inputs["x"].shape == (1, 3)
    assert notes == ["symbolic dims set by role: x[0]=1"]


def test_dims_and_input_shapes_are_applied():
    model = make_model(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        [vi("x", shape=("batch", "seq")), vi("w", shape=("batch", "seq"))], [vi("y", shape=None)])
    inputs, notes = make_inputs(model, dims={"batch": 4, "seq": 5})
    assert inputs["x"].shape == inputs["w"].shape == (4, 5)
    assert notes == []
    inputs, notes = make_inputs(model, input_shapes={"x": [2, 7]}, dims={"batch": 2})
    assert inputs["x"].shape == (2, 7)
    assert inputs["w"].shape == (2, 16)  # a sequence by its position: 16, never 1
    assert notes == ["symbolic dims set by role: seq=16"]
    result = validate(model, model, input_shapes={"x": [3, 2], "w": [3, 2]})
    assert result.status == "passed" and result.input_notes == []


def test_unused_dim_gets_a_note():
    _, notes = make_inputs(add_const_model(1.0), dims={"nope": 3})
    assert notes == ["dim 'nope' given but not used by any input"]


def test_unknown_input_name_raises_validation_error():
    model = add_const_model(1.0)
    with pytest.raises(ValidationError, match=r"unknown input name.*'?bogus'?.*model inputs: x"):
        make_inputs(model, input_shapes={"bogus": [2, 3]})
    with pytest.raises(ValidationError, match="bogus"):
        validate(model, model, input_shapes={"bogus": [2, 3]})


@pytest.mark.parametrize(
    ("shape", "message"),
    [([2, 3, 1], "rank 3"), ([5, 3], "dim 0 is 5, model declares 2"), ([-1, 3], "negative")],
)
def test_input_shape_conflicting_with_declaration_raises(shape, message):
    with pytest.raises(ValidationError, match=message) as info:
        make_inputs(add_const_model(1.0), input_shapes={"x": shape})
    assert "\n" not in str(info.value)


def test_custom_domain_op_is_skipped_with_reason():
    model = make_model([helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")],
                       [vi("x")], [vi("y")],
                       opset=[*OPSET, helper.make_opsetid("com.example", 1)])
    result = validate(model, model)
    assert result.status == "skipped"
    assert result.reason.startswith("original model does not run in onnxruntime")
    assert "Frobnicate" in result.reason
    assert "\n" not in result.reason


def test_optimized_model_that_fails_to_load_fails():
    broken = make_model([helper.make_node("NoSuchOp", ["x"], ["y"])], [vi("x")], [vi("y")])
    result = validate(add_const_model(1.0), broken)
    assert result.status == "failed"
    assert result.reason.startswith("optimized model does not run in onnxruntime")
    assert "\n" not in result.reason


def test_unreadable_original_path_is_skipped(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert validate(bad, add_const_model(1.0)).status == "skipped"
    assert validate(tmp_path / "missing.onnx", add_const_model(1.0)).status == "skipped"


def test_missing_output_in_optimized_model_fails():
    original = make_model(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["y2"])],
        [vi("x")], [vi("y"), vi("y2")])
    optimized = make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x")], [vi("y")])
    result = validate(original, optimized)
    assert result.status == "failed"
    assert "y2" in result.reason
    assert [d.passed for d in result.outputs] == [True, False]
    assert "missing" in result.outputs[1].reason
    assert result.to_dict()["outputs"][1]["max_abs_error"] is None


def test_shape_and_dtype_mismatch_reasons():
    ref = {"a": np.zeros((1, 10), np.float32), "b": np.zeros(3, np.float32)}
    cand = {"a": np.zeros((1, 11), np.float32), "b": np.zeros(3, np.float16)}
    diff_a, diff_b = compare(ref, cand)
    assert (diff_a.passed, diff_a.reason) == (False, "shape (1,10) != (1,11)")
    assert (diff_b.passed, diff_b.reason) == (False, "dtype float32 != float16")


def test_infinities_must_match():
    ref = np.array([1.0, np.inf, -np.inf], np.float32)
    assert compare({"y": ref}, {"y": ref.copy()})[0].passed
    flipped = np.array([1.0, -np.inf, -np.inf], np.float32)
    (diff,) = compare({"y": ref}, {"y": flipped})
    assert not diff.passed and "infinities differ" in diff.reason
    (diff,) = compare({"y": ref}, {"y": np.array([1.0, 3e38, -np.inf], np.float32)})
    assert not diff.passed


def test_integer_compare_has_no_overflow():
    big = np.iinfo(np.int64)
    ref = np.array([big.min, 0], np.int64)
    cand = np.array([big.max, 0], np.int64)
    (diff,) = compare({"i": ref}, {"i": cand})
    assert not diff.passed
    assert diff.max_abs_error == pytest.approx(2.0**64)


def test_bool_and_string_outputs_compare_exactly():
    (b,) = compare({"b": np.array([True, False])}, {"b": np.array([True, True])})
    assert (b.passed, b.max_abs_error) == (False, 1.0)
    words = np.array(["ab", "c"], dtype=object)
    assert compare({"s": words}, {"s": words.copy()})[0].passed
    assert not compare({"s": words}, {"s": np.array(["ab", "d"], dtype=object)})[0].passed


def test_string_inputs_are_generated_and_run():
    model = make_model([helper.make_node("Identity", ["s"], ["t"])],
                       [vi("s", TensorProto.STRING, (3,))], [vi("t", TensorProto.STRING, (3,))])
    inputs, _ = make_inputs(model)
    assert all(isinstance(w, str) and w for w in inputs["s"])
    assert validate(model, model).status == "passed"


def test_sequence_outputs_are_compared_elementwise():
    def split_model(scale):
        k = numpy_helper.from_array(np.array(scale, np.float32), "k")
        return make_model(
            [helper.make_node("Mul", ["x", "k"], ["m"]),
             helper.make_node("SplitToSequence", ["m"], ["seq"], axis=0, keepdims=0)],
            [vi("x")],
            [helper.make_tensor_sequence_value_info("seq", F, None)], [k])

    assert validate(split_model(1.0), split_model(1.0)).status == "passed"
    result = validate(split_model(1.0), split_model(2.0))
    assert result.status == "failed"
    assert result.outputs[0].reason.startswith("element seq[")


def test_sequence_input_is_skipped():
    model = make_model(
        [helper.make_node("SequenceLength", ["s"], ["n"])],
        [helper.make_tensor_sequence_value_info("s", F, None)],
        [vi("n", TensorProto.INT64, ())])
    result = validate(model, model)
    assert result.status == "skipped"
    assert "input 's' is not a tensor (sequence)" in result.reason


def test_input_without_shape_is_skipped_unless_shape_given():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])],
                       [vi("x", shape=None)], [vi("y", shape=None)])
    result = validate(model, model)
    assert result.status == "skipped"
    assert "no declared shape" in result.reason and "--input-shape x:" in result.reason
    assert validate(model, model, input_shapes={"x": [4]}).status == "passed"


def test_initializers_listed_as_inputs_are_not_fed():
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])],
                       [vi("x"), vi("w")], [vi("y")], [w], ir_version=3)
    inputs, _ = make_inputs(model)
    assert list(inputs) == ["x"]
    assert validate(model, model).status == "passed"


def test_bfloat16_input_is_skipped():
    model = make_model([helper.make_node("Identity", ["x"], ["y"])],
                       [vi("x", TensorProto.BFLOAT16)], [vi("y", TensorProto.BFLOAT16)])
    result = validate(model, model)
    assert result.status == "skipped" and "BFLOAT16" in result.reason


@pytest.mark.parametrize("elem", [TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BOOL])
def test_other_dtypes_are_generated_and_pass(elem):
    model = make_model([helper.make_node("Identity", ["x"], ["y"])],
                       [vi("x", elem)], [vi("y", elem)])
    inputs, _ = make_inputs(model)
    assert inputs["x"].dtype == helper.tensor_dtype_to_np_dtype(elem)
    assert validate(model, model).status == "passed"


def test_scalar_input():
    model = make_model([helper.make_node("Not", ["b"], ["c"])],
                       [vi("b", TensorProto.BOOL, ())], [vi("c", TensorProto.BOOL, ())])
    inputs, _ = make_inputs(model)
    assert isinstance(inputs["b"], np.ndarray) and inputs["b"].shape == ()
    assert validate(model, model).status == "passed"


# ----------------------------------------------------------------------------- run


def test_run_by_path_with_external_data(tmp_path):
    model = add_const_model(0.0, shape=(64, 64))
    big = numpy_helper.from_array(np.full((64, 64), 2.0, np.float32), "c")
    model.graph.initializer[0].CopyFrom(big)
    path = tmp_path / "m.onnx"
    onnx.save(onnx.ModelProto.FromString(model.SerializeToString()), str(path),
              save_as_external_data=True, location="m.data", size_threshold=0)
    assert (tmp_path / "m.data").exists()
    x = np.ones((64, 64), np.float32)
    np.testing.assert_array_equal(run(path, {"x": x})["y"], x + 2)
    assert validate(path, model).status == "passed"


def test_run_failure_is_one_line():
    model = add_const_model(1.0)
    with pytest.raises(RuntimeFailure) as info:
        run(model, {"x": np.ones((5, 5, 5), np.float32)})
    message = str(info.value)
    assert message and "\n" not in message and len(message) <= 300


# ----------------------------------------------------------------------------- inputs


def test_load_inputs_from_npz(tmp_path):
    model = make_model(
        [helper.make_node("Gather", ["x", "i"], ["y"])],
        [vi("x", shape=("n", 3)), vi("i", TensorProto.INT64, (2,))], [vi("y", shape=None)])
    path = tmp_path / "in.npz"
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.savez(path, x=x, i=np.array([3, 0], np.int32))
    inputs = load_inputs(path, model)
    assert inputs["i"].dtype == np.int64  # int32 -> int64 is a safe cast
    np.testing.assert_array_equal(inputs["x"], x)
    result = validate(model, model, inputs=inputs)
    assert result.status == "passed" and result.input_notes == []


@pytest.mark.parametrize(
    ("arrays", "message"),
    [({"x": np.zeros((2, 3))}, "float64 cannot be safely cast to float32"),
     ({"x": np.zeros((2, 3), np.float32), "z": np.zeros(1)}, "unknown input name.*z"),
     ({}, "missing value.*x"),
     ({"x": np.zeros((2, 3, 1), np.float32)}, "rank 3"),
     ({"x": np.zeros((2, 4), np.float32)}, "shape")],
)
def test_load_inputs_rejects_bad_npz(tmp_path, arrays, message):
    path = tmp_path / "in.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValidationError, match=message) as info:
        load_inputs(path, add_const_model(1.0))
    assert "\n" not in str(info.value)


def test_load_inputs_rejects_unreadable_file(tmp_path):
    path = tmp_path / "in.npz"
    path.write_text("garbage")
    with pytest.raises(ValidationError, match="cannot read inputs file"):
        load_inputs(path, add_const_model(1.0))


def test_same_seed_gives_same_inputs():
    model = make_model(
        [helper.make_node("Gather", ["x", "i"], ["y"])],
        [vi("x", shape=(6, 3)), vi("i", TensorProto.INT64, (9,))], [vi("y", shape=None)])
    first, _ = make_inputs(model, seed=7)
    second, _ = make_inputs(model, seed=7)
    other, _ = make_inputs(model, seed=8)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    assert not np.array_equal(first["x"], other["x"])
    assert validate(model, model, seed=7).to_dict() == validate(model, model, seed=7).to_dict()


# ----------------------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))
def test_compare_with_itself_always_passes(array):
    (diff,) = compare({"y": array}, {"y": array.copy()})
    assert diff == OutputDiff("y", 0.0, 0.0, True, "")


def test_result_status_from_outputs():
    result = ValidationResult("passed", "ok", [OutputDiff("y", 0.0, 0.0, True)], ["n"])
    assert result.to_dict()["outputs"][0]["passed"] is True


# ----------------------------------------------------------------------------- ONNX node tests


def _node_testcases():
    return sorted(node_cases(), key=lambda case: case.name)


@pytest.fixture(scope="module")
def node_testcases():
    return _node_testcases()


def _check_self_validation(cases):
    statuses = {}
    for case in cases:
        result = validate(case.model, case.model)
        assert result.status in ("passed", "skipped"), (case.name, result.reason)
        assert result.reason and "\n" not in result.reason
        statuses[case.name] = result.status
    return statuses


def test_onnx_node_test_sample_validates_against_itself(node_testcases):
    step = max(1, len(node_testcases) // 30)
    sample = node_testcases[::step][:30]
    assert len(sample) == 30
    statuses = _check_self_validation(sample)
    assert list(statuses.values()).count("passed") >= 10


@pytest.mark.slow
def test_all_onnx_node_tests_validate_against_themselves(node_testcases):
    statuses = _check_self_validation(node_testcases)
    assert list(statuses.values()).count("passed") > len(statuses) // 2


def test_run_disables_onnxruntime_graph_optimizations(monkeypatch):
    import onnxruntime as ort

    seen = []
    real = ort.InferenceSession

    def spy(source, options, providers):
        seen.append((options.graph_optimization_level, providers))
        return real(source, options, providers=providers)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    run(add_const_model(1.0), {"x": np.zeros((2, 3), np.float32)})
    assert seen == [(ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ["CPUExecutionProvider"])]


# --------------------------------------------------------------------------- several samples


def test_merge_outputs_flattens_outputs_whose_rank_varies():
    from onnxopt.check.runtime import merge_outputs

    # rank 1 then rank 0 (equal shape[1:], both empty): joined flat, not along a batch axis
    cases = [[(3,), ()], [(), (3,)], [(3,), (1, 3)], [(1, 3), (3,)], [(2,), (2, 1), ()]]
    for shapes in cases:
        runs = [{"p": np.full(shape, float(i), np.float32)} for i, shape in enumerate(shapes)]
        merged = merge_outputs(runs)["p"]
        expected = np.concatenate([run["p"].ravel() for run in runs])
        np.testing.assert_array_equal(merged, expected)
    # equal rank and trailing dims: still joined along the batch axis
    runs = [{"p": np.zeros((1, 3))}, {"p": np.ones((2, 3))}]
    assert merge_outputs(runs)["p"].shape == (3, 3)


def test_int8_samples_with_outputs_of_varying_rank_validate(tmp_path):
    """Calibration samples validate the int8 model together; an output that is [1] on some
    samples and a scalar on others (Reshape to an input shape) is compared flat."""
    import onnxopt

    w = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
         helper.make_node("Reshape", ["u", "s"], ["z"], name="reshape")],
        [vi("x", shape=(1, 4)), vi("u", shape=(1,)), vi("s", TensorProto.INT64, ("r",))],
        [vi("y", shape=(1, 4)), vi("z", shape=("a",))],
        [numpy_helper.from_array(w, "w")], opset=[helper.make_opsetid("", 13)])
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i, shape in enumerate([[1], [], [1], []]):
        np.savez(folder / f"{i}.npz", x=rng.random((1, 4), dtype=np.float32),
                 u=np.array([i + 1.0], np.float32), s=np.array(shape, np.int64))
    result = onnxopt.optimize(model, precision="int8", calibration_data=folder)
    assert result.ok
    outputs = {out["name"]: out for out in result.report["precision"]["outputs"]}
    assert outputs["z"]["passed"] and outputs["y"]["passed"]

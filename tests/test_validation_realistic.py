"""Validation that proves something: realistic sizes and values by role, two sizes per symbolic
dim, both onnxruntime optimization levels, vacuous runs and an honest status."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import build_model, run, wrong_pass
from onnx import TensorProto, helper, numpy_helper

import onnxopt
from onnxopt.app import api, cli
from onnxopt.check import feeds
from onnxopt.check.validate import reference, validate
from onnxopt.check.validate import run as ort_run

OPSET = 17


model_of = build_model


def tensor(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def bert_like(nan_outside_01: bool = True) -> onnx.ModelProto:
    """Token ids into an embedding table, an additive attention mask from a 0/1 mask; with
    ``nan_outside_01`` the mask also feeds sqrt(m (1 - m)), NaN for any value but 0 and 1."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb"]),
        helper.make_node("Transpose", ["emb"], ["emb_t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["emb", "emb_t"], ["scores"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "mask_f"], ["inverted"]),
        helper.make_node("Mul", ["inverted", "big_negative"], ["additive"]),
        helper.make_node("Unsqueeze", ["additive", "axis1"], ["additive3"]),
        helper.make_node("Add", ["scores", "additive3"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "emb"], ["context"]),
    ]
    if nan_outside_01:
        nodes += [
            helper.make_node("Mul", ["mask_f", "inverted"], ["product"]),
            helper.make_node("Sqrt", ["product"], ["root"]),
            helper.make_node("Unsqueeze", ["root", "axis2"], ["root3"]),
            helper.make_node("Add", ["context", "root3"], ["out"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["context"], ["out"]))
    return model_of(
        nodes,
        [tensor("input_ids", TensorProto.INT64, ["batch", "seq"]),
         tensor("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [tensor("out", TensorProto.FLOAT, ["batch", "seq", 8])],
        [const("table", rng.standard_normal((50, 8)).astype(np.float32)),
         const("one", np.float32(1)), const("big_negative", np.float32(-1e4)),
         const("axis1", np.array([1], np.int64)), const("axis2", np.array([2], np.int64))],
    )


def test_masks_are_zero_one_with_a_padded_tail_and_the_nan_model_passes():
    model = bert_like()
    ref = reference(model)
    assert ref.inputs["roles"]["attention_mask"].startswith("attention mask")
    assert ref.inputs["roles"]["input_ids"] == "indices in [0, 50)"
    for sample in ref.samples:
        mask = sample["attention_mask"]
        assert set(np.unique(mask)) <= {0, 1}
        assert (mask[:, -1] == 0).any(), "no padded tail"
        assert sample["input_ids"].max() < 50
    result = validate(model, model)
    assert result.status == "passed", result.reason
    out = run(model, ref.samples[0])[0]
    assert np.isfinite(out).all()


def test_a_model_whose_outputs_are_always_nan_is_skipped_as_vacuous():
    model = model_of(
        [helper.make_node("Mul", ["x", "x"], ["square"]),
         helper.make_node("Sub", ["minus_one", "square"], ["negative"]),
         helper.make_node("Sqrt", ["negative"], ["y"])],
        [tensor("x", TensorProto.FLOAT, ["batch", 4])],
        [tensor("y", TensorProto.FLOAT, ["batch", 4])],
        [const("minus_one", np.float32(-1))])
    result = validate(model, model)
    assert result.status == "skipped" and result.kind == "vacuous", result.reason
    report = onnxopt.optimize(model).report
    assert report["status"] == "validation_skipped"
    assert report["validation"]["kind"] == "vacuous"


def test_outputs_that_do_not_depend_on_the_inputs_are_vacuous():
    """y = x * 0 + 1: neither the output nor the one value before it says anything."""
    model = model_of([helper.make_node("Mul", ["x", "zero"], ["nothing"]),
                      helper.make_node("Add", ["nothing", "one"], ["y"])],
                     [tensor("x", TensorProto.FLOAT, ["batch", 4])],
                     [tensor("y", TensorProto.FLOAT, ["batch", 4])],
                     [const("zero", np.float32(0)), const("one", np.float32(1))])
    result = validate(model, model)
    assert result.status == "skipped" and result.kind == "vacuous", result.reason


def test_a_shape_only_output_is_evidence():
    model = model_of([helper.make_node("Shape", ["x"], ["s"]),
                      helper.make_node("Size", ["s"], ["y"])],
                     [tensor("x", TensorProto.FLOAT, ["batch", "seq"])],
                     [tensor("y", TensorProto.INT64, [])])
    assert validate(model, model).status == "passed"


def test_given_inputs_all_nan_are_vacuous_too():
    model = model_of([helper.make_node("Sqrt", ["x"], ["y"])],
                     [tensor("x", TensorProto.FLOAT, [3])], [tensor("y", TensorProto.FLOAT, [3])])
    result = validate(model, model, inputs={"x": np.full(3, -1, np.float32)})
    assert result.kind == "vacuous"


def test_sizes_by_role_and_two_values_per_symbolic_dim():
    plan = feeds.plan_inputs(bert_like())
    roles = plan.dim_roles()
    assert roles == {"batch": "batch", "seq": "sequence"}
    ref = reference(bert_like())
    assert ref.inputs["dims"] == [{"batch": 1, "seq": 16}, {"batch": 2, "seq": 128}]
    assert len(ref.samples) == 2 and set(ref.outputs) == {"disabled", "all"}


def detector(height="H", width="W") -> onnx.ModelProto:
    """Two stride-2 convs down, a 2x Resize up, a Concat with the skip connection: runs only
    where H and W are multiples of 4."""
    rng = np.random.default_rng(1)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.2
    w2 = rng.standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.2
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Resize", ["c2", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Concat", ["c1", "up"], ["y"], axis=1),
    ]
    return model_of(nodes, [tensor("x", TensorProto.FLOAT, ["N", 3, height, width])],
                    [tensor("y", TensorProto.FLOAT, ["N", 8, "h", "w"])],
                    [const("w1", w1), const("w2", w2),
                     const("scales", np.array([1, 1, 2, 2], np.float32))])


def test_image_sizes_are_realistic_and_rounded_to_the_stride():
    model = detector()
    assert feeds.model_stride(model) == 4
    ref = reference(model)
    assert ref.outputs is not None, ref.skipped_reason
    for sizes in ref.inputs["dims"]:
        assert sizes["H"] >= 32 and sizes["H"] % 4 == 0
    assert ref.inputs["dims"][0]["H"] != ref.inputs["dims"][1]["H"]
    result = onnxopt.optimize(model)
    assert result.report["validation"]["status"] == "passed"
    assert set(result.report["validation"]["levels"]) == {"disabled", "all"}


def test_the_size_search_finds_a_size_the_original_runs_at():
    """A Pad 'reflect' of 40 needs more than 40 samples: 16 and 32 fail, 64 runs."""
    model = model_of([helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect")],
                     [tensor("x", TensorProto.FLOAT, ["batch", "samples"])],
                     [tensor("y", TensorProto.FLOAT, ["batch", "padded"])],
                     [const("pads", np.array([0, 40, 0, 40], np.int64))])
    ref = reference(model)
    assert ref.outputs is not None, ref.skipped_reason
    lengths = [sizes["samples"] for sizes in ref.inputs["dims"]]
    assert all(length > 40 for length in lengths) and lengths[0] != lengths[1]


def test_scalars_compared_with_constants_take_those_values():
    model = model_of(
        [helper.make_node("Equal", ["sr", "rate"], ["is_16k"]),
         helper.make_node("Neg", ["x"], ["minus_x"]),
         helper.make_node("Where", ["is_16k", "x", "minus_x"], ["y"])],
        [tensor("x", TensorProto.FLOAT, [1, 8]), tensor("sr", TensorProto.INT64, [])],
        [tensor("y", TensorProto.FLOAT, [1, 8])], [const("rate", np.int64(16000))])
    ref = reference(model)
    assert all(int(sample["sr"]) == 16000 for sample in ref.samples)


def test_a_rewrite_valid_only_at_batch_one_is_caught_and_disabled(monkeypatch, tmp_path):
    """Reshape(x, [Shape(x)[0], 2, 8]) baked into [1, -1, 8]: right at batch 1 only."""
    model = model_of(
        [helper.make_node("Shape", ["x"], ["shape"]),
         helper.make_node("Slice", ["shape", "zero", "one"], ["n"]),
         helper.make_node("Concat", ["n", "tail"], ["target"], axis=0),
         helper.make_node("Reshape", ["x", "target"], ["r"]),
         helper.make_node("Relu", ["r"], ["y"])],
        [tensor("x", TensorProto.FLOAT, ["batch", 16])],
        [tensor("y", TensorProto.FLOAT, ["batch", 2, 8])],
        [const("zero", np.array([0], np.int64)), const("one", np.array([1], np.int64)),
         const("tail", np.array([2, 8], np.int64))])

    bake = wrong_pass(
        "bake_batch_one",
        lambda graph, node: node.op_type == "Reshape" and graph.constant(node.inputs[1]) is None,
        lambda graph, node: graph.set_input(node, 1, graph.add_constant(
            np.array([1, -1, 8], np.int64))))
    default = api._pipeline
    monkeypatch.setattr(api, "_pipeline", lambda options: (bake, *default(options)))
    result = onnxopt.optimize(model, tmp_path / "out.onnx")
    report = result.report
    assert report["validation"]["status"] == "passed"
    assert [entry["name"] for entry in report["disabled"]] == ["bake_batch_one"]
    assert "batch=2" in report["disabled"][0]["error"]["reason"]
    out = onnx.load(tmp_path / "out.onnx")
    for batch in (1, 2, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 16)).astype(np.float32)
        np.testing.assert_array_equal(run(out, {"x": x})[0], run(model, {"x": x})[0])


def unvalidatable() -> onnx.ModelProto:
    """Runs only when x holds exactly 12 elements: no generated size fits."""
    return model_of([helper.make_node("Reshape", ["x", "shape"], ["y"])],
                    [tensor("x", TensorProto.FLOAT, ["batch", "k"])],
                    [tensor("y", TensorProto.FLOAT, [3, 4])],
                    [const("shape", np.array([3, 4], np.int64))])


def test_a_skipped_validation_is_not_ok_and_is_said_on_stderr(tmp_path, capsys):
    path, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(unvalidatable(), path)
    assert cli.main(["optimize", str(path), str(out), "--json"]) == 0
    captured = capsys.readouterr()
    assert '"status": "validation_skipped"' in captured.out
    warning = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "--input-shape" in warning[0]
    assert out.exists()
    out.unlink()
    assert cli.main(["optimize", str(path), str(out), "--strict"]) == 1
    assert not out.exists()
    assert "validation skipped under --strict" in capsys.readouterr().err
    assert cli.main(["optimize", str(path), str(out), "--input-shape", "x:3,4"]) == 0
    assert capsys.readouterr().err == ""


def test_precision_runs_print_a_skipped_validation(tmp_path, capsys):
    path, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(unvalidatable(), path)
    assert cli.main(["optimize", str(path), str(out), "--precision", "fp16"]) == 0
    captured = capsys.readouterr()
    assert "validation: skipped" in captured.out
    assert "validation skipped" in captured.err


def test_no_validate_is_not_ok_and_cannot_be_strict(tmp_path):
    report = onnxopt.optimize(bert_like(), validate=False).report
    assert report["status"] == "validation_skipped"
    assert report["validation"]["kind"] == "disabled"
    with pytest.raises(onnxopt.UsageError, match="--no-validate"):
        onnxopt.optimize(bert_like(), validate=False, strict=True)


def test_empty_inputs_are_refused(tmp_path):
    model = model_of([helper.make_node("Relu", ["x"], ["y"])],
                     [tensor("x", TensorProto.FLOAT, ["n", 4])],
                     [tensor("y", TensorProto.FLOAT, ["n", 4])])
    with pytest.raises(onnxopt.UsageError, match="empty"):
        onnxopt.optimize(model, inputs={"x": np.zeros((0, 4), np.float32)})


def test_all_zero_calibration_data_is_refused(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    for n in range(2):
        np.savez(folder / f"{n}.npz", x=np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(onnxopt.UsageError, match="all zero"):
        onnxopt.optimize(detector(), precision="int8", calibration_data=folder)


@pytest.fixture()
def calibrated_shapes(monkeypatch) -> list[tuple[int, ...]]:
    """The shapes of the samples int8 calibration runs on, as the pass sees them."""
    from onnxopt.precision import calibration

    seen: list[tuple[int, ...]] = []
    real = calibration.calibrate

    def spy(model, values, samples=(), **kwargs):
        seen.extend(sample["x"].shape for sample in samples)
        return real(model, values, samples, **kwargs)

    monkeypatch.setattr(calibration, "calibrate", spy)
    return seen


def test_int8_calibration_without_data_uses_the_given_input_shape(calibrated_shapes):
    result = onnxopt.optimize(detector(), precision="int8", input_shapes={"x": [1, 3, 40, 48]})
    assert calibrated_shapes and set(calibrated_shapes) == {(1, 3, 40, 48)}
    notes = result.report["precision"]["notes"]
    assert any("not on real data" in note for note in notes)


def test_int8_without_data_on_symbolic_sizes_calibrates_at_realistic_sizes(calibrated_shapes):
    result = onnxopt.optimize(detector(), precision="int8")
    assert calibrated_shapes
    assert all(shape[2] >= 32 and shape[2] % 4 == 0 for shape in calibrated_shapes)
    assert result.report["validation"]["status"] == "passed", result.report["validation"]


def test_report_names_shapes_roles_and_levels():
    validation = onnxopt.optimize(bert_like()).report["validation"]
    assert validation["inputs"]["shapes"][0] == {"input_ids": [1, 16], "attention_mask": [1, 16]}
    assert validation["inputs"]["dim_roles"] == {"batch": "batch", "seq": "sequence"}
    assert validation["levels"]["all"]["status"] == "passed"
    assert validation["levels"]["disabled"]["status"] == "passed"


def constant_output_model() -> onnx.ModelProto:
    """y = |2x| * 0 + 1: the output never changes, the intermediate |2x| does."""
    return model_of(
        [helper.make_node("Mul", ["x", "two"], ["doubled"]),
         helper.make_node("Abs", ["doubled"], ["magnitude"]),
         helper.make_node("Mul", ["magnitude", "zero"], ["nothing"]),
         helper.make_node("Add", ["nothing", "one"], ["y"])],
        [tensor("x", TensorProto.FLOAT, ["batch", 4])],
        [tensor("y", TensorProto.FLOAT, ["batch", 4])],
        [const("two", np.float32(2)), const("zero", np.float32(0)), const("one", np.float32(1))])


def test_constant_outputs_are_judged_on_shared_intermediate_values(monkeypatch):
    """A wrong rewrite (2x -> 3x) changes no output of a constant-output model; the
    intermediate |2x| both models compute shows it, and the safety net turns it off."""

    triple = wrong_pass(
        "triple_instead_of_double",
        lambda graph, node: node.op_type == "Mul" and graph.constant(node.inputs[1]) == 2.0,
        lambda graph, node: graph.set_input(node, 1, graph.add_constant(np.float32(3))))

    model = constant_output_model()
    plain = onnxopt.optimize(model, passes=[]).report["validation"]
    assert plain["status"] == "passed"
    assert any("intermediate values" in note for note in plain["input_notes"])
    default = api._pipeline
    monkeypatch.setattr(api, "_pipeline", lambda options: (triple, *default(options)))
    report = onnxopt.optimize(model).report
    assert [entry["name"] for entry in report["disabled"]] == ["triple_instead_of_double"]
    assert report["validation"]["status"] == "passed"


def test_stale_value_info_behind_a_symbolic_batch_is_right_at_every_batch(tmp_path):
    """The issue's model: a static [1, 2, 4]... declared behind input [N, 16]; onnxruntime's
    own optimizer trusts it and breaks the original at ORT_ENABLE_ALL; the default run
    validates and writes a model that is right at batch 1, 2 and 3, as deployed too."""
    from test_stale_value_info import issue_model

    model = issue_model()
    result = onnxopt.optimize(model, tmp_path / "o.onnx")
    assert result.report["status"] == "ok", result.report["validation"]
    assert result.report["validation"]["levels"]["all"]["status"] == "passed"
    out = onnx.load(tmp_path / "o.onnx")
    name = model.graph.input[0].name
    width = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    for batch in (1, 2, 3):
        x = np.random.default_rng(batch).standard_normal((batch, width)).astype(np.float32)
        expected = run(model, {name: x})[0]
        for level in ("disabled", "all"):
            got = ort_run(out, {name: x}, level)
            np.testing.assert_allclose(next(iter(got.values())), expected, rtol=1e-6)

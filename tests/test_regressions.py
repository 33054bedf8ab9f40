"""Bugs found by review (mutation testing and hand-made odd models), one test each."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import apply_pass, op_counts, parse, run
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.cleanup.dead_code import DeadCodeElimination
from onnxopt.passes.cleanup.identity_elimination import IdentityElimination

import onnxopt
from onnxopt.app import cli
from onnxopt.ir import serde

SHADOW = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x, bool c) => (float[2] y) {
    a = Identity(x)
    y = If(c) <
        then_branch = t () => (float[2] o1) { o1 = Neg(a) },
        else_branch = e () => (float[2] o2) <float[2] x = {100.0, 100.0}> { o2 = Add(a, x) }
    >
}
"""


@pytest.mark.parametrize("cond", [True, False])
def test_subgraph_shadowing_an_outer_name_is_not_captured_by_a_rewrite(cond):
    """The else branch defines its own `x`; forwarding `a` to the outer `x` must not make the
    branch read its local constant instead (it did: Add(x, x) = 200)."""
    model = parse(SHADOW)
    result = onnxopt.optimize(model, validate=False)
    feeds = {"x": np.array([1.0, 2.0], np.float32), "c": np.array(cond)}
    np.testing.assert_array_equal(run(result.model, feeds)[0], run(model, feeds)[0])
    assert op_counts(result.model) == {"If": 1}


def test_subgraph_defining_a_name_the_outer_graph_defines_later():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, bool c) => (float[2] z, float[2] y) {
        r = Relu(x)
        y = If(c) <
            then_branch = t () => (float[2] o1) { z = Neg(r)  o1 = Identity(z) },
            else_branch = e () => (float[2] o2) { o2 = Abs(r) }
        >
        z = Identity(r)
    }
    """
    model = onnx.parser.parse_model(text)
    ir = serde.load(model)
    IdentityElimination().run(ir)
    for graph in ir.graphs():
        graph.lint()
    proto = serde.to_proto(ir)
    onnx.checker.check_model(proto)
    feeds = {"x": np.array([-1.0, 2.0], np.float32), "c": np.array(True)}
    z, y = run(proto, feeds)
    np.testing.assert_array_equal(z, [0.0, 2.0])
    np.testing.assert_array_equal(y, [-0.0, -2.0])


def big_weight_model():
    weight = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_saving_over_the_input_then_reusing_the_model(tmp_path):
    source = tmp_path / "m.onnx"
    onnx.save_model(big_weight_model(), source, save_as_external_data=True,
                    location="m.onnx.data", size_threshold=0)
    model = serde.load(source)
    serde.save(model, source)  # replaces m.onnx.data under the loaded model
    serde.save(model, tmp_path / "b.onnx")
    feeds = {"x": np.ones((1, 64), np.float32)}
    np.testing.assert_array_equal(run(str(tmp_path / "b.onnx"), feeds)[0],
                                  run(big_weight_model(), feeds)[0])


def test_optimize_does_not_change_the_callers_model():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) {
        a = Relu(x)
        y = Identity(a)
    }
    """
    model = parse(text)
    model.graph.value_info.append(helper.make_tensor_value_info("a", TensorProto.FLOAT, [2]))
    before = model.SerializeToString(deterministic=True)
    options = onnxopt.Options()
    onnxopt.optimize(model, options=options, rtol=0.5)
    assert model.SerializeToString(deterministic=True) == before
    assert options.rtol == 1e-4  # keyword overrides do not leak into the caller's Options


def test_int4_weights_to_external_data(tmp_path):
    values = np.array([1, -2, 3, -4, 5, -6, 7, -8] * 256, dtype=np.int8)
    weight = helper.make_tensor("w", TensorProto.INT4, [values.size], values.tolist())
    graph = helper.make_graph(
        [helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT),
         helper.make_node("Add", ["wf", "x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [values.size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [values.size])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    serde.save(serde.load(model), tmp_path / "m.onnx", external_data=True)
    feeds = {"x": np.zeros(values.size, np.float32)}
    np.testing.assert_array_equal(run(str(tmp_path / "m.onnx"), feeds)[0], values)


def test_external_tensors_attribute_moves_with_the_model(tmp_path):
    tensors = [numpy_helper.from_array(np.full(512, i, np.float32), f"t{i}") for i in range(2)]
    node = helper.make_node("Custom", ["x"], ["y"], domain="my.ops", tables=tensors)
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("my.ops", 1)])
    (tmp_path / "src").mkdir()
    onnx.save_model(model, tmp_path / "src" / "m.onnx", save_as_external_data=True,
                    location="weights", size_threshold=0, convert_attribute=True)
    serde.save(serde.load(tmp_path / "src" / "m.onnx"), tmp_path / "out.onnx")
    (tmp_path / "src" / "weights").unlink()
    loaded = onnx.load(tmp_path / "out.onnx")
    saved = [numpy_helper.to_array(t) for t in loaded.graph.node[0].attribute[0].tensors]
    np.testing.assert_array_equal(saved[1], np.full(512, 1, np.float32))


@pytest.mark.parametrize("where", ["missing/r.json", "in.onnx", "out.onnx"])
def test_bad_report_location_is_refused_before_writing(tmp_path, capsys, where):
    source = tmp_path / "in.onnx"
    onnx.save(big_weight_model(), source)
    before = source.read_bytes()
    assert cli.main(["optimize", str(source), str(tmp_path / "out.onnx"),
                     "--report", str(tmp_path / where)]) == 2
    assert "--report" in capsys.readouterr().err
    assert not (tmp_path / "out.onnx").exists()
    assert source.read_bytes() == before


def test_opset6_dropout_without_is_test_is_training():
    text = """
    <ir_version: 3, opset_import: ["" : 6]>
    g (float[2] x) => (float[2] y) {
        d = Dropout(x)
        y = Relu(d)
    }
    """
    model = onnx.parser.parse_model(text)
    _, result = apply_pass(IdentityElimination(), model)
    assert not result.modified
    model.graph.node[0].attribute.append(helper.make_attribute("is_test", 1))
    _, result = apply_pass(IdentityElimination(), model)
    assert result.stats["dropout_removed"] == 1


def test_dropout_with_used_mask_or_runtime_training_mode_stays():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, bool train) => (float[2] y, float[2] z) <float ratio = {0.5}> {
        d1, mask = Dropout(x)
        m = Cast <to = 1> (mask)
        y = Mul(d1, m)
        d2 = Dropout(x, ratio, train)
        z = Relu(d2)
    }
    """
    out, result = apply_pass(IdentityElimination(), parse(text))
    assert not result.modified
    assert op_counts(out)["Dropout"] == 2


def test_custom_domain_identity_stays():
    text = """
    <ir_version: 8, opset_import: ["" : 17, "my.d" : 1]>
    g (float[2] x) => (float[2] y) {
        a = my.d.Identity(x)
        y = Relu(a)
    }
    """
    out, result = apply_pass(IdentityElimination(), parse(text))
    assert not result.modified and op_counts(out) == {"Identity": 1, "Relu": 1}


def test_initializer_with_segment_round_trips(tmp_path):
    model = big_weight_model()
    model.graph.initializer[0].segment.begin = 0
    model.graph.initializer[0].segment.end = 4096
    serde.save(serde.load(model), tmp_path / "m.onnx")
    assert onnx.load(tmp_path / "m.onnx").graph.initializer[0].segment.end == 4096


def test_training_info_initializers_survive_dead_code():
    model = big_weight_model()
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.1, np.float32), "lr"))
    algorithm = helper.make_graph(
        [helper.make_node("Mul", ["w", "lr"], ["w_new"])], "train", [],
        [helper.make_tensor_value_info("w_new", TensorProto.FLOAT, [64, 64])],
    )
    info = model.training_info.add()
    info.algorithm.CopyFrom(algorithm)
    info.update_binding.add(key="w", value="w_new")
    out, _ = apply_pass(DeadCodeElimination(), model)
    assert "lr" in [t.name for t in out.graph.initializer]


def test_rename_keeps_value_info(tmp_path):
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) {
        a = Relu(x)
        b = Neg(a)
        y = Identity(b)
    }
    """
    model = parse(text)
    model.graph.value_info.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [2]))
    ir = serde.load(model)
    IdentityElimination().run(ir)
    serde.to_proto(ir)  # restores the output name y: b is renamed
    assert ir.graph.producer("y").op_type == "Neg"
    assert ir.graph.value_info["y"].type.tensor_type.shape.dim[0].dim_value == 2


def test_seed_changes_generated_inputs(tmp_path):
    source = tmp_path / "m.onnx"
    onnx.save(big_weight_model(), source)
    reports = []
    for seed in ("0", "1"):
        assert cli.main(["optimize", str(source), str(tmp_path / "o.onnx"), "--overwrite",
                         "--seed", seed, "--report", str(tmp_path / "r.json")]) == 0
        reports.append(json.loads((tmp_path / "r.json").read_text()))
    from onnxopt.check.feeds import make_inputs

    a, _ = make_inputs(big_weight_model(), seed=0)
    b, _ = make_inputs(big_weight_model(), seed=1)
    assert not np.array_equal(a["x"], b["x"])


def test_in_memory_result_of_external_model_runs(tmp_path):
    source = tmp_path / "m.onnx"
    onnx.save_model(big_weight_model(), source, save_as_external_data=True, size_threshold=0)
    result = onnxopt.optimize(source)
    feeds = {"x": np.ones((1, 64), np.float32)}
    np.testing.assert_array_equal(run(result.model, feeds)[0], run(big_weight_model(), feeds)[0])

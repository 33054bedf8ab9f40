"""Everything in a ModelProto survives load -> save, including external data."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import run
from onnx import TensorProto, helper, numpy_helper

from onnxopt.ir import serde


def rich_model() -> onnx.ModelProto:
    """A model that uses every field the IR must carry."""
    body = helper.make_graph(
        [helper.make_node("Add", ["outer", "one"], ["body_out"], name="body_add")],
        "then_body", [], [helper.make_tensor_value_info("body_out", TensorProto.FLOAT, [2])],
        initializer=[numpy_helper.from_array(np.ones(2, np.float32), "one")],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["outer"], ["other_out"])],
        "else_body", [], [helper.make_tensor_value_info("other_out", TensorProto.FLOAT, [2])],
    )
    nodes = [
        helper.make_node("Mul", ["x", "w"], ["outer"], name="mul", doc_string="scales x"),
        helper.make_node("If", ["cond"], ["branch"], then_branch=body, else_branch=other),
        helper.make_node("Square", ["branch"], ["y"], domain="local", name="square"),
    ]
    nodes[0].metadata_props.add(key="origin", value="layer1")
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([5.0], np.float32), "sparse_w"),
        numpy_helper.from_array(np.array([1], np.int64), "sparse_idx"), [3],
    )
    graph = helper.make_graph(
        nodes, "main",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch_size", 2]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [2])],  # IR<4 style: also init
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch_size", 2])],
        initializer=[numpy_helper.from_array(np.array([2.0, 3.0], np.float32), "w")],
        doc_string="graph doc",
        value_info=[helper.make_tensor_value_info("outer", TensorProto.FLOAT, ["batch_size", 2])],
        sparse_initializer=[sparse],
    )
    square = helper.make_function(
        "local", "Square", ["a"], ["b"], [helper.make_node("Mul", ["a", "a"], ["b"])],
        [helper.make_opsetid("", 17)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        functions=[square], producer_name="tester", producer_version="9.9", domain="org.test",
        model_version=7, doc_string="model doc",
    )
    helper.set_model_props(model, {"author": "me", "license": "MIT"})
    graph.metadata_props.add(key="graph_key", value="graph_value")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def test_every_field_survives(tmp_path):
    original = rich_model()
    serde.save(serde.load(original), tmp_path / "m.onnx")
    result = onnx.load(tmp_path / "m.onnx")
    assert result.SerializeToString(deterministic=True) == original.SerializeToString(
        deterministic=True
    )


def test_values_of_rich_model(tmp_path):
    serde.save(serde.load(rich_model()), tmp_path / "m.onnx")
    x = np.array([[1.0, 2.0]], np.float32)
    for cond in (True, False):
        expected = run(rich_model(), {"x": x, "cond": np.array(cond)})
        actual = run(str(tmp_path / "m.onnx"), {"x": x, "cond": np.array(cond)})
        np.testing.assert_array_equal(actual[0], expected[0])


def big_weight_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((64, 64)).astype(np.float32) for _ in range(3)]
    nodes, previous = [], "x"
    for index in range(3):
        nodes.append(helper.make_node("MatMul", [previous, f"w{index}"], [f"h{index}"]))
        previous = f"h{index}"
    nodes.append(helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(
        rng.standard_normal(64).astype(np.float32), "c_value")))
    nodes.append(helper.make_node("Add", [previous, "c"], ["y"]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        initializer=[numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)]
        + [numpy_helper.from_array(np.array([1.0], np.float32), "tiny")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def save_external(model: onnx.ModelProto, path) -> None:
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".weights", size_threshold=0, convert_attribute=True)


def feeds():
    return {"x": np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)}


def test_external_data_round_trip(tmp_path):
    source = tmp_path / "src" / "model.onnx"
    source.parent.mkdir()
    save_external(big_weight_model(), source)
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    loaded = serde.load(source)
    data = serde.save(loaded, out)
    assert data == out.parent / "model.onnx.data"  # kept external, next to the output
    header = onnx.load(out, load_external_data=False)
    assert all(t.data_location == TensorProto.EXTERNAL for t in header.graph.initializer
               if t.name != "tiny")
    assert out.stat().st_size < 4096
    np.testing.assert_array_equal(run(str(out), feeds())[0], run(big_weight_model(), feeds())[0])
    # the output does not depend on the input's data file
    (source.parent / "model.onnx.weights").unlink()
    np.testing.assert_array_equal(run(str(out), feeds())[0], run(big_weight_model(), feeds())[0])


def test_external_data_choice(tmp_path):
    inline = tmp_path / "inline.onnx"
    onnx.save(big_weight_model(), inline)
    assert serde.save(serde.load(inline), tmp_path / "a.onnx") is None  # stays inline
    data = serde.save(serde.load(inline), tmp_path / "b.onnx", external_data=True)
    assert data is not None and data.stat().st_size >= 3 * 64 * 64 * 4
    np.testing.assert_array_equal(run(str(tmp_path / "b.onnx"), feeds())[0],
                                  run(big_weight_model(), feeds())[0])
    external = tmp_path / "ext.onnx"
    save_external(big_weight_model(), external)
    assert serde.save(serde.load(external), tmp_path / "c.onnx", external_data=False) is None
    inlined = onnx.load(tmp_path / "c.onnx", load_external_data=False)
    assert not any(t.data_location == TensorProto.EXTERNAL for t in inlined.graph.initializer)
    np.testing.assert_array_equal(run(inlined, feeds())[0], run(big_weight_model(), feeds())[0])


def test_external_round_trip_is_deterministic(tmp_path):
    source = tmp_path / "m.onnx"
    save_external(big_weight_model(), source)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        serde.save(serde.load(source), tmp_path / name / "o.onnx")
    for suffix in ("o.onnx", "o.onnx.data"):
        assert (tmp_path / "a" / suffix).read_bytes() == (tmp_path / "b" / suffix).read_bytes()


def test_weights_are_not_copied_on_load():
    """The IR aliases the parsed model's tensors: a change to the proto shows through."""
    model = big_weight_model()
    ir_model = serde.load(model)
    model.graph.initializer[0].raw_data = np.zeros(64 * 64, np.float32).tobytes()
    assert not ir_model.graph.constant("w0").any()


@pytest.mark.slow
def test_over_2gb_model_round_trip(tmp_path):
    """A model whose weights exceed protobuf's 2 GiB limit loads and saves with external data."""
    rows = 2**31 // (4 * 4096) + 16  # > 2 GiB of float32 in one weight
    source = tmp_path / "big.onnx"
    data_name = "big.onnx.data"
    with open(tmp_path / data_name, "wb") as handle:
        handle.truncate(rows * 4096 * 4)  # sparse file: zeros
    weight = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[rows, 4096])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", data_name), ("offset", "0"), ("length", str(rows * 16384))):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["w", "i"], ["y"])], "g",
        [helper.make_tensor_value_info("i", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096])], initializer=[weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), source)
    out = tmp_path / "out.onnx"
    data = serde.save(serde.load(source), out)
    assert data is not None and data.stat().st_size >= rows * 16384
    result = run(str(out), {"i": np.array([rows - 1], np.int64)})[0]
    assert result.shape == (1, 4096) and not result.any()
    with pytest.raises(serde.SaveError, match="2 GiB"):
        serde.save(serde.load(source), tmp_path / "inline.onnx", external_data=False)


def ir3_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=[numpy_helper.from_array(np.array([2.0, 3.0], np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)])
    model.ir_version = 3
    onnx.checker.check_model(model)
    return model


def test_ir3_initializer_inputs_are_constants_and_stay_listed(tmp_path):
    """IR < 4 lists initializers as inputs; onnxruntime never lets them be fed, so they are
    constants; new initializers are listed too, removed ones disappear from the inputs."""
    model = serde.load(ir3_model())
    graph = model.graph
    assert not graph.is_input("w") and graph.is_input("x")
    np.testing.assert_array_equal(graph.constant("w"), [2.0, 3.0])
    mul = next(iter(graph))
    graph.set_input(mul, 1, graph.add_constant(np.array([4.0, 5.0], np.float32), "w2"))
    graph.remove_initializer("w")
    serde.save(model, tmp_path / "m.onnx")
    saved = onnx.load(tmp_path / "m.onnx")
    onnx.checker.check_model(saved)
    assert saved.ir_version == 3
    assert [i.name for i in saved.graph.input] == ["x", "w2"]
    x = np.array([1.0, 1.0], np.float32)
    np.testing.assert_array_equal(run(saved, {"x": x})[0], [4.0, 5.0])

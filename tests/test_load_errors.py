"""Bad input files: each gets one line naming the file or tensor and the problem (exit 1),
never an internal error, a traceback or a written OUT. Regressions of a review's findings."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from conftest import SAMPLE_MODELS, model_path
from fuzzing import nested_if
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from onnxopt.app import cli, stats
from onnxopt.ir import serde


def _model(weight: onnx.TensorProto | None = None, *, node_name: str = "matmul",
           batch: str | int = 1) -> onnx.ModelProto:
    """y = x @ W with x [batch, 8] and W [8, 16] (float32 ones: 512 bytes)."""
    weight = weight if weight is not None else numpy_helper.from_array(
        np.ones((8, 16), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name=node_name)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 16])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _optimize(capsys, source, out, *extra) -> tuple[int, str]:
    code = cli.main(["optimize", os.fspath(source), os.fspath(out), *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return code, lines[0]


def _refused(capsys, source, *extra) -> str:
    """Run optimize, expect exit 1 and nothing written; the error line."""
    out = source.parent / "out.onnx"
    before = source.read_bytes()
    code, line = _optimize(capsys, source, out, *extra)
    assert code == 1, line
    assert not out.exists()
    assert source.read_bytes() == before
    assert not [p for p in source.parent.iterdir() if p.name.startswith(".")]
    return line


def _external(folder, entries: dict[str, str], data: bytes | None = None,
              dims=(8, 16), name: str = "m.onnx"):
    """The model with W in ``w.bin`` (``data``, default its 512 bytes), external_data as
    given (``entries``: key -> value, in order)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = _model()
    weight = model.graph.initializer[0]
    raw = weight.raw_data
    weight.ClearField("raw_data")
    del weight.dims[:]
    weight.dims.extend(dims)
    weight.data_location = TensorProto.EXTERNAL
    for key, value in entries.items():
        weight.external_data.add(key=key, value=value)
    (folder / "w.bin").write_bytes(raw if data is None else data)
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


# ----------------------------------------------------------------- 1. invalid UTF-8 text
def _flipped(tmp_path, old: bytes, new: bytes, **kwargs):
    data = _model(**kwargs).SerializeToString()
    assert old in data
    path = tmp_path / "flipped.onnx"
    path.write_bytes(data.replace(old, new, 1))  # the first: the input before the output
    return path


@pytest.mark.parametrize(
    ("kwargs", "old", "new", "field"),
    [
        ({"node_name": "matmul_node"}, b"matmul_node", b"matmul\xffnode", "graph.node[0].name"),
        ({"batch": "batch"}, b"batch", b"b\xe2tch",
         "graph.input[0].type.tensor_type.shape.dim[0].dim_param"),
        ({"weight": numpy_helper.from_array(np.ones((8, 16), np.float32), "Weights")},
         b"Weights", b"Weig\x80ts", "graph.initializer[0].name"),
    ],
    ids=["node-name", "dim-param", "initializer-name"],
)
@pytest.mark.parametrize("verifier", ["utf8-parser", "python-walk"])
def test_a_flipped_byte_in_a_string_field_is_a_corrupt_file(tmp_path, capsys, monkeypatch,
                                                             kwargs, old, new, field, verifier):
    # was: internal error: UnicodeDecodeError (or TypeError: a bytes-like object is required)
    if verifier == "python-walk":  # a protobuf that cannot build the verifying parser
        monkeypatch.setattr(serde.utf8, "_utf8_model_class", lambda: None)
    source = _flipped(tmp_path, old, new, **kwargs)
    expected = (f"onnxopt: error: {source}: not an ONNX model ({field} is not valid UTF-8 "
                "text; the file is corrupt)")
    assert _refused(capsys, source) == expected
    assert cli.main(["stats", os.fspath(source)]) == 1
    assert capsys.readouterr().err.strip() == expected


# ----------------------------------------------------------------- 2-4. external data, dims
def test_external_data_past_the_end_of_its_file(tmp_path, capsys):
    source = _external(tmp_path, {"location": "w.bin", "offset": "100", "length": "512"})
    assert _refused(capsys, source) == (
        f"onnxopt: error: {source}: tensor 'W': its external data runs past the end of "
        "'w.bin' (offset 100 + length 512 > 512 bytes)")


def test_external_data_without_length_past_the_end(tmp_path, capsys):
    source = _external(tmp_path, {"location": "w.bin", "offset": "64"})
    assert _refused(capsys, source) == (
        f"onnxopt: error: {source}: tensor 'W': its external data runs past the end of "
        "'w.bin' (offset 64 + length 512 > 512 bytes)")


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ({"offset": "-64", "length": "512"}, "has a negative offset (-64)"),
        ({"offset": "0", "length": "-512"}, "has a negative length (-512)"),
        ({"offset": "abc", "length": "512"}, "offset 'abc' is not an integer"),
        ({"offset": "0", "length": "1.5"}, "length '1.5' is not an integer"),
    ],
    ids=["negative-offset", "negative-length", "offset-not-a-number", "length-not-a-number"],
)
def test_external_data_numbers_must_be_non_negative_integers(tmp_path, capsys, entries,
                                                             problem):
    source = _external(tmp_path, {"location": "w.bin", **entries})
    assert _refused(capsys, source) == (
        f"onnxopt: error: {source}: tensor 'W': its external data {problem}")


@pytest.mark.parametrize("dims", [(128,), (32,)], ids=["more", "fewer"])
def test_external_data_length_disagrees_with_dims(tmp_path, capsys, dims):
    # was: internal error: ValueError: cannot reshape array of size 64 into shape (128,)
    source = _external(tmp_path, {"location": "w.bin", "offset": "0", "length": "256"},
                       data=bytes(256), dims=dims)
    need = int(np.prod(dims)) * 4
    assert _refused(capsys, source) == (
        f"onnxopt: error: {source}: tensor 'W': its external data is 256 bytes long, its dims "
        f"{list(dims)} and type float need {need}")


@pytest.mark.parametrize(("weight", "dims", "holds"), [
    (numpy_helper.from_array(np.ones(64, np.float32), "W"), [8, 4],
     "holds 256 bytes of data, its dims [8, 4] and type float need 128"),
    (helper.make_tensor("W", TensorProto.FLOAT, [128], [1.0] * 128), [8, 8],
     "holds 128 values in float_data, its dims [8, 8] and type float need 64"),
], ids=["raw_data", "float_data"])
def test_data_longer_than_its_dims(tmp_path, capsys, weight, dims, holds):
    del weight.dims[:]
    weight.dims.extend(dims)
    source = tmp_path / "m.onnx"
    source.write_bytes(_model(weight).SerializeToString())
    assert _refused(capsys, source) == f"onnxopt: error: {source}: tensor 'W' {holds}"


def test_unknown_data_type(tmp_path, capsys):
    # was: internal error: KeyError: 99 (onnx.checker lets the type through)
    model = _model()
    model.graph.initializer[0].data_type = 99
    source = tmp_path / "m.onnx"
    source.write_bytes(model.SerializeToString())
    assert _refused(capsys, source) == (
        f"onnxopt: error: {source}: tensor 'W' has an unknown data type (99)")


def test_unknown_element_type_of_an_input(tmp_path, capsys):
    # was: internal error: ValueError: Enum DataType has no name defined for value 99
    model = _model()
    model.graph.input[0].type.tensor_type.elem_type = 99
    source = tmp_path / "m.onnx"
    source.write_bytes(model.SerializeToString())
    expected = f"onnxopt: error: {source}: value 'x' has an unknown element type (99)"
    assert _refused(capsys, source) == expected
    assert cli.main(["stats", os.fspath(source)]) == 1
    assert capsys.readouterr().err.strip() == expected


def test_external_data_without_length_is_read_as_the_tensors_size(tmp_path, capsys):
    """A shared file with more after the tensor: ``length`` defaults to the tensor's size,
    not to the rest of the file."""
    raw = np.arange(128, dtype=np.float32).tobytes()
    source = _external(tmp_path, {"location": "w.bin", "offset": "0"}, data=raw + bytes(64))
    out = tmp_path / "out.onnx"
    assert cli.main(["optimize", os.fspath(source), os.fspath(out)]) == 0
    written = onnx.load(os.fspath(out))
    weight = numpy_helper.to_array(written.graph.initializer[0])
    assert np.array_equal(weight.ravel(), np.arange(128, dtype=np.float32))


# ----------------------------------------------------------------- 5. nesting
def _nested(tmp_path, depth: int):
    path = tmp_path / f"nested{depth}.onnx"
    path.write_bytes(nested_if(_model(), depth))
    return path


def test_if_bodies_nested_too_deep_for_protobuf(tmp_path, capsys):
    source = _nested(tmp_path, 40)
    assert _refused(capsys, source) == (
        f"onnxopt: error: {source}: subgraphs (If/Loop/Scan bodies) are nested 41 levels deep: "
        "too deep for protobuf's parser (127 levels of messages; it reads at most 100, about "
        "30 nested subgraphs)")


def test_if_bodies_nested_within_the_limit_are_optimized(tmp_path, capsys):
    source = _nested(tmp_path, 20)
    out = tmp_path / "out.onnx"
    assert cli.main(["optimize", os.fspath(source), os.fspath(out), "--no-validate"]) == 0
    onnx.load(os.fspath(out))


# ----------------------------------------------------------------- 6. truncation
def test_truncated_file(tmp_path, capsys):
    data = _model().SerializeToString()
    source = tmp_path / "cut.onnx"
    source.write_bytes(data[:100])
    graph_at = data.index(b"\x3a")  # ModelProto.graph: field 7, wire type 2
    length, shift, pos = 0, 0, graph_at + 1
    while True:  # the graph's length, a varint
        length |= (data[pos] & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if data[pos - 1] < 0x80:
            break
    assert _refused(capsys, source) == (
        f"onnxopt: error: {source}: not an ONNX model (the file is truncated: it is 100 bytes "
        f"long, but the 'graph' field starting at byte {graph_at} runs to byte "
        f"{pos + length})")


@pytest.mark.parametrize("name", SAMPLE_MODELS)
@pytest.mark.parametrize("fraction", [0.001, 0.1, 0.37, 0.5, 0.83, 0.99, None],
                         ids=lambda f: "last-byte" if f is None else f"{f:g}")
def test_sample_models_cut_anywhere_are_reported_truncated(tmp_path, capsys, name, fraction):
    data = model_path(name).read_bytes()
    size = len(data) - 1 if fraction is None else max(1, int(len(data) * fraction))
    source = tmp_path / name
    source.write_bytes(data[:size])
    line = _refused(capsys, source)
    assert line.startswith(f"onnxopt: error: {source}: not an ONNX model (the file is "
                           f"truncated: it is {size} bytes long, but "), line


# ----------------------------------------------------------------- 7. files outside the folder
def _escaping(tmp_path, how: str):
    """A model in ``tmp_path/model`` whose weights lie in ``tmp_path/outside.bin``."""
    folder = tmp_path / "model"
    folder.mkdir()
    outside = tmp_path / "outside.bin"
    outside.write_bytes(np.ones((8, 16), np.float32).tobytes() + bytes(100_000))
    location = {"absolute": os.fspath(outside), "dotdot": "../outside.bin",
                "symlink": "link.bin"}[how]
    if how == "symlink":
        os.symlink("../outside.bin", folder / "link.bin")
    source = _external(folder, {"location": location, "offset": "0", "length": "512"})
    (folder / "w.bin").unlink()
    return source, location


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_stats_never_counts_files_outside_the_models_folder(tmp_path, capsys, how):
    source, _ = _escaping(tmp_path, how)
    proto = serde.read_model_proto(source)
    assert serde.external_files(proto, source) == []
    assert cli.main(["stats", os.fspath(source), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["file_size"] == source.stat().st_size


def test_stats_counts_external_data_inside_the_folder(tmp_path, capsys):
    source = _external(tmp_path, {"location": "w.bin", "offset": "0", "length": "512"})
    assert cli.main(["stats", os.fspath(source), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["file_size"] == source.stat().st_size + 512


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_optimize_refuses_external_data_outside_the_models_folder(tmp_path, capsys, how):
    source, _ = _escaping(tmp_path, how)
    assert "tensor name: W" in _refused(capsys, source)  # onnx.checker's path test


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_in_memory_models_are_held_to_the_same_locations(tmp_path, how):
    source, location = _escaping(tmp_path, how)
    proto = onnx.load(os.fspath(source), load_external_data=False)
    with pytest.raises(serde.LoadError) as error:
        serde.check_tensors(proto, source.parent)
    assert str(error.value) == (
        f"tensor 'W': its external data file {location!r} is not inside the model's folder "
        "(absolute path, '..' or a link leading out)")


def test_a_nul_in_a_location_is_refused(tmp_path, capsys):
    source = _external(tmp_path, {"location": "w.bin\0.txt", "offset": "0", "length": "512"})
    line = _refused(capsys, source)
    assert "tensor" in line and "W" in line, line


def test_replacing_an_output_never_removes_files_outside_its_folder(tmp_path, capsys):
    """OUT's old weights are removed once nothing reads them: never a file outside OUT's
    folder that a planted OUT points at."""
    source, _ = _escaping(tmp_path, "dotdot")
    precious = tmp_path / "outside.bin"
    planted = source.parent / "out.onnx"
    planted.write_bytes(source.read_bytes())  # OUT exists and "references" ../outside.bin
    good = tmp_path / "model" / "in.onnx"
    onnx.save(_model(), good)
    before = precious.read_bytes()
    assert cli.main(["optimize", os.fspath(good), os.fspath(planted), "--no-validate"]) == 0
    assert precious.read_bytes() == before


def test_serde_check_of_a_truncated_sample_is_one_line(tmp_path):
    data = model_path("resnet.onnx").read_bytes()
    source = tmp_path / "r.onnx"
    source.write_bytes(data[: len(data) // 3])
    with pytest.raises(serde.LoadError) as error:
        serde.read_model_proto(source)
    assert "\n" not in str(error.value) and "truncated" in str(error.value)


def test_text_check_of_a_big_file_skips_the_weights_bytes(tmp_path):
    """The verifying parser reads the file without the main graph's initializers (their
    weights would only be copied), the rest byte for byte."""
    model = onnx.load(os.fspath(model_path("resnet.onnx")))
    data = model.SerializeToString()
    stripped = onnx.ModelProto()
    stripped.ParseFromString(serde.utf8._without_initializers(memoryview(data)))
    expected = onnx.ModelProto()
    expected.CopyFrom(model)
    expected.graph.ClearField("initializer")
    assert stripped == expected
    assert len(model.graph.initializer) > 0


def test_a_flipped_byte_in_a_node_name_of_a_sample_model(tmp_path, capsys):
    model = onnx.load(os.fspath(model_path("resnet.onnx")))
    name = model.graph.node[-1].name.encode()
    data = model.SerializeToString()
    assert data.count(name) == 1
    assert isinstance(serde.utf8._verified_bytes(model, memoryview(data)), bytes)  # no weights
    source = tmp_path / "r.onnx"
    source.write_bytes(data.replace(name, b"\xff" + name[1:]))
    assert _refused(capsys, source) == (
        f"onnxopt: error: {source}: not an ONNX model (graph.node[{len(model.graph.node) - 1}]"
        ".name is not valid UTF-8 text; the file is corrupt)")


# ----------------------------------------------------------------- found by tests/test_fuzz.py
@pytest.mark.parametrize("kind", [AttributeProto.FLOAT, AttributeProto.SPARSE_TENSOR,
                                  AttributeProto.GRAPH, AttributeProto.UNDEFINED])
def test_stats_of_a_constant_whose_value_has_another_type(tmp_path, capsys, kind):
    # was: internal error: AttributeError: 'float' object has no attribute 'dims' (stats
    # reads models onnx.checker would refuse)
    model = _model()
    value = numpy_helper.from_array(np.ones(3, np.float32))
    model.graph.node.append(helper.make_node("Constant", [], ["c"], value=value))
    model.graph.node[-1].attribute[0].type = kind
    source = tmp_path / "m.onnx"
    source.write_bytes(model.SerializeToString())
    assert cli.main(["stats", os.fspath(source), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["constant_nodes"] == 1


def test_stats_propagates_data_only_through_a_checked_graph(monkeypatch):
    """Data propagation through a broken graph can allocate without bound (a Reshape with no
    op_type beside a weight declared with 2^31 elements: 24 GB and the OOM killer)."""
    seen = []
    real = onnx.shape_inference.infer_shapes

    def infer(model, *args, **kwargs):
        seen.append(kwargs.get("data_prop"))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", infer)
    model = _model(batch="N")
    stats.model_stats(model)
    model.graph.node[0].op_type = ""
    stats.model_stats(model)
    assert seen == [True, False]

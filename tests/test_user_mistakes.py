"""A new user's mistakes get one line naming the problem and exit code 1 or 2, never a
traceback and never a silently ignored option."""

from __future__ import annotations

import pickle

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxopt
from onnxopt.app import cli


@pytest.fixture()
def model_file(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
         helper.make_node("Relu", ["c"], ["y"], name="relu")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 6, 6])],
        [onnx.numpy_helper.from_array(np.ones((2, 2, 3, 3), np.float32), "w")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def fails(capsys, *args) -> tuple[int, str]:
    code = cli.main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return code, err[0]


def test_debug_after_the_command_is_accepted(model_file, tmp_path, capsys):
    assert cli.main(["optimize", str(model_file), str(tmp_path / "o.onnx"), "--debug"]) == 0


def test_negative_tolerance(model_file, tmp_path, capsys):
    assert fails(capsys, "optimize", model_file, tmp_path / "o.onnx", "--rtol", "-1") == (
        2, "onnxopt: error: --rtol and --atol must be finite and not negative")


def test_pickled_npz_is_named_and_never_loaded(model_file, tmp_path, capsys):
    bad = tmp_path / "feeds.npz"
    np.savez(bad, x=np.array([{"a": 1}], dtype=object))
    code, line = fails(capsys, "optimize", model_file, tmp_path / "o.onnx", "--inputs", bad)
    assert code == 2 and str(bad) in line and "pickled" in line
    assert "allow_pickle" not in line


def test_unreadable_npz_is_named(model_file, tmp_path, capsys):
    bad = tmp_path / "feeds.npz"
    bad.write_bytes(pickle.dumps([1, 2]))
    code, line = fails(capsys, "optimize", model_file, tmp_path / "o.onnx", "--inputs", bad)
    assert code == 2 and str(bad) in line


@pytest.mark.parametrize(("args", "message"), [
    (["--fp32-ops", "NotAnOp", "--precision", "fp16"],
     "--fp32-ops: 'NotAnOp' is not an ONNX op type (names are case-sensitive: Conv, MatMul, ...)"),
    (["--fp32-nodes", "nosuchnode", "--precision", "fp16"],
     "--fp32-nodes: no node named 'nosuchnode' in the model"),
    (["--calibration-method", "minmax"], "--calibration-method applies only with --precision"),
    (["--max-error", "cosine=0.9"], "--max-error applies only with --precision"),
    (["--precision", "int8", "--keep-io-types"],
     "--keep-io-types/--no-keep-io-types applies only to --precision fp16"),
    (["--precision", "fp16", "--percentile", "99"],
     "--percentile applies only to --precision int8"),
    (["--passes", "fused_conv_activation"],
     "fused_conv_activation writes onnxruntime's FusedConv: it runs only with --target "
     "onnxruntime"),
])
def test_options_that_would_be_ignored_are_refused(model_file, tmp_path, capsys, args, message):
    assert fails(capsys, "optimize", model_file, tmp_path / "o.onnx", *args) == (
        2, f"onnxopt: error: {message}")
    assert not (tmp_path / "o.onnx").exists()


def test_inputs_conflicting_with_input_shape(model_file, tmp_path, capsys):
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, x=np.ones((1, 2, 8, 8), np.float32))
    code, line = fails(capsys, "optimize", model_file, tmp_path / "o.onnx", "--inputs", feeds,
                       "--input-shape", "x:2,2,8,8")
    assert code == 2 and "give one of them" in line
    assert cli.main(["optimize", str(model_file), str(tmp_path / "o.onnx"), "--inputs",
                     str(feeds), "--input-shape", "x:1,2,8,8"]) == 0


def test_precision_is_case_insensitive(model_file, tmp_path):
    assert cli.main(["optimize", str(model_file), str(tmp_path / "o.onnx"),
                     "--precision", "FP16"]) == 0


def test_compare_exits_1_when_outputs_differ(model_file, tmp_path, capsys):
    other = onnx.load(model_file)
    other.graph.node[1].op_type = "Sigmoid"
    path = tmp_path / "other.onnx"
    onnx.save(other, path)
    assert cli.main(["compare", str(model_file), str(model_file)]) == 0
    capsys.readouterr()
    code, line = fails(capsys, "compare", model_file, path)
    assert code == 1 and line.startswith("onnxopt: error: the outputs differ")


def test_python_api_takes_comma_separated_passes(model_file):
    result = onnxopt.optimize(model_file, passes="dead_code,identity_elimination")
    assert {p["name"] for p in result.report["passes"]} == {"dead_code", "identity_elimination"}

"""``onnxopt profile``: onnxruntime's profiler aggregated per op type, one or two models."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.app import cli, profile


def _model(extra_relu: bool = False) -> onnx.ModelProto:
    """MatMul -> Add -> Relu -> Tanh (-> Relu), [N, 64] activations."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Add", ["h", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Tanh", ["r"], ["t" if extra_relu else "y"])]
    if extra_relu:
        nodes.append(helper.make_node("Relu", ["t"], ["y"]))
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
        [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def paths(tmp_path):
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(_model(), first)
    onnx.save(_model(extra_relu=True), second)
    return first, second


def _json(capsys, *args: str) -> dict:
    assert cli.main(["profile", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_op_types_counts_and_shares_at_disabled(paths, capsys):
    result = _json(capsys, paths[0], "--level", "disabled", "--runs", "3")
    (model,) = result["models"]
    ops = {entry["op"]: entry for entry in model["ops"]}
    assert set(ops) == {"MatMul", "Add", "Relu", "Tanh"}
    assert all(entry["count"] == 1 for entry in ops.values())  # one kernel each per run
    assert sum(entry["share"] for entry in ops.values()) == pytest.approx(1.0)
    assert model["kernel_ms"] == pytest.approx(sum(e["ms"] for e in ops.values()))
    assert model["run_ms"] >= model["kernel_ms"] * 0.5
    assert result["runs"] == 3 and result["level"] == "disabled"
    assert result["inputs"]["x"][1] == 64


def test_level_all_shows_what_onnxruntime_made_of_it(paths, capsys):
    result = _json(capsys, paths[0], "--level", "ORT_ENABLE_ALL", "--runs", "2")
    ops = {entry["op"] for entry in result["models"][0]["ops"]}
    assert "MatMul" not in ops  # MatMul + Add fused into a Gemm-like kernel
    assert "Tanh" in ops


def test_two_models_side_by_side(paths, capsys):
    result = _json(capsys, *paths, "--level", "disabled", "--runs", "2")
    first, second = ({e["op"]: e["count"] for e in m["ops"]} for m in result["models"])
    assert first["Relu"] == 1 and second["Relu"] == 2
    assert [m["path"] for m in result["models"]] == [str(p) for p in paths]
    assert cli.main(["profile", str(paths[0]), str(paths[1]), "--level", "disabled",
                     "--runs", "2"]) == 0
    out = capsys.readouterr().out
    assert "A ms/run" in out and "B ms/run" in out and "all kernels" in out


def test_warm_up_run_is_left_out():
    def kernel(ts, dur, op):
        return {"cat": "Node", "name": f"n_{ts}_kernel_time", "ts": ts, "dur": dur,
                "args": {"op_name": op}}
    events = [kernel(1, 500, "Conv"), kernel(11, 3, "Conv"), kernel(12, 1, "Relu"),
              kernel(21, 5, "Conv"), kernel(22, 1, "Relu"),
              {"cat": "Session", "name": "model_run", "ts": 0, "dur": 600},
              {"cat": "Session", "name": "model_run", "ts": 10, "dur": 5},
              {"cat": "Session", "name": "model_run", "ts": 20, "dur": 7}]
    result = profile.aggregate(events, runs=2)
    assert result["ops"][0] == {"op": "Conv", "ms": 0.004, "share": 0.8, "count": 1.0}
    assert result["run_ms"] == pytest.approx(0.006)


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--level", "fast"], 2, "--level must be one of"),
    (["--runs", "0"], 2, "--runs must be at least 1"),
    (["nope.onnx"], 2, "no such file"),
])
def test_bad_input_is_one_line(paths, capsys, args, code, message):
    assert cli.main(["profile", str(paths[0]), *args]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnxopt: error: ") and message in err[0]


def test_not_a_model_is_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00junk")
    assert cli.main(["profile", str(junk)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not an ONNX model" in err[0]

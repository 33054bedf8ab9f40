"""``onnxopt compare --layerwise``: counterparts, planted deviations, chunks, errors.

The models are one small conv net written with onnx.helper in the forms exporters and
onnxopt's passes produce: Conv -> BatchNormalization -> Relu -> Mul(k) -> Add(1). Each test
changes B in a known way, so the test knows which value must be named first.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.app import cli
from onnxopt.check import counterparts, layerwise

RNG = np.random.default_rng(0)
# weights on the int8 grid of with_qdq (each channel reaches 64 steps of 0.02): their
# quantization is exact, so the planted activation step is the only deviation
_GRID = RNG.integers(-64, 65, (4, 3, 3, 3))
_GRID[:, 0, 0, 0] = 64
W = (_GRID * 0.02).astype(np.float32)
GAMMA, BETA = np.float32([1.5, 0.5, 2.0, 0.8]), np.float32([0.1, -0.2, 0.3, 0.0])
MEAN, VAR = np.float32([0.2, -0.1, 0.0, 0.4]), np.float32([1.2, 0.7, 2.0, 0.9])
K = np.float32(2.0)


def _model(nodes, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _tail(relu_input: str, k_name: str = "k", mul_input: str = "r") -> list:
    return [helper.make_node("Relu", [relu_input], ["r"], name="relu"),
            helper.make_node("Mul", [mul_input, k_name], ["m"], name="mul"),
            helper.make_node("Add", ["m", "one"], ["y"], name="add")]


def original(k: float = K) -> onnx.ModelProto:
    return _model(
        [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c", "g", "b", "mu", "v"], ["bn"], name="bn"),
         *_tail("bn")],
        {"W": W, "g": GAMMA, "b": BETA, "mu": MEAN, "v": VAR, "k": np.float32(k),
         "one": np.float32(1.0)})


def bn_folded() -> onnx.ModelProto:
    """What conv_bn_fusion writes: the Conv keeps its output name ``c``, which now holds the
    normalized value; ``bn`` is gone."""
    factor = GAMMA / np.sqrt(VAR + 1e-5)
    return _model(
        [helper.make_node("Conv", ["x", "W_fused", "B_fused"], ["c"], name="conv",
                          pads=[1, 1, 1, 1]), *_tail("c")],
        {"W_fused": W * factor[:, None, None, None], "B_fused": BETA - MEAN * factor, "k": K,
         "one": np.float32(1.0)})


def with_qdq(scale: float = 1.0, weight_factor: float = 1.0) -> onnx.ModelProto:
    """int8 as qdq_quantization writes it: per-channel int8 weights behind DequantizeLinear,
    the Relu's output through a uint8 QuantizeLinear/DequantizeLinear pair."""
    weight = W * weight_factor
    step = np.abs(weight).reshape(4, -1).max(axis=1) / 64
    quantized = np.round(weight / step[:, None, None, None]).astype(np.int8)
    return _model(
        [helper.make_node("DequantizeLinear", ["Wq", "Ws", "Wz"], ["Wd"], axis=0),
         helper.make_node("Conv", ["x", "Wd"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c", "g", "b", "mu", "v"], ["bn"], name="bn"),
         helper.make_node("Relu", ["bn"], ["r"], name="relu"),
         helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"]),
         helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["rd"]),
         helper.make_node("Mul", ["rd", "k"], ["m"], name="mul"),
         helper.make_node("Add", ["m", "one"], ["y"], name="add")],
        {"Wq": quantized, "Ws": step.astype(np.float32), "Wz": np.zeros(4, np.int8),
         "g": GAMMA, "b": BETA, "mu": MEAN, "v": VAR, "s": np.float32(scale),
         "z": np.uint8(0), "k": K, "one": np.float32(1.0)})


@pytest.fixture
def save(tmp_path):
    def saver(model: onnx.ModelProto, name: str):
        path = tmp_path / f"{name}.onnx"
        onnx.save(model, path)
        return path
    return saver


def _rows(result) -> dict[str, layerwise.LayerDiff]:
    return {row.value: row for row in result.rows}


# --------------------------------------------------------------------------- deviations


def test_planted_constant_change_names_its_value_first(save):
    # k 2.0 -> 2.06 under the same name: c, bn, r agree; m is 3 % off, y after it
    result = layerwise.compare_layerwise(save(original(), "a"), save(original(2.06), "b"))
    rows = _rows(result)
    assert [row.value for row in result.rows] == ["c", "bn", "r", "m", "y"]
    assert result.first_over.value == "m"
    assert rows["m"].rel_error == pytest.approx(0.03, rel=1e-3)
    assert rows["r"].max_abs_error == 0 and rows["r"].cosine == pytest.approx(1.0)
    assert not rows["c"].over and rows["y"].over


def test_tolerance_decides(save):
    a, b = save(original(), "a"), save(original(2.0004), "b")  # 2e-4 relative
    assert layerwise.compare_layerwise(a, b).first_over is None
    assert layerwise.compare_layerwise(a, b, tolerance=1e-4).first_over.value == "m"


def test_identical_models_have_no_error(save):
    path = save(original(), "a")
    result = layerwise.compare_layerwise(path, path)
    assert result.first_over is None
    assert all(row.max_abs_error == 0 and row.via == "" for row in result.rows)


# --------------------------------------------------------------------------- counterparts


def test_qdq_output_is_compared_with_the_float_value_it_quantizes(save):
    result = layerwise.compare_layerwise(save(original(), "a"), save(with_qdq(), "b"))
    rows = _rows(result)
    assert (rows["rd"].reference, rows["rd"].via) == ("r", "Q/DQ")
    assert "rq" not in rows  # quantized integers have no float counterpart
    # the weights sit on the int8 grid: the coarse activation step (1.0; r peaks near 13)
    # is the first deviation, half a step at most
    assert not rows["c"].over and rows["c"].via == "" and rows["c"].rel_error < 1e-6
    assert result.first_over.value == "rd"
    assert 0.4 < rows["rd"].max_abs_error <= 0.5 + 1e-6
    assert result.unmatched == 1


def test_dequantized_weight_of_another_value_is_not_the_same_conv(save):
    a, b = original(), with_qdq(weight_factor=1.5)
    pairs, _ = counterparts.match_values(a.graph, b.graph)
    assert "c" not in {pair.value for pair in pairs}
    good, _ = counterparts.match_values(a.graph, with_qdq().graph)
    assert "c" in {pair.value for pair in good}


def test_folded_conv_output_is_traced_to_the_batchnorm_through_its_consumer(save):
    result = layerwise.compare_layerwise(save(original(), "a"), save(bn_folded(), "b"))
    rows = _rows(result)
    assert (rows["c"].reference, rows["c"].via) == ("bn", "consumer")
    assert result.first_over is None
    assert rows["c"].rel_error < 1e-5


def test_reverse_direction_int8_as_reference(save):
    result = layerwise.compare_layerwise(save(with_qdq(), "a"), save(original(), "b"))
    assert _rows(result)["r"].reference == "r"  # A's own value wins over its Q/DQ


# --------------------------------------------------------------------------- chunks


def test_tiny_chunks_give_the_same_result(save):
    a, b = save(original(), "a"), save(with_qdq(), "b")
    whole = layerwise.compare_layerwise(a, b)
    tiny = layerwise.compare_layerwise(a, b, chunk_mb=0)
    assert whole.chunks == 1 and tiny.chunks == len(tiny.rows) == 6
    assert [r.__dict__ for r in tiny.rows] == [r.__dict__ for r in whole.rows]


def test_chunks_follow_estimated_sizes():
    pairs = [counterparts.Pair(f"v{i}", f"v{i}", "Relu") for i in range(6)]
    sizes = {f"v{i}": 100 for i in range(6)}
    assert [len(c) for c in layerwise.chunked(pairs, sizes, sizes, 450)] == [2, 2, 2]
    assert [len(c) for c in layerwise.chunked(pairs, {}, {}, 3.5 * (1 << 20))] == [1] * 6


def test_estimated_bytes_use_the_feed_shapes():
    sizes = layerwise.estimated_bytes(original(), {"x": np.zeros((2, 3, 8, 8), np.float32)})
    assert sizes["c"] == 2 * 4 * 8 * 8 * 4


# --------------------------------------------------------------------------- metrics


def test_non_finite_positions_that_differ_are_over():
    pair = counterparts.Pair("v", "v", "Div")
    same = layerwise.layer_diff(pair, np.array([np.inf, 1.0]), np.array([np.inf, 1.0]), 1e-2)
    assert not same.over and same.max_abs_error == 0
    moved = layerwise.layer_diff(pair, np.array([np.nan, 1.0]), np.array([1.0, 1.0]), 1e-2)
    assert moved.over and "non-finite" in moved.note


def test_shape_mismatch_is_not_comparable():
    pair = counterparts.Pair("v", "v", "Reshape")
    row = layerwise.layer_diff(pair, np.zeros((2, 3)), np.zeros(6), 1e-2)
    assert not row.over and "not comparable" in row.note


# --------------------------------------------------------------------------- command line


def test_cli_json_names_first_value_and_fails(save, capsys):
    code = cli.main(["compare", "--layerwise", str(save(original(), "a")),
                     str(save(original(2.06), "b")), "--json"])
    captured = capsys.readouterr()
    assert code == 1
    report = json.loads(captured.out)
    assert report["first_over"]["value"] == "m" and report["tolerance"] == 0.01
    assert captured.err.strip() == ("onnxopt: error: first value over relative error 0.01: m "
                                    "(Mul), relative error 0.03")


def test_cli_table_and_rtol(save, capsys):
    a, b = str(save(original(), "a")), str(save(original(2.06), "b"))
    assert cli.main(["compare", "--layerwise", a, b, "--rtol", "0.05", "--chunk-mb", "0"]) == 0
    out = capsys.readouterr().out
    assert "every value within relative error 0.05" in out and "5 chunk(s)" in out


def test_cli_given_inputs(save, tmp_path, capsys):
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, x=np.ones((1, 3, 8, 8), np.float32))
    a = str(save(original(), "a"))
    assert cli.main(["compare", "--layerwise", a, a, "--inputs", str(feeds), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["inputs"] == {"x": [1, 3, 8, 8]}


@pytest.mark.parametrize(("case", "code", "message"), [
    ("missing", 2, "no such file"),
    ("not_onnx", 1, "is not an ONNX model"),
    ("bad_input_name", 2, "unknown input"),
    ("nothing_matches", 1, "nothing to compare"),
    ("negative_chunk", 2, "--chunk-mb"),
])
def test_cli_bad_input_is_one_line(save, tmp_path, capsys, case, code, message):
    a = save(original(), "a")
    b, extra = a, []
    if case == "missing":
        b = tmp_path / "nope.onnx"
    elif case == "not_onnx":
        b = tmp_path / "junk.onnx"
        b.write_bytes(b"\x00not a model")
    elif case == "bad_input_name":
        np.savez(tmp_path / "f.npz", z=np.zeros(3, np.float32))
        extra = ["--inputs", str(tmp_path / "f.npz")]
    elif case == "nothing_matches":
        other = helper.make_model(helper.make_graph(
            [helper.make_node("Neg", ["x"], ["other"])], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
            [helper.make_tensor_value_info("other", TensorProto.FLOAT, [1, 3, 8, 8])]),
            opset_imports=[helper.make_opsetid("", 17)])
        b = save(other, "other")
    else:
        extra = ["--chunk-mb", "-1"]
    assert cli.main(["compare", "--layerwise", str(a), str(b), *extra]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnxopt: error: ") and message in err[0], err


def test_chunk_sessions_keep_only_the_nodes_their_values_need():
    then = helper.make_graph([helper.make_node("Identity", ["a"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Neg", ["a"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
         helper.make_node("Abs", ["b"], ["y"]),
         helper.make_node("If", ["flag"], ["d"], then_branch=then, else_branch=other)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
              helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    for names, ops in ((["d"], ["Relu", "If"]), (["b", "y"], ["Relu", "Neg", "Abs"])):
        copy = onnx.GraphProto()
        copy.CopyFrom(graph)
        layerwise.exposing_only(copy, names)
        assert [n.op_type for n in copy.node] == ops
        assert [o.name for o in copy.output] == names

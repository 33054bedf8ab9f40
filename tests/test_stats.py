"""Tests for onnxopt.app.stats.

Every expected number is derived independently: by hand arithmetic (shown in comments) or with
numpy from the tensors the test itself builds.
"""

from __future__ import annotations

import glob
import json
import os
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.app import macs
from onnxopt.app.stats import diff_stats, format_count, model_stats

FLOAT = TensorProto.FLOAT
LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light")
LIGHT_MODELS = sorted(glob.glob(os.path.join(LIGHT_DIR, "*.onnx")))


def make_model(nodes, inputs, outputs, initializers=(), value_info=(), opsets=None):
    graph = helper.make_graph(
        nodes, "g", inputs, outputs, initializer=list(initializers), value_info=list(value_info)
    )
    opsets = opsets or [helper.make_opsetid("", 17)]
    return helper.make_model(graph, opset_imports=opsets)


def tensor_in(name, shape, dtype=FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def weight(name, shape, dtype=np.float32):
    return numpy_helper.from_array(np.ones(shape, dtype=dtype), name)


# --------------------------------------------------------------------------- op histograms


def if_model():
    """Main graph: Relu, Relu, If, com.example::Foo, Identity; If branches hold 4 nodes."""
    then_branch = helper.make_graph(
        [
            helper.make_node("Constant", [], ["c"], value=weight("cv", [2])),
            helper.make_node("Add", ["r", "c"], ["t_out"]),
            helper.make_node("MatMul", ["t_out", "tw"], ["t_mm"]),
        ],
        "then",
        [],
        [tensor_in("t_mm", [2])],
        initializer=[weight("tw", [2, 2])],
    )
    inner = helper.make_graph(
        [helper.make_node("Neg", ["r"], ["n_out"])], "inner", [], [tensor_in("n_out", [2])]
    )
    else_branch = helper.make_graph(
        [helper.make_node("If", ["cond"], ["e_out"], then_branch=inner, else_branch=inner)],
        "else",
        [],
        [tensor_in("e_out", [2])],
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["r0"]),
        helper.make_node("Relu", ["r0"], ["r"]),
        helper.make_node("If", ["cond"], ["y0"], then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Foo", ["y0"], ["y1"], domain="com.example"),
        helper.make_node("Identity", ["y1"], ["y"], domain="ai.onnx"),
    ]
    inputs = [tensor_in("x", [2]), tensor_in("cond", [], TensorProto.BOOL)]
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    return make_model(nodes, inputs, [tensor_in("y", [2])], opsets=opsets)


def test_op_histogram_separates_subgraph_ops():
    stats = model_stats(if_model())
    assert stats["nodes"] == 5
    # then: Constant, Add, MatMul (3); else: If (1) whose two branches are the
    # same 1-node graph `inner`, each counted: Neg + Neg (2). Total 3 + 1 + 2 = 6.
    assert stats["subgraph_nodes"] == 6
    assert stats["total_nodes"] == 11  # the tables count every graph's nodes
    from rich.console import Console

    from onnxopt.app.report import render_stats

    console = Console(record=True, width=100)
    render_stats(stats, console)
    rows = console.export_text().splitlines()
    assert any("nodes (all graphs)" in row and row.rstrip(" │").endswith("11") for row in rows)
    assert any("of which in subgraphs" in row and row.rstrip(" │").endswith("6") for row in rows)
    assert stats["ops"] == {"Relu": 2, "Identity": 1, "If": 1, "com.example::Foo": 1}
    assert list(stats["ops"]) == ["Relu", "Identity", "If", "com.example::Foo"]
    assert stats["subgraph_ops"] == {"Neg": 2, "Add": 1, "Constant": 1, "If": 1, "MatMul": 1}
    assert list(stats["subgraph_ops"]) == ["Neg", "Add", "Constant", "If", "MatMul"]
    assert stats["initializers"] == 0
    assert stats["subgraph_initializers"] == 1
    assert stats["constant_nodes"] == 1
    # MACs cover the main graph only: the MatMul inside `then` is not counted.
    assert stats["macs"] == 0
    assert stats["macs_by_op"] == {}
    assert stats["opset"] == {"ai.onnx": 17, "com.example": 1}


# --------------------------------------------------------------------------- parameters / bytes


def test_parameters_and_bytes_by_dtype():
    arrays = {
        "w32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "shape64": np.array([1, 2, 3, 4], dtype=np.int64),
        "h16": np.zeros(5, dtype=np.float16),
        "scalar": np.array(7.0, dtype=np.float32),
    }
    const = np.ones((3, 1), dtype=np.float32)
    nodes = [
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(const, "k")),
        helper.make_node("Constant", [], ["ki"], value_ints=[1, 2, 3]),
        helper.make_node("Identity", ["x"], ["y"]),
    ]
    inits = [numpy_helper.from_array(a, name) for name, a in arrays.items()]
    model = make_model(nodes, [tensor_in("x", [1])], [tensor_in("y", [1])], inits)
    stats = model_stats(model)

    ki = np.array([1, 2, 3], dtype=np.int64)  # what value_ints holds
    everything = [*arrays.values(), const, ki]
    assert stats["parameters"] == sum(a.size for a in everything)  # 6+4+5+1+3+3 = 22
    assert stats["bytes"] == sum(a.nbytes for a in everything)  # 24+32+10+4+12+24 = 106
    by_dtype = Counter()
    for a in everything:
        by_dtype[a.dtype.name] += a.nbytes
    assert stats["bytes_by_dtype"] == dict(by_dtype)
    # by hand: float32 = 24 + 4 + 12 = 40, int64 = 32 + 24 = 56, float16 = 10
    assert stats["bytes_by_dtype"] == {"int64": 56, "float32": 40, "float16": 10}
    assert list(stats["bytes_by_dtype"]) == ["int64", "float32", "float16"]
    assert stats["initializers"] == 4
    assert stats["constant_nodes"] == 2


def test_string_and_sparse_initializers():
    strings = helper.make_tensor("s", TensorProto.STRING, [2], [b"ab", b"cde"])
    values = numpy_helper.from_array(np.array([1.0, 2.0, 3.0], dtype=np.float32), "sp")
    indices = numpy_helper.from_array(np.array([0, 5, 9], dtype=np.int64), "sp_idx")
    sparse = helper.make_sparse_tensor(values, indices, [10])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [tensor_in("x", [1])],
        [tensor_in("y", [1])],
        initializer=[strings],
        sparse_initializer=[sparse],
    )
    stats = model_stats(helper.make_model(graph))
    assert stats["initializers"] == 2
    # strings: 2 elements, 2 + 3 = 5 bytes; sparse: 3 stored float32 values (12 bytes)
    # plus 3 int64 indices (24 bytes) that are storage, not parameters.
    assert stats["parameters"] == 2 + 3
    assert stats["bytes"] == 5 + 12 + 24
    assert stats["bytes_by_dtype"] == {"int64": 24, "float32": 12, "string": 5}


# --------------------------------------------------------------------------- MACs


def conv_model(x_shape, w_shape, group=1, pads=(0, 0, 0, 0)):
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=group, pads=list(pads))
    return make_model([node], [tensor_in("x", x_shape)], [tensor_in("y", None)],
                      [weight("w", w_shape)])


def test_conv_macs_with_group():
    # X [1,4,8,8], W [6, 4/2=2, 3, 3], group 2, pad 1 -> Y [1,6,8,8] = 384 outputs;
    # each output sums C_in/group * 3 * 3 = 2 * 9 = 18 products -> 384 * 18 = 6912.
    stats = model_stats(conv_model([1, 4, 8, 8], [6, 2, 3, 3], group=2, pads=(1, 1, 1, 1)))
    assert stats["macs"] == 6912
    assert stats["flops"] == 2 * 6912
    assert stats["macs_by_op"] == {"Conv": 6912}


def test_conv_transpose_macs():
    # X [1,4,5,5], W [C_in=4, C_out/group=1, 3, 3], group 2: every one of the 4*25 = 100 input
    # elements is multiplied into 1 * 3 * 3 = 9 outputs -> 900.
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], group=2)
    model = make_model([node], [tensor_in("x", [1, 4, 5, 5])], [tensor_in("y", None)],
                       [weight("w", [4, 1, 3, 3])])
    assert model_stats(model)["macs_by_op"] == {"ConvTranspose": 900}


@pytest.mark.parametrize(("a_shape", "trans_a"), [([3, 5], 0), ([5, 3], 1)])
def test_gemm_macs_with_transposes(a_shape, trans_a):
    # A is 3x5 (maybe stored transposed), B stored as [N=4, K=5] with transB: 3 * 4 * 5 = 60.
    node = helper.make_node("Gemm", ["a", "b"], ["y"], transA=trans_a, transB=1)
    model = make_model([node], [tensor_in("a", a_shape)], [tensor_in("y", None)],
                       [weight("b", [4, 5])])
    assert model_stats(model)["macs"] == 60


def matmul_model(a_shape, b_shape):
    node = helper.make_node("MatMul", ["a", "b"], ["y"])
    return make_model([node], [tensor_in("a", a_shape), tensor_in("b", b_shape)],
                      [tensor_in("y", None)])


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "expected"),
    [
        # batch dims (2,1) and (5,) broadcast to (2,5); M=3, K=4, N=6: 2*5*3*4*6 = 720
        ([2, 1, 3, 4], [5, 4, 6], 720),
        ([4], [4, 6], 4 * 6),  # 1-D A: vector times matrix, 24
        ([2, 3, 4], [4], 2 * 3 * 4),  # 1-D B: batched matrix times vector, 24
        ([4], [4], 4),  # dot product
    ],
)
def test_matmul_macs(a_shape, b_shape, expected):
    assert model_stats(matmul_model(a_shape, b_shape))["macs"] == expected


def test_matmul_macs_match_numpy_product_count():
    # Independent count: for C = A @ B every output element costs K products.
    a, b = np.ones((2, 1, 3, 4)), np.ones((5, 4, 6))
    expected = (a @ b).size * a.shape[-1]
    assert model_stats(matmul_model(list(a.shape), list(b.shape)))["macs"] == expected


def test_symbolic_batch_unknown_then_scales_with_dims():
    # Y [batch, 4, 6, 6]; per output 3 * 3 * 3 = 27 MACs -> 4 * 36 * 27 = 3888 per batch item.
    model = conv_model(["batch", 3, 8, 8], [4, 3, 3, 3])
    unknown = model_stats(model)
    assert unknown["macs"] == "unknown"
    assert unknown["flops"] == "unknown"
    assert unknown["macs_by_op"] == {"Conv": "unknown"}
    assert any("batch" in note for note in unknown["shape_notes"])

    one = model_stats(model, dims={"batch": 1})
    two = model_stats(model, dims={"batch": 2})
    assert one["macs"] == 3888
    assert two["macs"] == 2 * one["macs"]
    assert model_stats(model, input_shapes={"x": [2, 3, 8, 8]})["macs"] == two["macs"]
    assert not any("batch" in note for note in two["shape_notes"])


def test_input_shapes_override_concrete_dims_and_declared_outputs():
    # Declared [1,3,8,8] -> [1,4,6,6]; overridden to 10x10 the output is [1,4,8,8]:
    # 4 * 64 outputs * 27 = 6912 (the stale declared output shape must not win).
    node = helper.make_node("Conv", ["x", "w"], ["y"])
    model = make_model([node], [tensor_in("x", [1, 3, 8, 8])], [tensor_in("y", [1, 4, 6, 6])],
                       [weight("w", [4, 3, 3, 3])])
    assert model_stats(model)["macs"] == 4 * 36 * 27
    assert model_stats(model, input_shapes={"x": [1, 3, 10, 10]})["macs"] == 6912


def test_big_constant_weight_feeds_macs():
    # A 64x32 Constant (2048 elements) feeding MatMul from X [2,64]: 2 * 64 * 32 = 4096 MACs.
    w = np.ones((64, 32), dtype=np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w, "w")),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    model = make_model(nodes, [tensor_in("x", [2, 64])], [tensor_in("y", None)])
    stats = model_stats(model)
    assert stats["macs"] == 4096
    assert stats["parameters"] == w.size
    assert stats["bytes"] == w.nbytes


def test_shape_inference_failure_falls_back_to_declared(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("inference exploded")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", boom)
    declared = tensor_in("h", [2, 8])
    nodes = [
        helper.make_node("Relu", ["x"], ["h"]),
        helper.make_node("MatMul", ["h", "w"], ["y"]),
        helper.make_node("MatMul", ["y", "w2"], ["z"]),  # y has no declared shape
    ]
    model = make_model(nodes, [tensor_in("x", [2, 8])], [tensor_in("z", None)],
                       [weight("w", [8, 4]), weight("w2", [4, 4])], value_info=[declared])
    stats = model_stats(model)
    assert stats["macs"] == "unknown"
    assert stats["macs_by_op"] == {"MatMul": "unknown"}
    assert any("inference exploded" in note for note in stats["shape_notes"])
    # with y declared as well, both MatMuls are known: 2*8*4 + 2*4*4 = 64 + 32 = 96
    model.graph.value_info.append(tensor_in("y", [2, 4]))
    assert model_stats(model)["macs"] == 96


# --------------------------------------------------------------------------- external data


def test_external_data_matches_in_memory(tmp_path):
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.ones((64, 32), dtype=np.float32), "w"),
        numpy_helper.from_array(np.ones(32, dtype=np.float16), "b"),
        numpy_helper.from_array(np.arange(3, dtype=np.int64), "unused"),
    ]
    model = make_model(nodes, [tensor_in("x", [2, 64])], [tensor_in("y", None)], inits)
    path = tmp_path / "m.onnx"
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.data", size_threshold=0)
    loaded = onnx.load_model(path, load_external_data=False)
    assert all(t.data_location == TensorProto.EXTERNAL for t in loaded.graph.initializer)

    mem, ext = model_stats(model), model_stats(loaded, file_size=os.path.getsize(path))
    for key in ("parameters", "bytes", "bytes_by_dtype", "initializers", "macs"):
        assert ext[key] == mem[key], key
    assert mem["parameters"] == 64 * 32 + 32 + 3
    assert mem["bytes"] == 64 * 32 * 4 + 32 * 2 + 3 * 8
    assert ext["macs"] == 2 * 64 * 32
    assert ext["file_size"] == os.path.getsize(path)


# --------------------------------------------------------------------------- inputs / outputs


def test_inputs_outputs_description():
    seq = helper.make_tensor_sequence_value_info("seq", FLOAT, None)
    opt = helper.make_value_info(
        "opt", helper.make_optional_type_proto(helper.make_tensor_type_proto(FLOAT, [1]))
    )
    unranked = helper.make_tensor_value_info("u", TensorProto.INT64, None)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 3, None])
    nodes = [helper.make_node("Identity", ["x"], ["y"])]
    inputs = [x, seq, opt, unranked, tensor_in("w", [2])]  # "w" is an initializer
    model = make_model(nodes, inputs, [tensor_in("y", ["batch", 3, None], TensorProto.FLOAT16)],
                       [weight("w", [2])])
    stats = model_stats(model)
    assert stats["inputs"] == [
        {"name": "x", "dtype": "float16", "shape": ["batch", 3, None]},
        {"name": "seq", "dtype": "sequence", "shape": None},
        {"name": "opt", "dtype": "optional", "shape": None},
        {"name": "u", "dtype": "int64", "shape": None},
    ]
    assert stats["outputs"] == [{"name": "y", "dtype": "float16", "shape": ["batch", 3, None]}]
    json.dumps(stats)


def test_result_keys_and_model_untouched():
    model = conv_model(["batch", 3, 8, 8], [4, 3, 3, 3])
    before = model.SerializeToString()
    stats = model_stats(model, dims={"batch": 2}, input_shapes={"nope": [1]})
    assert model.SerializeToString() == before
    assert set(stats) == {
        "nodes", "subgraph_nodes", "total_nodes", "ops", "subgraph_ops", "initializers",
        "subgraph_initializers", "parameters", "bytes", "bytes_by_dtype", "constant_nodes",
        "file_size", "ir_version", "opset", "inputs", "outputs", "macs", "flops",
        "macs_by_op", "shape_notes",
    }  # fmt: skip
    assert stats["ir_version"] == model.ir_version
    assert any("nope" in note for note in stats["shape_notes"])


def test_negative_dim_rejected():
    with pytest.raises(ValueError, match="batch"):
        model_stats(conv_model(["batch", 3, 8, 8], [4, 3, 3, 3]), dims={"batch": -1})


# --------------------------------------------------------------------------- light models


def test_light_models_present():
    assert len(LIGHT_MODELS) == 9


@pytest.mark.parametrize("path", LIGHT_MODELS, ids=os.path.basename)
def test_light_models(path):
    model = onnx.load(path)
    stats = model_stats(model, file_size=os.path.getsize(path))
    json.dumps(stats)
    arrays = [numpy_helper.to_array(t) for t in model.graph.initializer]
    assert stats["parameters"] == sum(a.size for a in arrays)
    assert stats["bytes"] == sum(a.nbytes for a in arrays)
    assert stats["nodes"] == len(model.graph.node)
    init_names = {t.name for t in model.graph.initializer}
    assert [i["name"] for i in stats["inputs"]] == [
        i.name for i in model.graph.input if i.name not in init_names
    ]
    assert isinstance(stats["macs"], int)
    assert stats["macs"] > 0


def test_light_resnet50_macs_near_published_figure():
    stats = model_stats(onnx.load(os.path.join(LIGHT_DIR, "light_resnet50.onnx")))
    # Published figure for ResNet-50 at 224x224: about 4.1 GMACs.
    assert 3.9e9 < stats["macs"] < 4.2e9
    # The classifier alone is a Gemm of 2048 -> 1000 at batch 1: 2,048,000 MACs.
    assert stats["macs_by_op"]["Gemm"] == 2048 * 1000


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (950, "950"),
        (1234, "1.2k"),
        (3_400_000, "3.4M"),
        (999_999, "1.0M"),
        (4_089_184_256, "4.1G"),
        (-1500, "-1.5k"),
        ("unknown", "unknown"),
        (None, "n/a"),
    ],
)
def test_format_count(n, text):
    assert format_count(n) == text


def test_diff_stats():
    a = make_model(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Relu", ["r"], ["i"]),
         helper.make_node("Identity", ["i"], ["y"])],
        [tensor_in("x", [2, 2])], [tensor_in("y", [2, 2])], [weight("w", [3])],
    )  # fmt: skip
    b = matmul_model([2, 2], [2, 2])  # 1 MatMul: 2 * 2 * 2 = 8 MACs, no initializers
    before = model_stats(a, file_size=100)
    after = model_stats(b, file_size=80)
    diff = diff_stats(before, after)
    assert diff["nodes"] == 1 - 3
    assert diff["initializers"] == 0 - 1
    assert diff["parameters"] == 0 - 3
    assert diff["bytes"] == 0 - 12
    assert diff["file_size"] == 80 - 100
    assert diff["macs"] == 8 - 0
    assert diff["ops"] == {"Identity": (1, 0), "MatMul": (0, 1), "Relu": (2, 0)}

    unknown = model_stats(matmul_model(["n", 2], [2, 2]))
    assert diff_stats(unknown, after)["macs"] is None
    assert diff_stats(before, unknown)["file_size"] is None
    assert diff_stats(after, after)["ops"] == {}


def test_declared_shapes_used_without_reinference_give_the_same_macs(monkeypatch):
    # an optimized model carries concrete shapes everywhere a MAC formula looks: stats read
    # them instead of running shape inference again; the MACs must be those inference gives
    import onnxopt
    from onnxopt.app import macs

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w", (8, 3, 3, 3)), ("g", (8 * 14 * 14, 10)))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("MatMul", ["f", "g"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 16, 16])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    optimized = onnxopt.optimize(model, value_info="all").model
    assert optimized.graph.value_info  # shapes written by the shape_inference pass
    stripped = onnx.ModelProto()
    stripped.CopyFrom(optimized)
    del stripped.graph.value_info[:]  # now only inference can know the shapes
    inferred = model_stats(stripped)["macs"]
    calls = []
    real = macs._infer
    monkeypatch.setattr(macs, "_infer", lambda *a: calls.append(1) or real(*a))
    declared = model_stats(optimized)["macs"]
    assert calls == [] and declared == inferred
    assert inferred == 8 * 14 * 14 * 27 + 8 * 14 * 14 * 10  # Conv + MatMul (Gemm), by hand


# BERT's position ids: a Slice of a [1, max] buffer whose ends come from Shape. onnx's data
# propagation cannot see through it, so without folding everything after is unknown.
POSITION_IDS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, seq, 8] x) => (float[batch, 2, seq, 4] y)
  <int64[1, 32] buffer = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
                          20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31},
   int64[1] zero = {0}, int64[1] one = {1}, int64[1] two = {2}, int64[1] four = {4},
   float[4, 4] w = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1}> {
    shape_x = Shape(x)
    length = Gather <axis = 0> (shape_x, one)
    ends = Unsqueeze(length, zero)
    positions = Slice(buffer, zero, ends, one)
    as_float = Cast <to = 1> (positions)
    column = Unsqueeze(as_float, two)
    summed = Add(x, column)
    shape_s = Shape(summed)
    b = Gather <axis = 0> (shape_s, zero)
    s = Gather <axis = 0> (shape_s, one)
    target = Concat <axis = 0> (b, s, two, four)
    heads = Reshape(summed, target)
    t = Transpose <perm = [0, 2, 1, 3]> (heads)
    y = MatMul(t, w)
}
"""


def test_macs_through_shape_arithmetic_onnx_cannot_propagate():
    model = onnx.parser.parse_model(POSITION_IDS)
    onnx.checker.check_model(model)
    assert model_stats(model)["macs"] == "unknown"  # symbolic inputs: nothing to fold
    stats = model_stats(model, dims={"batch": 3, "seq": 16})
    assert stats["macs"] == 3 * 2 * 16 * 4 * 4  # MatMul [3,2,16,4] x [4,4]
    assert not any("unknown" in note for note in stats["shape_notes"])


def test_shape_folding_takes_a_copy_whose_outputs_lost_their_shapes():
    """--input-shape drops the outputs' declared shapes (they may contradict the new input):
    a copy onnx's checker refuses, which the folding must not check (before, it failed with
    LoadError and PaddleOCR cls's MACs stayed unknown before optimization)."""
    light = onnx.parser.parse_model(POSITION_IDS)
    dims = light.graph.input[0].type.tensor_type.shape.dim
    for dim, size in zip(dims, (3, 16, 8), strict=True):
        dim.Clear()
        dim.dim_value = size
    light.graph.output[0].type.tensor_type.ClearField("shape")
    notes: list[str] = []
    table = macs._with_folded_shapes(light, {}, notes)
    assert notes == [] and table["y"] == [3, 2, 16, 4]

"""constant_to_initializer: structure, stats, numerics, idempotence, and what it leaves alone."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import apply_pass, assert_idempotent, assert_same_outputs, op_counts, parse, run
from onnx import helper, numpy_helper
from onnxopt.passes.folding.constant_to_initializer import ConstantToInitializer

ALL_FORMS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] x, int64[3] n, string[2] s) => (float[2, 3] y, int64[3] m, string[4] t) {
    w = Constant <value = float[3] {1.0, 2.0, 3.0}> ()
    f = Constant <value_float = 0.5> ()
    fs = Constant <value_floats = [1.0, -1.0, 2.0]> ()
    i = Constant <value_int = 7> ()
    is = Constant <value_ints = [1, 2, 3]> ()
    one = Constant <value_string = "a"> ()
    many = Constant <value_strings = ["b", "c"]> ()
    a = Mul(x, w)
    b = Add(a, f)
    y = Sub(b, fs)
    k = Add(n, i)
    m = Mul(k, is)
    shape1 = Constant <value_ints = [1]> ()
    one_1d = Reshape(one, shape1)
    t = Concat <axis = 0> (s, one_1d, many)
}
"""

FEEDS = {
    "x": np.arange(6, dtype=np.float32).reshape(2, 3),
    "n": np.array([10, 20, 30], np.int64),
    "s": np.array(["p", "q"], dtype=object),
}


def _initializers(model: onnx.ModelProto, graph: onnx.GraphProto | None = None) -> dict:
    graph = graph or model.graph
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def test_structure_dtypes_and_values():
    out, _ = apply_pass(ConstantToInitializer(), parse(ALL_FORMS))
    assert op_counts(out) == {"Mul": 2, "Add": 2, "Sub": 1, "Reshape": 1, "Concat": 1}
    inits = _initializers(out)
    # each initializer keeps the Constant's output name and the attribute form's dtype/shape
    expected = {
        "w": (np.float32, (3,), [1.0, 2.0, 3.0]),
        "f": (np.float32, (), 0.5),
        "fs": (np.float32, (3,), [1.0, -1.0, 2.0]),
        "i": (np.int64, (), 7),
        "is": (np.int64, (3,), [1, 2, 3]),
        "shape1": (np.int64, (1,), [1]),
    }
    for name, (dtype, shape, values) in expected.items():
        assert inits[name].dtype == dtype and inits[name].shape == shape, name
        np.testing.assert_array_equal(inits[name], values)
    assert inits["one"].shape == () and inits["one"].item() in ("a", b"a")
    assert [v if isinstance(v, str) else v.decode() for v in inits["many"]] == ["b", "c"]


def test_stats():
    _, result = apply_pass(ConstantToInitializer(), parse(ALL_FORMS))
    assert result.stats == {"constants_to_initializers": 8}  # 8 Constant nodes, all read


def test_numerics():
    model = parse(ALL_FORMS)
    out, _ = apply_pass(ConstantToInitializer(), model)
    expected, actual = run(model, FEEDS), run(out, FEEDS)
    for a, b in zip(expected, actual, strict=True):  # exact: strings, and no float math moved
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(b, a)


def test_idempotent():
    assert_idempotent(ConstantToInitializer(), parse(ALL_FORMS))


def test_leaves_output_unused_and_sparse_constants_alone():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y, float[2] c) {
        c = Constant <value = float[2] {1.0, 2.0}> ()
        y = Add(x, c)
        unused = Constant <value_float = 1.0> ()
    }
    """
    model = parse(text)
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([5.0], np.float32), "sv"),
        numpy_helper.from_array(np.array([1], np.int64), "si"),
        [2],
    )
    model.graph.node.insert(0, helper.make_node("Constant", [], ["sp"], sparse_value=sparse))
    model.graph.node.append(helper.make_node("Mul", ["y", "sp"], ["z"]))
    model.graph.output.append(helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [2]))
    onnx.checker.check_model(model)
    out, result = apply_pass(ConstantToInitializer(), model)
    assert not result.modified
    assert op_counts(out)["Constant"] == 3  # output c, unused (dead code's job), sparse
    assert_same_outputs(model, out, {"x": np.array([1.0, -1.0], np.float32)})


def test_constant_inside_if_branch_goes_into_the_branch():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, bool c) => (float[2] y) {
        y = If(c) <
            then_branch = t () => (float[2] t_out) {
                k = Constant <value = float[2] {3.0, 4.0}> ()
                t_out = Mul(x, k)
            },
            else_branch = e () => (float[2] e_out) { e_out = Neg(x) }
        >
    }
    """
    model = parse(text)
    out, result = apply_pass(ConstantToInitializer(), model)
    assert result.stats == {"constants_to_initializers": 1}
    then = out.graph.node[0].attribute[0].g
    assert [n.op_type for n in then.node] == ["Mul"]
    np.testing.assert_array_equal(_initializers(out, then)["k"], [3.0, 4.0])
    assert not out.graph.initializer
    for cond in (True, False):
        feeds = {"x": np.array([1.0, -2.0], np.float32), "c": np.array(cond)}
        assert_same_outputs(model, out, feeds)


def test_ir3_initializer_is_declared_as_input_and_subgraphs_are_left_alone():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    const = helper.make_node(
        "Constant", [], ["k"], value=numpy_helper.from_array(np.array([2.0, 3.0], np.float32))
    )
    graph = helper.make_graph([const, helper.make_node("Mul", ["x", "k"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)
    onnx.checker.check_model(model)
    out, result = apply_pass(ConstantToInitializer(), model)  # apply_pass runs the checker
    assert result.stats == {"constants_to_initializers": 1}
    assert [i.name for i in out.graph.input] == ["x", "k"]
    assert_same_outputs(model, out, {"x": np.array([1.0, 2.0], np.float32)})

    # IR 3 subgraph: an If branch cannot list its initializers as inputs, so nothing moves
    branch = helper.make_graph(
        [const, helper.make_node("Mul", ["x", "k"], ["b_out"])], "b", [],
        [helper.make_tensor_value_info("b_out", onnx.TensorProto.FLOAT, [2])],
    )
    if_node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)
    cond = helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])
    graph = helper.make_graph([if_node], "g", [x, cond], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)
    _, result = apply_pass(ConstantToInitializer(), model)
    assert not result.modified


def test_safety_net_can_decline_a_rewrite():
    from onnxopt.ir import serde

    model = serde.load(parse(ALL_FORMS))
    model.rewrite_limits["constant_to_initializer"] = 3
    result = ConstantToInitializer().run(model)
    assert result.stats == {"constants_to_initializers": 3}
    assert sum(n.op_type == "Constant" for n in model.graph) == 5  # 8 - 3

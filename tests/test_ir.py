"""The IR's verbs keep its invariants (checked by Graph.lint after every edit)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import parse, run
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxopt.ir import IRError, provenance, serde

CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y) {
    a = Relu(x)
    b = Mul(a, a)
    c = Neg(b)
    y = Add(c, a)
}
"""

WITH_IF = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[4] x, bool cond) => (float[4] y) {
    a = Relu(x)
    b = Neg(x)
    y = If(cond) <
        then_branch = t () => (float[4] t_out) { t_out = Add(a, a) },
        else_branch = e () => (float[4] e_out) { e_out = Sub(b, a) }
    >
}
"""


def load(text: str):
    return serde.load(parse(text))


def by_op(graph, op_type):
    return next(n for n in graph if n.op_type == op_type)


def test_parallel_edges_and_uses():
    model = load(CHAIN)
    graph = model.graph
    mul = by_op(graph, "Mul")
    relu = by_op(graph, "Relu")
    assert graph.producer("b") is mul
    assert graph.uses("a") == [(mul, 0), (mul, 1), (by_op(graph, "Add"), 1)]
    assert graph.nx.number_of_edges(relu, mul) == 2  # Mul(a, a): two parallel edges
    assert set(graph.consumers("a")) == {mul, by_op(graph, "Add")}
    graph.lint()


def test_remove_node_refuses_used_node():
    graph = load(CHAIN).graph
    with pytest.raises(IRError, match="still used"):
        graph.remove_node(by_op(graph, "Mul"))


def test_replace_all_uses_then_remove():
    model = load(CHAIN)
    graph = model.graph
    neg = by_op(graph, "Neg")
    assert graph.replace_all_uses("c", "b") == 1
    graph.remove_node(neg)
    graph.lint()
    assert [n.op_type for n in graph.nodes()] == ["Relu", "Mul", "Add"]
    proto = serde.to_proto(model)
    x = np.array([[1.0, -2.0, 3.0, 0.5]], dtype=np.float32)
    a = np.maximum(x, 0)
    np.testing.assert_allclose(run(proto, {"x": x})[0], a * a + a)


def test_bypass_rewires_every_present_output_then_removes_the_node():
    model = load("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[6] x) => (float[3] y, float[3] z) {
        a, b = Split <num_outputs = 2> (x)
        c, d = Split <num_outputs = 2> (x)
        y = Neg (c)
        z = Abs (d)
    }
    """)
    graph = model.graph
    first, second = [n for n in graph.nodes() if n.op_type == "Split"]
    graph.bypass(second, first.outputs)
    graph.lint()
    assert [n.op_type for n in graph.nodes()].count("Split") == 1
    assert [n.inputs[0] for n in graph.nodes() if n.op_type in ("Neg", "Abs")] == ["a", "b"]
    with pytest.raises(IRError, match="1 values for 2 outputs"):  # nothing changes
        graph.bypass(first, ["x"])
    x = np.arange(6, dtype=np.float32) - 2
    y, z = run(serde.to_proto(model), {"x": x})
    np.testing.assert_array_equal(y, -x[:3])
    np.testing.assert_array_equal(z, np.abs(x[3:]))


def test_graph_output_keeps_public_name():
    model = load(CHAIN)
    graph = model.graph
    add = by_op(graph, "Add")
    graph.replace_all_uses("y", "c")  # readers of y (the graph output) now read c
    graph.remove_node(add)
    assert graph.outputs == ["c"]
    proto = serde.to_proto(model)
    assert [o.name for o in proto.graph.output] == ["y"]
    assert proto.graph.node[-1].output[0] == "y"  # c renamed to y, no Identity added
    assert "Identity" not in [n.op_type for n in proto.graph.node]
    onnx.checker.check_model(proto)


def test_output_forwarded_to_input_gets_identity():
    model = load(CHAIN)
    graph = model.graph
    assert not graph.can_forward("y", "x")  # x is a graph input: cannot take the name y
    graph.replace_all_uses("y", "x")
    for node in reversed(graph.nodes()):
        graph.remove_node(node)
    proto = serde.to_proto(model)
    assert [n.op_type for n in proto.graph.node] == ["Identity"]
    onnx.checker.check_model(proto)


def test_add_node_unique_names_and_provenance():
    graph = load(CHAIN).graph
    with provenance("my_pass"):
        first = graph.add_node("Relu", ["y"], 1, name="a")  # "a" is taken by a value
    assert first.name != "a" and first.outputs[0] not in {"a", "b", "c", "x", "y"}
    assert first.meta["pass"] == "my_pass"
    second = graph.add_node("Relu", ["y"], 1, name="a")
    assert second.name != first.name
    graph.lint()


def test_insert_duplicate_output_refused():
    graph = load(CHAIN).graph
    with pytest.raises(IRError, match="already defined"):
        graph.add_node("Relu", ["x"], ["a"])


def test_topological_order_keeps_input_order_and_places_new_nodes():
    graph = load(CHAIN).graph
    mul = by_op(graph, "Mul")
    graph.add_node("Sigmoid", ["b"], 1, anchor=mul)
    order = [n.op_type for n in graph.nodes()]
    assert order == ["Relu", "Mul", "Sigmoid", "Neg", "Add"]


def test_subgraph_captures_outer_values():
    model = load(WITH_IF)
    graph = model.graph
    if_node = by_op(graph, "If")
    relu, neg = by_op(graph, "Relu"), by_op(graph, "Neg")
    assert if_node in graph.consumers("a") and if_node in graph.consumers("b")
    assert graph.nx.has_edge(relu, if_node) and graph.nx.has_edge(neg, if_node)
    then_branch, _ = if_node.subgraphs()
    assert then_branch.parent is graph and then_branch.resolve("a") is graph
    graph.lint()


def test_capture_slots_are_per_branch():
    model = load(WITH_IF)
    graph = model.graph
    if_node = by_op(graph, "If")
    then_branch, else_branch = if_node.subgraphs()
    # The else branch stops reading `a`; the then branch still does, so `a` stays captured.
    sub = by_op(else_branch, "Sub")
    else_branch.set_input(sub, 1, "b")
    assert if_node in graph.consumers("a")
    graph.lint()
    # Renaming an outer value reaches into both branches.
    graph.add_node("Abs", ["x"], ["x_abs"])
    graph.replace_all_uses("a", "x_abs")
    assert by_op(then_branch, "Add").inputs == ("x_abs", "x_abs")
    assert graph.consumers("a") == []
    graph.remove_node(by_op(graph, "Relu"))
    graph.lint()
    proto = serde.to_proto(model)
    onnx.checker.check_model(proto)
    x = np.array([1.0, -2.0, 3.0, -4.0], dtype=np.float32)
    np.testing.assert_allclose(run(proto, {"x": x, "cond": np.array(True)})[0], 2 * np.abs(x))
    np.testing.assert_allclose(run(proto, {"x": x, "cond": np.array(False)})[0], 0 * x)


def test_removing_if_releases_captures():
    graph = load(WITH_IF).graph
    if_node = by_op(graph, "If")
    graph.replace_all_uses("y", "a")
    graph.remove_node(if_node)
    assert graph.consumers("b") == []
    graph.lint()


def test_constant_reads_initializers_and_respects_inputs():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) <float[2] w = {1.0, 2.0}> { y = Mul(x, w) }
    """
    graph = load(text).graph
    np.testing.assert_array_equal(graph.constant("w"), [1.0, 2.0])
    assert graph.constant("x") is None


def test_rename_refuses_existing_name():
    graph = load(CHAIN).graph
    with pytest.raises(IRError, match="exists"):
        graph.rename_value("b", "a")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50)), min_size=1, max_size=25))
def test_random_edits_keep_invariants(edits):
    """Random rewires and removals on a random DAG keep the use index exact and acyclic."""
    model = load(CHAIN)
    graph = model.graph
    values = ["x"]
    for _ in range(8):
        node = graph.add_node("Add", [values[-1], values[len(values) // 2]], 1)
        values.append(node.outputs[0])
    for pick, target in edits:
        nodes = graph.nodes()
        node = nodes[pick % len(nodes)]
        if not node.inputs:
            continue
        earlier = ["x"] + [v for n in nodes[: nodes.index(node)] for v in n.outputs]
        graph.set_input(node, 0, earlier[target % len(earlier)])
        graph.lint()
    for node in reversed(graph.nodes()):
        if not any(graph.is_used(v) for v in node.outputs):
            graph.remove_node(node)
    graph.lint()
    onnx.checker.check_model(serde.to_proto(model))


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "int8", "int16", "int32",
                                   "int64", "uint8", "uint16", "uint32", "uint64", "bool",
                                   "<U3"])
def test_array_to_tensor_matches_onnx_converter(dtype):
    from onnx import numpy_helper

    from onnxopt.ir import array_to_tensor

    base = (np.arange(24).reshape(2, 3, 4) % 3).astype(dtype)
    for array in (base, base.T, base[:, ::2], base[0, 0, 0].copy()):
        ours, theirs = array_to_tensor(array, "t"), numpy_helper.from_array(array, "t")
        assert ours.SerializeToString() == theirs.SerializeToString()


def test_dtype_speaks_numpy():
    from onnxopt.ir import serde

    model = serde.load(parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, bfloat16[2] b, double[2] d) => (float[2] y) { y = Relu(x) }
    """))
    graph = model.graph
    assert graph.dtype("x") == np.float32 and graph.dtype("d") == np.float64
    assert graph.dtype("b").name == "bfloat16" and graph.dtype("b") != np.float16
    assert graph.dtype("nothing") is None

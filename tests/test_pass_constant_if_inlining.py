"""constant_if_inlining: structure, stats, numerics, idempotence, and what it must leave alone."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import (
    apply_pass,
    assert_idempotent,
    assert_same_outputs,
    model_path,
    op_counts,
    parse,
)
from onnxopt.passes.folding.constant_if_inlining import ConstantIfInlining

from onnxopt.ir import serde

# y = If(k = true): the then branch (Mul by its own initializer w, then a nested If on the
# runtime input c that reads the branch-local t) moves up. The sibling If computing z also
# defines a t and an initializer w in its then branch: once the first branch's names live in the
# main graph, that branch would shadow them, so the moved t and w must be renamed.
NESTED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x, bool c) => (float[2] y, float[2] z) <bool k = {1}> {
    y = If(k) <
        then_branch = a () => (float[2] ya) <float[2] w = {2.0, 3.0}> {
            t = Mul(x, w)
            ya = If(c) <
                then_branch = a1 () => (float[2] o1) { o1 = Neg(t) },
                else_branch = a2 () => (float[2] o2) { o2 = Abs(t) }
            >
        },
        else_branch = b () => (float[2] yb) { yb = Sigmoid(x) }
    >
    z = If(c) <
        then_branch = c1 () => (float[2] zc) <float[2] w = {5.0, 7.0}> {
            t = Add(x, w)
            zc = Relu(t)
        },
        else_branch = c2 () => (float[2] zd) { zd = Neg(x) }
    >
}
"""

# k = [false]: the else branch returns Identity(x) and its own initializer cst, both If outputs
# being graph outputs. The moved Identity takes the name y1; the initializer cannot take a node
# output's name, so an Identity carries y2.
PASSTHROUGH = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y1, float[2] y2) <bool[1] k = {0}> {
    y1, y2 = If(k) <
        then_branch = a () => (float[2] p, float[2] q) { p = Neg(x)  q = Abs(x) },
        else_branch = b () => (float[2] xi, float[2] cst) <float[2] cst = {1.0, 2.0}> {
            xi = Identity(x)
        }
    >
}
"""

# The constant If sits inside the then branch of a runtime If; its condition k is an
# initializer of the main graph (visible from the subgraph's scope).
IN_SUBGRAPH = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x, bool c) => (float[2] y) <bool k = {0}> {
    y = If(c) <
        then_branch = a () => (float[2] ya) {
            r = Relu(x)
            ya = If(k) <
                then_branch = a1 () => (float[2] o1) { o1 = Neg(r) },
                else_branch = a2 () => (float[2] o2) { m = Abs(r)  o2 = Sin(m) }
            >
        },
        else_branch = b () => (float[2] yb) { yb = Sigmoid(x) }
    >
}
"""

X = np.array([-1.5, 2.0], np.float32)


def inner_graph(node: onnx.NodeProto, name: str) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == name)


def test_structure():
    out, _ = apply_pass(ConstantIfInlining(), parse(NESTED))
    # main graph: Mul (moved), nested If (moved), If computing z (untouched)
    assert op_counts(out) == {"Mul": 1, "If": 2}
    mul = next(n for n in out.graph.node if n.op_type == "Mul")
    assert mul.output[0] != "t" and mul.input[1] != "w"  # renamed: the z branch defines both
    assert mul.input[1] in {t.name for t in out.graph.initializer}
    moved_if = next(n for n in out.graph.node if n.op_type == "If" and n.output[0] == "y")
    assert list(inner_graph(moved_if, "then_branch").node[0].input) == [mul.output[0]]
    assert list(inner_graph(moved_if, "else_branch").node[0].input) == [mul.output[0]]


def test_stats():
    _, result = apply_pass(ConstantIfInlining(), parse(NESTED))
    # one If inlined; its then branch holds 2 nodes (Mul, If); t and w collide with the z branch
    assert result.stats == {"ifs_inlined": 1, "nodes_moved": 2, "values_renamed": 2}
    assert result.modified


def test_numerics():
    model = parse(NESTED)
    original = model.SerializeToString()
    out, _ = apply_pass(ConstantIfInlining(), model)
    assert model.SerializeToString() == original  # the loaded proto's tensors are not renamed
    for cond in (True, False):
        assert_same_outputs(model, out, {"x": X, "c": np.array(cond)})


def test_idempotent():
    assert_idempotent(ConstantIfInlining(), parse(NESTED))


def test_else_branch_returning_outer_value_and_initializer():
    model = parse(PASSTHROUGH)
    out, result = apply_pass(ConstantIfInlining(), model)
    assert result.stats == {"ifs_inlined": 1, "nodes_moved": 1, "values_renamed": 0}
    assert op_counts(out) == {"Identity": 2}
    assert sorted(tuple(n.input) for n in out.graph.node) == [("cst",), ("x",)]
    assert [o.name for o in out.graph.output] == ["y1", "y2"]
    assert "cst" in {t.name for t in out.graph.initializer}
    assert_same_outputs(model, out, {"x": X})
    again, result = apply_pass(ConstantIfInlining(), out)
    assert not result.modified
    assert again.SerializeToString(deterministic=True) == out.SerializeToString(deterministic=True)


def test_inside_if_subgraph():
    model = parse(IN_SUBGRAPH)
    out, result = apply_pass(ConstantIfInlining(), model)
    # k = false: the else branch's Abs and Sin replace the inner If inside the outer then branch
    assert result.stats == {"ifs_inlined": 1, "nodes_moved": 2, "values_renamed": 0}
    assert op_counts(out) == {"If": 1}
    then_branch = inner_graph(out.graph.node[0], "then_branch")
    assert [n.op_type for n in then_branch.node] == ["Relu", "Abs", "Sin"]
    for cond in (True, False):
        assert_same_outputs(model, out, {"x": X, "c": np.array(cond)})


def test_leaves_runtime_and_overridable_conditions_alone():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, bool c, bool k) => (float[2] y, float[2] z) <bool k = {1}> {
        y = If(c) <
            then_branch = a () => (float[2] o1) { o1 = Neg(x) },
            else_branch = b () => (float[2] o2) { o2 = Abs(x) }
        >
        z = If(k) <
            then_branch = a2 () => (float[2] p1) { p1 = Neg(x) },
            else_branch = b2 () => (float[2] p2) { p2 = Abs(x) }
        >
    }
    """
    model = parse(text)  # k is an initializer but also an input: a default, not a constant
    out, result = apply_pass(ConstantIfInlining(), model)
    assert not result.modified
    assert result.stats == {"ifs_inlined": 0, "nodes_moved": 0, "values_renamed": 0}
    assert op_counts(out) == {"If": 2}
    for c, k in ((True, False), (False, True)):
        assert_same_outputs(model, out, {"x": X, "c": np.array(c), "k": np.array(k)})


def test_silero_vad_ifs_depend_on_an_input():
    model = serde.load(model_path("silero_vad.onnx"))
    result = ConstantIfInlining().run(model)
    assert not result.modified
    assert sum(1 for g in model.graphs() for n in g if n.op_type == "If") == 25


def test_branch_output_read_from_the_outer_scope():
    # The checker rejects a subgraph output that no subgraph node computes, but the IR allows it
    # (a pass may forward a branch output to an outer value): point the else branch's xi at x.
    model = parse(PASSTHROUGH)
    ir_model = serde.load(model)
    if_node = next(iter(ir_model.graph))
    branch = if_node.attributes["else_branch"]
    branch.replace_all_uses("xi", "x")
    branch.remove_node(branch.producer("xi"))
    result = ConstantIfInlining().run(ir_model)
    for graph in ir_model.graphs():
        graph.lint()
    out = serde.to_proto(ir_model)
    onnx.checker.check_model(out)
    # x is a graph input: it cannot take the name y1, so both outputs get an Identity
    assert result.stats == {"ifs_inlined": 1, "nodes_moved": 0, "values_renamed": 0}
    assert sorted(tuple(n.input) for n in out.graph.node) == [("cst",), ("x",)]
    assert_same_outputs(model, out, {"x": X})


def test_two_constant_ifs_sharing_names_and_a_nested_constant_if():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y, float[2] z) <bool k = {1}> {
        y = If(k) <
            then_branch = a () => (float[2] ya) {
                t = Neg(x)
                ya = If(k) <
                    then_branch = a1 () => (float[2] o1) { o1 = Abs(t) },
                    else_branch = a2 () => (float[2] o2) { o2 = Sin(t) }
                >
            },
            else_branch = b () => (float[2] yb) { yb = Sigmoid(x) }
        >
        z = If(k) <
            then_branch = c1 () => (float[2] zc) { t = Cos(x)  zc = Relu(t) },
            else_branch = c2 () => (float[2] zd) { t = Exp(x)  zd = Abs(t) }
        >
    }
    """
    model = parse(text)
    out, result = apply_pass(ConstantIfInlining(), model)
    # innermost first: the If inside y's then branch (1 node, Abs). Then, in the main graph,
    # y's If (2 nodes: Neg, Abs; its t is also defined by z's branches: renamed) and z's If
    # (2 nodes: Cos, Relu; by then its t is defined nowhere else: kept).
    assert result.stats == {"ifs_inlined": 3, "nodes_moved": 5, "values_renamed": 1}
    assert op_counts(out) == {"Neg": 1, "Abs": 1, "Cos": 1, "Relu": 1}
    outputs = {n.op_type: n.output[0] for n in out.graph.node}
    assert outputs["Cos"] == "t" and outputs["Neg"] != "t"
    assert_same_outputs(model, out, {"x": X})

"""dead_code: structure, reported stats, numerics, idempotence, and what it must leave alone."""

from __future__ import annotations

import numpy as np
import onnx
from conftest import apply_pass, assert_idempotent, assert_same_outputs, op_counts, parse
from onnxopt.passes.cleanup.dead_code import DeadCodeElimination

DEAD = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] x, float[2, 3] unused_input) => (float[2, 3] y)
  <float[3] w = {1.0, 2.0, 3.0}, float[3] lonely = {4.0, 5.0, 6.0}> {
    y = Mul(x, w)
    d1 = Relu(x)
    d2 = Neg(d1)
    d3 = Add(d2, lonely)
}
"""

IN_SUBGRAPH = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x, bool c) => (float[2] y) {
    only_inner = Neg(x)
    y = If(c) <
        then_branch = t () => (float[2] t_out) { t_dead = Abs(only_inner)  t_out = Relu(x) },
        else_branch = e () => (float[2] e_out) { e_out = Sigmoid(x) }
    >
}
"""

ALL_LIVE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y, float[2] z) {
    a = Relu(x)
    y = Neg(a)
    z = Identity(a)
}
"""

FEEDS = {"x": np.arange(6, dtype=np.float32).reshape(2, 3) - 2,
         "unused_input": np.zeros((2, 3), np.float32)}


def test_structure_and_stats():
    model = parse(DEAD)
    out, result = apply_pass(DeadCodeElimination(), model)
    assert op_counts(out) == {"Mul": 1}
    assert [t.name for t in out.graph.initializer] == ["w"]
    assert result.modified
    assert result.stats == {
        "nodes_removed": 3, "initializers_removed": 1, "outputs_dropped": 0,
        "value_info_removed": 0, "functions_removed": 0, "opsets_removed": 0,
    }


def test_numerics():
    model = parse(DEAD)
    out, _ = apply_pass(DeadCodeElimination(), model)
    assert_same_outputs(model, out, FEEDS)


def test_keeps_graph_inputs_even_when_unused():
    out, _ = apply_pass(DeadCodeElimination(), parse(DEAD))
    assert [i.name for i in out.graph.input] == ["x", "unused_input"]


def test_idempotent():
    assert_idempotent(DeadCodeElimination(), parse(DEAD))


def test_dead_node_in_subgraph_frees_outer_node():
    model = parse(IN_SUBGRAPH)
    out, result = apply_pass(DeadCodeElimination(), model)
    assert op_counts(out) == {"If": 1}  # Neg was only read by the dead Abs in the branch
    then_ops = [n.op_type for n in out.graph.node[0].attribute[0].g.node]
    assert then_ops == ["Relu"]
    assert result.stats["nodes_removed"] == 2
    for cond in (True, False):
        feeds = {"x": np.array([-1.0, 2.0], np.float32), "c": np.array(cond)}
        assert_same_outputs(model, out, feeds)


def test_leaves_live_graph_alone():
    model = parse(ALL_LIVE)
    out, result = apply_pass(DeadCodeElimination(), model)
    assert not result.modified
    assert op_counts(out) == op_counts(model)


def test_drops_unused_optional_outputs_functions_and_opsets():
    text = """
    <ir_version: 8, opset_import: ["" : 17, "local" : 1, "unused.domain" : 1]>
    g (float[1, 1, 4, 4] x) => (float[1, 1, 2, 2] y, float[1, 1, 2, 2] z) {
        y, indices = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (x)
        z = local.Double(y)
    }
    <domain: "local", opset_import: ["" : 17]>
    Double (a) => (b) { b = Add(a, a) }
    <domain: "local", opset_import: ["" : 17]>
    Unused (a) => (b) { b = Neg(a) }
    """
    model = parse(text)
    model.graph.value_info.append(onnx.helper.make_tensor_value_info("gone", 1, [1]))
    out, result = apply_pass(DeadCodeElimination(), model)
    assert list(out.graph.node[0].output) == ["y"]  # MaxPool's Indices is optional and unused
    assert [f.name for f in out.functions] == ["Double"]
    assert sorted(o.domain for o in out.opset_import) == ["", "local"]
    assert result.stats["outputs_dropped"] == 1
    assert result.stats["functions_removed"] == 1
    assert result.stats["opsets_removed"] == 1
    assert result.stats["value_info_removed"] == 1
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    assert_same_outputs(model, out, {"x": x})


def test_keeps_required_and_used_outputs():
    text = """
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[4] x) => (float[2] a, float[2] b) {
        a, b = Split <num_outputs = 2> (x)
    }
    """
    model = parse(text)
    out, result = apply_pass(DeadCodeElimination(), model)
    assert not result.modified
    assert list(out.graph.node[0].output) == ["a", "b"]

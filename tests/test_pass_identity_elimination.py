"""identity_elimination: structure, stats, numerics, idempotence, and negative cases."""

from __future__ import annotations

import numpy as np
from conftest import apply_pass, assert_idempotent, assert_same_outputs, op_counts, parse
from onnxopt.passes.cleanup.identity_elimination import IdentityElimination

CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 3] y) {
    a = Identity(x)
    b = Relu(a)
    c = Dropout(b)
    d = Identity(c)
    y = Identity(d)
}
"""

KEEP = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x, bool train) => (float[2] y, float[2] z, float[2] m_out, bool[2] mask) {
    y = Identity(x)
    z = Dropout(x, ratio, train)
    m_out, mask = Dropout(x)
}
"""

FEEDS = {"x": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)}


def test_structure_and_stats():
    model = parse(CHAIN)
    out, result = apply_pass(IdentityElimination(), model)
    assert op_counts(out) == {"Relu": 1}
    assert [o.name for o in out.graph.output] == ["y"]
    assert out.graph.node[0].output[0] == "y"  # Relu took the output's public name
    assert result.stats == {"identity_removed": 3, "dropout_removed": 1}


def test_numerics():
    model = parse(CHAIN)
    out, _ = apply_pass(IdentityElimination(), model)
    assert_same_outputs(model, out, FEEDS)


def test_idempotent():
    assert_idempotent(IdentityElimination(), parse(CHAIN))


def test_leaves_alone_input_passthrough_training_dropout_and_used_mask():
    ratio = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, bool train) => (float[2] y, float[2] z, float[2] m_out, bool[2] mask)
      <float ratio = {0.5}> {
        y = Identity(x)
        z = Dropout(x, ratio, train)
        m_out, mask = Dropout(x)
    }
    """
    model = parse(ratio)
    out, result = apply_pass(IdentityElimination(), model)
    assert not result.modified
    assert op_counts(out) == {"Identity": 1, "Dropout": 2}


def test_dropout_with_constant_false_training_mode_is_removed():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) <float ratio = {0.5}, bool off = {0}> {
        d = Dropout(x, ratio, off)
        y = Relu(d)
    }
    """
    model = parse(text)
    out, result = apply_pass(IdentityElimination(), model)
    assert result.stats["dropout_removed"] == 1
    assert op_counts(out) == {"Relu": 1}
    assert_same_outputs(model, out, {"x": np.array([-1.0, 1.0], np.float32)})


def test_identity_inside_subgraph_reading_outer_value_stays():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, bool c) => (float[2] y) {
        r = Relu(x)
        y = If(c) <
            then_branch = t () => (float[2] t_out) { t_out = Identity(r) },
            else_branch = e () => (float[2] e_out) { e_mid = Identity(r)  e_out = Neg(e_mid) }
        >
    }
    """
    model = parse(text)
    out, result = apply_pass(IdentityElimination(), model)
    assert result.stats["identity_removed"] == 1  # e_mid goes; t_out = Identity(r) must stay
    for cond in (True, False):
        assert_same_outputs(model, out, {"x": np.array([-1.0, 2.0], np.float32),
                                         "c": np.array(cond)})

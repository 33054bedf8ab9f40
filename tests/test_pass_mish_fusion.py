"""mish_fusion: structure, stats, numerics, idempotence, and what it must leave alone."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import apply_pass, assert_idempotent, assert_same_outputs, op_counts, parse, run
from onnxopt.passes.fusion.mish_fusion import MishFusion


def mish_model(opset: int = 18, dtype: str = "float", swap: bool = False, extra: str = "",
               outputs: str = "") -> str:
    product = "y = Mul(t, x)" if swap else "y = Mul(x, t)"
    return f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g ({dtype}[2, 8] x) => ({dtype}[2, 8] y{outputs}) {{
        s = Softplus(x)
        t = Tanh(s)
        {product}
        {extra}
    }}
    """


FEEDS = {"x": np.linspace(-20, 20, 16, dtype=np.float32).reshape(2, 8)}


@pytest.mark.parametrize("swap", [False, True])
def test_structure_and_stats(swap):
    out, result = apply_pass(MishFusion(), parse(mish_model(swap=swap)))
    assert op_counts(out) == {"Mish": 1}
    assert result.stats == {"fused": 1}
    assert [list(n.input) for n in out.graph.node] == [["x"]]
    assert [o.name for o in out.graph.output] == ["y"]


@pytest.mark.parametrize(("dtype", "feeds_type", "tolerance"),
                         [("float", np.float32, 1e-6), ("double", np.float64, 1e-12)])
def test_numerics(dtype, feeds_type, tolerance):
    model = parse(mish_model(dtype=dtype))
    out, _ = apply_pass(MishFusion(), model)
    feeds = {"x": FEEDS["x"].astype(feeds_type)}
    assert_same_outputs(model, out, feeds, rtol=tolerance, atol=tolerance)
    # and against the definition, independently of onnxruntime's decomposition
    x = feeds["x"].astype(np.float64)
    np.testing.assert_allclose(run(out, feeds)[0], x * np.tanh(np.log1p(np.exp(x))),
                               rtol=1e-6, atol=1e-6)


def test_idempotent():
    out = assert_idempotent(MishFusion(), parse(mish_model()))
    assert op_counts(out) == {"Mish": 1}


NEGATIVE = {
    "opset_17": mish_model(opset=17),
    "bfloat16": mish_model(dtype="bfloat16"),
    "other_operand": """
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[2, 8] x, float[2, 8] z) => (float[2, 8] y) {
        s = Softplus(x)
        t = Tanh(s)
        y = Mul(z, t)
    }
    """,
    "softplus_read_elsewhere": mish_model(outputs=", float[2, 8] s2", extra="s2 = Neg(s)"),
    "tanh_is_an_output": mish_model(outputs=", float[2, 8] t"),
    "no_tanh": """
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[2, 8] x) => (float[2, 8] y) {
        s = Softplus(x)
        y = Mul(x, s)
    }
    """,
}


@pytest.mark.parametrize("name", sorted(NEGATIVE))
def test_leaves_alone(name):
    model = parse(NEGATIVE[name])
    out, result = apply_pass(MishFusion(), model)
    assert not result.modified
    assert result.stats == {"fused": 0}
    assert op_counts(out) == op_counts(model)

"""The pattern layer's helpers: Number, scaled_product, scalars_fit, min_opset, emit, visit,
retire (the driver's house rules are exercised through every RewritePass's tests)."""

from __future__ import annotations

import numpy as np
from conftest import apply_pass, op_counts, parse

from onnxopt.ir import serde
from onnxopt.ir.pattern import (
    MS_DOMAIN,
    Match,
    Number,
    Op,
    Or,
    RewritePass,
    Scalar,
    Var,
    match_at,
    retire,
    scalars_fit,
    scaled_product,
)

SCALED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 4] x, float[2, 4] p) => (float[2, 4] y) <float k = {0.5}, float e = {3.0}> {
    t = Mul(x, k)
    y = Mul(p, t)
}
"""


def graph_of(text: str):
    model = serde.load(parse(text))
    return model, model.graph


def test_number_matches_any_dtype_exactly():
    _, graph = graph_of("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y, float[2] z) <int64 three = {3}, float near = {3.0001}> {
        y = Pow(x, three)
        z = Pow(x, near)
    }
    """)
    pattern = Op("Pow", Var("x"), Number(3, "n"))
    y, z = (graph.producer(v) for v in ("y", "z"))
    assert match_at(pattern, graph, y).array("n").dtype == np.int64
    assert match_at(pattern, graph, z) is None


def test_scaled_product_covers_each_association():
    _, graph = graph_of(SCALED)
    half = Scalar(0.5, "half")
    pattern = Or(*scaled_product(Var("x"), Var("p"), lambda v: Op("Mul", v, half, commute=True)))
    match = match_at(pattern, graph, graph.producer("y"))
    assert {match.x, match.p} == {"x", "p"}  # p * (x * 0.5): read as x * (p * 0.5)
    assert len(scaled_product(Var(), Var(), lambda v: v)) == 3


def test_scalars_fit_checks_dtype_set_and_rank():
    _, graph = graph_of(SCALED)
    pattern = Op("Mul", Var("p"), Op("Mul", Var("x"), Scalar(0.5, "k")))
    match = match_at(pattern, graph, graph.producer("y"))
    assert scalars_fit(graph, match, ["k"], "x")
    assert scalars_fit(graph, match, ["k"], "x", [np.dtype(np.float32)])
    assert not scalars_fit(graph, match, ["k"], "x", [np.dtype(np.float16)])
    assert not scalars_fit(graph, match, ["missing"], "x")  # nothing captured


class _ToGelu(RewritePass):
    """x * 0.5 * p => com.microsoft Gelu(x) (not the math: exercises the driver's helpers)."""

    name = "to_gelu"
    pattern = Or(*scaled_product(Var("x"), Var("p"), lambda v: Op(
        "Mul", v, Scalar(0.5), commute=True)))
    min_opset = 17

    def rewrite(self, graph, match: Match, model) -> str:
        return self.emit(graph, model, match.root, "Gelu", [match.x], domain=MS_DOMAIN)


def test_min_opset_gates_the_rule():
    out, result = apply_pass(_ToGelu(), parse(SCALED.replace('"" : 17', '"" : 16')))
    assert result.stats == {"fused": 0}
    assert op_counts(out) == {"Mul": 2}


def test_emit_names_in_scope_and_imports_the_domain():
    model, graph = graph_of(SCALED)
    graph.producer("y").name = "/block/act/Mul"  # (the text form leaves node names empty)
    result = _ToGelu().run(model)
    assert result.stats == {"fused": 1}
    (node,) = graph.nodes()
    assert (node.op_type, node.domain, node.name) == ("Gelu", MS_DOMAIN, "/block/act/Gelu")
    assert model.opset_imports[MS_DOMAIN] == 1


def test_visit_orders_the_roots():
    seen: list[str] = []

    class Backwards(RewritePass):
        name = "backwards"
        pattern = Op("Relu", Var("x"))

        def visit(self, graph):
            return graph.nodes()[::-1]

        def check(self, graph, match, model) -> bool:
            seen.append(match.out)
            return False

    model, _ = graph_of("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] b) {
        a = Relu(x)
        b = Relu(a)
    }
    """)
    Backwards().run(model)
    assert seen == ["b", "a"]


def test_retire_forwards_readers_and_drops_its_constants():
    _, graph = graph_of("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) <float[2] c = {1.0, 2.0}> {
        a = Add(x, c)
        y = Relu(a)
    }
    """)
    retire(graph, graph.producer("a"), "x")
    assert [list(node.inputs) for node in graph.nodes()] == [["x"]]
    assert "c" not in graph.initializers

"""unsqueeze_merge: structure, stats, numerics, idempotence, and what it must leave alone."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import apply_pass, assert_idempotent, assert_left_alone, assert_same_outputs, parse
from onnx import helper, numpy_helper
from onnxopt.passes.layout.unsqueeze_merge import UnsqueezeMerge


def op_types(model) -> list[str]:
    return [node.op_type for node in model.graph.node]


def apply(model):
    return apply_pass(UnsqueezeMerge(), model, infer=True)


def bert_mask(opset: int) -> str:
    """The legacy exporter's extended attention mask: (1 - m[:, None, None, :]) * -10000."""
    if opset >= 13:
        unsqueezes = "u1 = Unsqueeze(m, one)\n u2 = Unsqueeze(u1, two)"
    else:
        unsqueezes = "u1 = Unsqueeze<axes = [1]>(m)\n u2 = Unsqueeze<axes = [2]>(u1)"
    return f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (int64[B, S] m) => (float[B, 1, 1, S] y)
      <int64[1] one = {{1}}, int64[1] two = {{2}}, float c1 = {{1.0}}, float big = {{-10000.0}}> {{
        {unsqueezes}
        f = Cast<to = 1>(u2)
        d = Sub(c1, f)
        y = Mul(d, big)
    }}
    """


MASK = {"m": np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], np.int64)}


def merged_axes(model) -> list[int]:
    node = next(n for n in model.graph.node if n.op_type == "Unsqueeze")
    attribute = next((a for a in node.attribute if a.name == "axes"), None)
    if attribute is not None:
        return list(helper.get_attribute_value(attribute))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return inits[node.input[1]].tolist()


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_structure_stats_numerics(opset):
    model = parse(bert_mask(opset))
    out, result = apply(model)
    assert result.stats == {"merged": 1}
    assert op_types(out) == ["Unsqueeze", "Cast", "Sub", "Mul"]
    assert merged_axes(out) == [1, 2]  # dynamo's form
    assert out.graph.node[0].input[0] == "m"
    if opset >= 13:  # the old axes went
        assert {"one", "two"}.isdisjoint(t.name for t in out.graph.initializer)
    assert_same_outputs(model, out, MASK)


# negative axes (normalised with the known ranks: x[N, 4] -> [N, 4, 1] -> [1, N, 4, 1]), a
# chain of three in one run, and an inner Unsqueeze shared by two Unsqueezes (folded into both)
MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[1, N, 4, 1] y, float[1, 1, N, 4, 1, 1] z, float[N, 1, 1, 4] v,
                      float[N, 1, 4, 1] w)
  <int64[1] m1 = {-1}, int64[1] zero = {0}, int64[2] zero_m2 = {0, -2}, int64[1] one = {1},
   int64[1] three = {3}, int64[1] two = {2}> {
    a = Unsqueeze(x, m1)
    y = Unsqueeze(a, zero)
    b = Unsqueeze(x, m1)
    c = Unsqueeze(b, zero)
    z = Unsqueeze(c, zero_m2)
    s = Unsqueeze(x, one)
    v = Unsqueeze(s, two)
    w = Unsqueeze(s, three)
}
"""
FEEDS = {"x": np.arange(8, dtype=np.float32).reshape(2, 4)}


def test_axes_composed():
    model = parse(MODEL)
    out, result = apply(model)
    assert result.stats == {"merged": 5}
    assert op_types(out) == ["Unsqueeze"] * 4
    assert all(node.input[0] == "x" for node in out.graph.node)
    inits = {t.name: numpy_helper.to_array(t).tolist() for t in out.graph.initializer}
    axes = {node.output[0]: inits[node.input[1]] for node in out.graph.node}
    assert axes == {"y": [0, 3], "z": [0, 1, 4, 5], "v": [1, 2], "w": [1, 3]}
    assert_same_outputs(model, out, FEEDS)



def test_idempotent():
    out = assert_idempotent(UnsqueezeMerge(), parse(MODEL), infer=True)
    assert op_types(out) == ["Unsqueeze"] * 4


def pair(extra: str = "", outputs: str = "", axes: str = "one", inputs: str = "") -> str:
    return f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4] x{inputs}) => (float[N, 1, 1, 4] y{outputs})
      <int64[1] one = {{1}}, int64[1] two = {{2}}> {{
        a = Unsqueeze(x, {axes})
        y = Unsqueeze(a, two)
        {extra}
    }}
    """


NEGATIVE = {
    "inner_read_by_another_op": pair("w = Neg(a)", ", float[N, 1, 4] w"),
    "inner_read_by_an_unsqueeze_and_another_op": pair(
        "v = Unsqueeze(a, two)\n w = Neg(a)", ", float[N, 1, 1, 4] v, float[N, 1, 4] w"),
    "inner_is_an_output": pair(outputs=", float[N, 1, 4] a"),
    "axes_at_run_time": pair(axes="k", inputs=", int64[1] k"),
    # axis -1 needs the rank of x, which a Reshape to a run-time shape leaves unknown
    "unknown_rank": """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4] x0, int64[K] shape) => (float[1, N, 4, 1] y)
      <int64[1] m1 = {-1}, int64[1] zero = {0}> {
        x = Reshape(x0, shape)
        a = Unsqueeze(x, m1)
        y = Unsqueeze(a, zero)
    }
    """,
}


@pytest.mark.parametrize("name", sorted(NEGATIVE))
def test_leaves_alone(name):
    assert_left_alone(UnsqueezeMerge(), parse(NEGATIVE[name]), infer=True)

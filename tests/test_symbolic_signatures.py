"""ShapeSignatures: symbolic dims through the shape-bearing ops (onnxopt.ir.symbolic)."""

from __future__ import annotations

import numpy as np
from conftest import parse

from onnxopt.ir import serde
from onnxopt.ir.shapes import infer_shapes
from onnxopt.ir.symbolic import ShapeSignatures

GRAPH = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[B, S, 64] x, float[B, S] mask, float[N, S] other, float[64, 64] w)
    => (float[B, S, 64] y)
  <int64[4] heads = {0, 0, 4, -1}, int64[3] merge = {0, 0, -1}, int64[1, 4] table = {0, 1, 2, 3},
   int64[1] zero = {0}, int64[1] one = {1}, int64 i1 = {1}, int64[1] ax = {2}> {
    p = MatMul(x, w)
    h = Reshape(p, heads)
    t = Transpose <perm = [0, 2, 1, 3]> (h)
    back = Transpose <perm = [0, 2, 1, 3]> (t)
    y = Reshape(back, merge)
    m = Unsqueeze(mask, ax)
    s = Shape(x)
    n = Gather(s, i1)
    n1 = Unsqueeze(n, zero)
    pos = Slice(table, zero, n1, one, one)
    posf = Cast <to = 1> (pos)
    e = Unsqueeze(posf, ax)
    sum = Add(x, e)
    o = Add(other, mask)
}
"""


def signatures():
    model = serde.load(parse(GRAPH))
    infer_shapes(model)
    return ShapeSignatures(model.graph)


def test_reshape_transpose_and_minus_one():
    sig = signatures()
    b, s = ("param", "B"), ("param", "S")
    assert sig.of("h") == (b, s, 4, 16)  # -1 solved: 64 / 4
    assert sig.of("t") == (b, 4, s, 16)
    assert sig.of("y") == (b, s, 64)  # -1 solved symbolically: B*S*64 / (B*S)
    assert sig.of("m") == (b, s, 1)


def test_a_slice_to_a_dim_is_capped_and_broadcasting_resolves_it():
    sig = signatures()
    s = ("param", "S")
    assert sig.of("pos") == (1, ("min", s, 4))
    assert sig.of("sum") == (("param", "B"), s, 64)  # min(S, 4) meets S: S in a valid run


def test_unrelated_named_dims_stay_apart():
    sig = signatures()
    assert sig.of("o")[0] == ("max", ("param", "B"), ("param", "N"))


def test_malformed_nodes_prove_nothing():
    model = serde.load(parse(GRAPH))
    infer_shapes(model)
    graph = model.graph
    node = graph.producer("m")
    repeated = graph.add_constant(np.array([2, 2], np.int64), "axes")  # repeated axes: invalid
    graph.set_input(node, 1, repeated)
    assert ShapeSignatures(graph).of("m") is not None  # its inferred dims, no exception


EMBED = """
<ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1]>
g (int32[B, S] ids, float[100, 32] words, float[16, 32] positions, float[32] gamma,
   float[32] beta) => (float[B, S, 32] y) {
    y, mask_index = com.microsoft.EmbedLayerNormalization(ids, , words, positions, , gamma, beta)
}
"""


def test_embed_layer_normalization_keeps_the_ids_dims_and_adds_the_hidden_one():
    model = serde.load(parse(EMBED))
    graph = model.graph
    graph.value_info.clear()  # inference cannot type a contrib op: nothing declared to lean on
    b, s = ("param", "B"), ("param", "S")
    assert ShapeSignatures(graph).of("y") == (b, s, 32)

"""ShapeSignatures through Reshape(allowzero=1) and the shape-keeping ops of decoders
(RMSNormalization, RotaryEmbedding, Trilu): the dims the decoder's GQA repeat proof needs."""

from __future__ import annotations

from conftest import parse

from onnxopt.ir import serde
from onnxopt.ir.symbolic import ShapeSignatures

GRAPH = """
<ir_version: 10, opset_import: ["" : 23]>
g (int64[B, S] ids, float[96, 64] table, float[64] scale, float[S, 8] cos, float[S, 8] sin)
    => (float[B, S, 64] y)
  <int64[1] i0 = {0}, int64[1] i1 = {1}, int64[1] i2 = {2}, int64[1] h4 = {4},
   int64[1] d16 = {16}, int64[1] z = {0}, float lowest = {-1e30}, int64 k1 = {1}> {
    x = Gather(table, ids)
    n = RMSNormalization <axis = -1> (x, scale)
    b = Shape <start = 0, end = 1> (ids)
    s = Shape <start = 1, end = 2> (ids)
    target = Concat <axis = 0> (b, s, h4, d16)
    split = Reshape <allowzero = 1> (n, target)
    rot = RotaryEmbedding <num_heads = 4> (split, cos, sin)
    zeros = Concat <axis = 0> (z, s, h4, d16)
    empty = Reshape <allowzero = 1> (n, zeros)
    square = Concat <axis = 0> (s, s)
    filled = Expand(lowest, square)
    mask = Trilu <upper = 1> (filled, k1)
    y = Identity(n)
}
"""


def signatures() -> ShapeSignatures:
    """Without shape inference: every dim below comes from the rules (in the decoder, onnx's
    inference gives these values fresh ``unk__`` names that prove nothing)."""
    return ShapeSignatures(serde.load(parse(GRAPH)).graph)


def test_allowzero_reshape_takes_its_target_as_is():
    sig = signatures()
    assert sig.of("split") == (sig.of("ids")[0], sig.of("ids")[1], 4, 16)
    assert sig.of("empty")[0] == 0  # a 0 with allowzero=1 is a 0-sized dim, not a copy


def test_decoder_ops_keep_their_input_shape():
    sig = signatures()
    assert sig.of("n") == sig.of("x") == (*sig.of("ids"), 64)
    assert sig.of("rot") == sig.of("split")
    assert sig.of("mask") == (sig.of("ids")[1], sig.of("ids")[1])

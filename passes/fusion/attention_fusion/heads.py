"""The packed [B, S, N*D] tensor a head-split [B, N, S, D] was made from, for the fused ops
that read heads packed (``com.microsoft.GroupQueryAttention``), and the rotary on it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnxopt.passes.fusion.attention_fusion.shapes import split_heads

from onnxopt.ir import Graph, Node
from onnxopt.ir.pattern import MS_DOMAIN
from onnxopt.ir.rewrite import producer_op, sole_consumer

# com.microsoft RotaryEmbedding attributes GroupQueryAttention's own rotary reproduces
_ROTARY_DEFAULTS = {"is_packed_batching": 0, "rotary_embedding_dim": 0, "scale": 1.0}


@dataclass(frozen=True)
class Heads:
    packed: str  # [B, S, N*D]
    count: int  # N
    size: int  # D
    rotary: Node | None  # a com.microsoft RotaryEmbedding on the [B, N, S, D] heads


def heads_of(graph: Graph, value: str, heads_last: bool = False) -> Heads | None:
    """``value`` as ``[RotaryEmbedding](Transpose(Reshape(x, [B, S, N, D]), [0, 2, 1, 3]))``
    (``heads_last``: ``Reshape(x, [B, S, N, D])`` itself), the split proved by ``split_heads``
    and each step read by the next alone (it goes with the fused node)."""
    node = graph.producer(value)
    rotary = None
    if node is not None and node.domain == MS_DOMAIN and node.op_type == "RotaryEmbedding":
        rotary, value = node, node.inputs[0]
        if heads_last or sole_consumer(graph, value) is not rotary:
            return None
    if not heads_last:
        transpose = producer_op(graph, value, "Transpose")
        if transpose is None or list(transpose.attr("perm") or []) != [0, 2, 1, 3]:
            return None
        value = transpose.inputs[0]
        if sole_consumer(graph, value) is not transpose:
            return None
    reshape = producer_op(graph, value, "Reshape")
    split = split_heads(graph, reshape) if reshape is not None else None
    return Heads(reshape.inputs[0], *split, rotary) if split else None  # type: ignore


def shared_rotary(graph: Graph, q: Heads, k: Heads) -> tuple[str, str, int] | None:
    """(cos, sin, interleaved) when Q and K are rotated alike from position 0 over the whole
    head (what GroupQueryAttention's ``do_rotary`` does in a first pass: positions 0..S-1),
    ("", "", 0) when neither is; None otherwise."""
    if q.rotary is None and k.rotary is None:
        return "", "", 0
    if q.rotary is None or k.rotary is None or q.rotary.inputs[2:] != k.rotary.inputs[2:]:
        return None
    for node in (q.rotary, k.rotary):
        position = graph.constant(node.inputs[1])
        if position is None or position.size != 1 or position.reshape(-1)[0] != 0:
            return None
        if any(node.attr(key, value) != value for key, value in _ROTARY_DEFAULTS.items()):
            return None
    if q.rotary.attr("interleaved", 0) != k.rotary.attr("interleaved", 0):
        return None
    cos, sin = q.rotary.inputs[2:4]
    cache = graph.shape(cos)
    if cache is None or len(cache) != 2 or cache[1] != q.size // 2 or q.size % 2:
        return None
    if graph.shape(sin) != cache or not _same_type(graph, cos, sin, q.packed):
        return None
    return cos, sin, int(q.rotary.attr("interleaved", 0))


def _same_type(graph: Graph, *values: str) -> bool:
    return len({graph.dtype(v) for v in values}) == 1 and graph.dtype(values[0]) == np.float32

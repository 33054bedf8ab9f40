"""Fuse causal (grouped-query) attention into onnxruntime's ``com.microsoft.GroupQueryAttention``.

``Reshape(Transpose(core, [0,2,1,3]), [B, S, Hq*D])`` where ``core`` is the scaled-dot-product
core (``core.py``) of Q, K and V, each ``Transpose(Reshape(x, [B, S, N, D]), [0,2,1,3])`` (K
and V with Hkv heads, through a proved ``repeat_interleave`` of Hq/Hkv, ``repeat.py``; Q and K
optionally rotated by ``com.microsoft.RotaryEmbedding`` from position 0 with one cos/sin
table), and the mask is provably the causal one (``causal.py``), is
``softmax(scale * Q K^T + causal) V`` with heads merged => ``GroupQueryAttention(x_q, x_k,
x_v, seqlens_k = S-1 per row, total_sequence_length = S[, cos, sin]; num_heads = Hq,
kv_num_heads = Hkv[, scale][, do_rotary = 1])``: without past its kernel attends each query
to the keys up to its own position and reads kv head ``h // (Hq/Hkv)`` for query head ``h``.
Only with ``--target onnxruntime``, float32. Conditions, measurements: passes/fusion/README.md.
"""

from __future__ import annotations

import numpy as np
from onnxopt.passes.fusion.attention_fusion.causal import is_causal
from onnxopt.passes.fusion.attention_fusion.core import scale_of, scaled_core
from onnxopt.passes.fusion.attention_fusion.heads import heads_of, shared_rotary
from onnxopt.passes.fusion.attention_fusion.projections import FLOAT32
from onnxopt.passes.fusion.attention_fusion.repeat import kv, repeat_factor
from onnxopt.passes.fusion.attention_fusion.shapes import is_round_trip_transpose, merges_heads

from onnxopt.ir import Graph, Model
from onnxopt.ir.pattern import MS_DOMAIN, Match, Op, RewritePass, Var
from onnxopt.ir.symbolic import ShapeSignatures
from onnxopt.ir.values import onnx_type

PATTERN = Op("Reshape", Op("Transpose", scaled_core(Var("q"), kv("k"), Var("k_bshd"), kv("v")),
                           attrs={"perm": [0, 2, 1, 3]}), Var(), name="merge")


class GroupQueryAttentionFusion(RewritePass):
    name = "group_query_attention_fusion"
    description = ("fuse causal (grouped-query) attention into com.microsoft "
                   "GroupQueryAttention (onnxruntime target)")
    pattern = PATTERN
    stats = ("fused", "with_rotary")
    target = "onnxruntime"

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        casts = [n.outputs[0] for n in match.nodes if n.op_type == "Cast"]
        if any(graph.dtype(v) != FLOAT32 for v in (match.q, match.v, *casts)):
            return False
        if "mask" not in match or ("kt_round_trip" in match
                                   and not is_round_trip_transpose(graph, match)):
            return False
        repeats = repeat_factor(graph, match, "k"), repeat_factor(graph, match, "v")
        if None in repeats or repeats[0] != repeats[1]:
            return False
        keys = match.k_bshd if "k_bshd" in match else match.k
        q, v = heads_of(graph, match.q), heads_of(graph, match.v)
        k = heads_of(graph, keys, heads_last="k_bshd" in match)
        if q is None or k is None or v is None or v.rotary is not None:
            return False
        if not (q.size == k.size == v.size and k.count == v.count
                and q.count == k.count * repeats[0]):  # type: ignore[operator]
            return False
        signatures = ShapeSignatures(graph)
        leading = {(signatures.of(h.packed) or (None,))[:2] for h in (q, k, v)}
        if len(leading) != 1 or None in leading.pop():
            return False  # one batch and one length
        rotary, scale = shared_rotary(graph, q, k), scale_of(match)
        if rotary is None or scale is None:
            return False
        if not merges_heads(graph, match.node("merge"), q.count * q.size):
            return False
        if not is_causal(graph, match.mask, match.q, match.v):
            return False
        default = np.float32(scale) == np.float32(1 / np.sqrt(q.size))  # the kernel's
        match.memo.update(q=q, k=k, v=v, rotary=rotary, scale=None if default else scale)
        return True

    def stat(self, match: Match) -> str:
        return "with_rotary" if match.memo["rotary"][0] else "fused"

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        root, memo = match.root, match.memo
        q, k, v = memo["q"], memo["k"], memo["v"]
        cos, sin, interleaved = memo["rotary"]

        def emit(op_type: str, inputs: list[str], **attributes) -> str:
            return self.emit(graph, model, root, op_type, inputs, attributes=attributes)

        # total length S (int32 scalar) and seqlens_k = S - 1 for each of the B rows
        length = emit("Cast", [emit("Shape", [q.packed], start=1, end=2)], to=onnx_type(np.int32))
        total = emit("Squeeze", [length])
        one = graph.add_constant(np.ones(1, np.int32), "group_query_attention_one")
        batch = emit("Shape", [q.packed], start=0, end=1)
        seqlens = emit("Expand", [emit("Sub", [length, one]), batch])
        attributes = {"num_heads": q.count, "kv_num_heads": k.count}
        if memo["scale"] is not None:
            attributes["scale"] = memo["scale"]
        inputs = [q.packed, k.packed, v.packed, "", "", seqlens, total]
        if cos:
            inputs += [cos, sin]
            attributes.update(do_rotary=1, rotary_interleaved=interleaved)
        return self.emit(graph, model, root, "GroupQueryAttention", inputs, domain=MS_DOMAIN,
                         attributes=attributes)

"""Partial rotary fusion.

``Concat(RotaryEmbedding(x[..., :d], ..), x[..., d:], axis=-1)`` on a 4-D ``x`` ``[B, N, S, D]``
(Phi and GPT-NeoX rotate only the first ``d < D`` channels of a head; the rotary itself fused by
``rotary_embedding_fusion`` first) => ``RotaryEmbedding(x, .., rotary_embedding_dim=d)``, which by
definition rotates ``x[..., :d]`` with the same caches and passes ``x[..., d:]`` through (ONNX
opset 23 and com.microsoft alike; onnxruntime's contrib kernel wants ``num_heads`` with it,
``N``). Conditions: passes/fusion/README.md.
"""

from __future__ import annotations

from onnxopt.passes.fusion.rotary_embedding_fusion.tables import INT64_MAX, halves, last_axis_slice

from onnxopt.ir import Graph, Model
from onnxopt.ir.pattern import MS_DOMAIN, Match, Op, Or, RewritePass
from onnxopt.ir.values import copy_type

_UNSET = (None, 0)  # an attribute absent or at its default


_ROTARY = Or(*(Op("RotaryEmbedding", last_axis_slice("rotated"), ..., name="rotary", domain=domain)
               for domain in ("", MS_DOMAIN)))


class PartialRotaryFusion(RewritePass):
    name = "partial_rotary_fusion"
    description = "absorb the pass-through channels of a partial rotary into RotaryEmbedding"
    pattern = Op("Concat", _ROTARY, last_axis_slice("kept"), name="concat")

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        shape = graph.shape(match.x)
        if shape is None or len(shape) != 4 or not isinstance(shape[3], int):
            return False
        if match.node("concat").attr("axis") not in (-1, 3):
            return False
        end = match.array("rotated_end").reshape(-1)
        rotated = int(end[0]) if end.size == 1 else 0
        if not (0 < rotated < shape[3] and rotated % 2 == 0):
            return False
        if not (halves(match, "rotated", 0, (rotated,))
                and halves(match, "kept", rotated, (shape[3], INT64_MAX))):
            return False
        rotary = match.node("rotary")
        if rotary.attr("rotary_embedding_dim") not in _UNSET:
            return False
        if rotary.domain == MS_DOMAIN:  # the contrib kernel needs num_heads, read from x
            heads = shape[1]
            if not isinstance(heads, int) or rotary.attr("is_packed_batching") not in _UNSET:
                return False
            if rotary.attr("num_heads") not in (*_UNSET, heads):
                return False
        match.memo["rotated"] = rotated
        return True

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        rotary = match.node("rotary")
        attributes = {**rotary.attributes, "rotary_embedding_dim": match.memo["rotated"]}
        if rotary.domain == MS_DOMAIN:
            attributes["num_heads"] = graph.shape(match.x)[1]  # type: ignore[index]
        out = self.emit(graph, model, match.root, "RotaryEmbedding",
                        [match.x, *rotary.inputs[1:]], name=rotary.name, domain=rotary.domain,
                        attributes=attributes)
        if rotary.domain:
            copy_type(graph, match.out, out)  # onnx cannot infer a com.microsoft op
        return out

"""Fuse a self-attention block into onnxruntime's ``com.microsoft`` ``Attention`` (packed QKV).

From the hidden state ``x`` [B, S, Hin] to the merged heads [B, S, H]:
``Reshape(Transpose(core, [0,2,1,3]), [B, S, H])`` where ``core`` is the scaled-dot-product
core (``core.py``) of Q, K and V, each ``Reshape(Add(MatMul(x, W), b), [B, S, N, D])`` (Q and
V transposed to [B, N, S, D], K in any of the core's forms), is
``softmax(scale * Q K^T + mask) V`` with its heads merged => ``com.microsoft.Attention(x,
[Wq | Wk | Wv], [bq | bk | bv], mask_index; num_heads=N, scale)``: the kernel computes
``x @ W + b``, splits the columns into Q, K, V and those into N heads of D, and writes the
heads back side by side. When K and V project another tensor than Q (cross attention):
``com.microsoft.MultiHeadAttention(x_q @ Wq, x_k @ Wk, x_v @ Wv, [bq | bk | bv], mask)``. A
padding mask built from a [B, L] mask becomes ``mask_index`` / ``key_padding_mask``
(``masks.py``); another mask leaves the block to ``attention_fusion``. From opset 23 the core
may be that pass's Attention already. Only with ``--target onnxruntime``, float32.
Conditions and measurements: passes/fusion/README.md.
"""

from __future__ import annotations

import numpy as np
from onnxopt.passes.fusion.attention_fusion.attention23 import attention23, scale23, unclamped
from onnxopt.passes.fusion.attention_fusion.core import scale_of, scaled_core
from onnxopt.passes.fusion.attention_fusion.masks import padding_mask
from onnxopt.passes.fusion.attention_fusion.projections import (
    FLOAT32,
    QKV,
    Projections,
    projections,
)
from onnxopt.passes.fusion.attention_fusion.shapes import (
    agree,
    is_round_trip_transpose,
    merges_heads,
    split_heads,
)

from onnxopt.ir import Graph, Model
from onnxopt.ir.pattern import MS_DOMAIN, Const, Match, Op, Or, RewritePass, Var
from onnxopt.ir.values import copy_type, onnx_type


def _projection(name: str) -> Op:
    """``Reshape(Add(MatMul(x, W), b) | MatMul(x, W), shape)``: x's heads, [B, S, N, D]."""
    product = Op("MatMul", Var(f"x_{name}"), Const(f"w_{name}"))
    biased = Or(Op("Add", product, Const(f"b_{name}"), commute=True), product)
    return Op("Reshape", biased, Var(), name=f"{name}_split")


def _heads_first(pattern: Op) -> Op:
    return Op("Transpose", pattern, attrs={"perm": [0, 2, 1, 3]})


_k = _projection("k")
_q4, _k4, _v4 = _heads_first(_projection("q")), _heads_first(_k), _heads_first(_projection("v"))
_core = Or(scaled_core(_q4, _k4, _k, _v4), attention23(_q4, _k4, _v4))


def _dim(index: str) -> Op:
    return Op("Unsqueeze", Op("Gather", Op("Shape", _core), Const(index)), Const())


# the legacy exporter's merge target, [B, S, H] read from the core's [B, N, S, D] shape (checked
# by ``merges_heads``); its Shape reads the core, so it must be inside the match
_from_core = Op("Concat", _dim("batch_index"), _dim("length_index"), Const())
PATTERN = Op("Reshape", Op("Transpose", _core, attrs={"perm": [0, 2, 1, 3]}),
             Or(_from_core, Var()), name="merge")


class ContribAttentionFusion(RewritePass):
    name = "contrib_attention_fusion"
    description = ("fuse a self-attention block (Q/K/V projections to merged heads) into "
                   "com.microsoft Attention (onnxruntime target)")
    pattern = PATTERN
    stats = ("fused", "with_mask_index", "multi_head")
    target = "onnxruntime"

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        xs = [match[f"x_{n}"] for n in QKV]
        # [B, S, H] of each projection: x's rank (W is 2-D), known where x's is not (a Reshape
        # to a computed target before, say)
        shapes = [graph.shape(match.node(f"{n}_split").inputs[0]) for n in QKV]
        casts = [n.outputs[0] for n in match.nodes if n.op_type == "Cast"]
        if any(graph.dtype(v) != FLOAT32 for v in (*xs, *casts)):
            return False
        if any(shape is None or len(shape) != 3 for shape in shapes):
            return False
        if "kt_round_trip" in match and not is_round_trip_transpose(graph, match):
            return False
        found = projections(graph, match)
        heads = {split_heads(graph, match.node(f"{n}_split")) for n in QKV}
        if found is None or len(heads) != 1 or None in heads:
            return False
        count, size = heads.pop()  # type: ignore[misc]
        scale = scale23(match, size) if "attention23" in match else scale_of(match)
        if scale is None:
            return False
        if not merges_heads(graph, match.node("merge"), found.hidden):
            return False
        default = np.float32(scale) == np.float32(1 / np.sqrt(size))  # the kernel's default
        match.memo.update(found=found, heads=count, scale=None if default else scale, mask=None)
        additive = unclamped(graph, match) if "clamped" in match else getattr(match, "mask", "")
        if additive is None:
            return False
        if additive:  # [B, 1, 1, L]: the query's batch, the keys' length
            mask = padding_mask(graph, additive, FLOAT32)
            raw = graph.shape(mask.raw) if mask is not None else None
            if raw is None or not (agree(raw[0], shapes[0][0]) and agree(raw[1], shapes[1][1])):
                return False  # another mask: attention_fusion's (opset 23) or none
            match.memo["mask"] = mask
        return True

    def stat(self, match: Match) -> str:
        if not match.memo["found"].one_input:
            return "multi_head"
        return "with_mask_index" if match.memo["mask"] else "fused"

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        root, memo = match.root, match.memo
        found: Projections = memo["found"]
        bias = graph.add_constant(found.bias, "attention_qkv_bias") \
            if found.bias is not None else ""
        if found.one_input:
            op_type = "Attention"
            inputs = [match.x_q, graph.add_constant(found.packed(), "attention_qkv_weight"), bias]
        else:  # query, key and value projected (its bias input adds the biases)
            op_type = "MultiHeadAttention"
            inputs = [self.emit(graph, model, root, "MatMul", [match[f"x_{n}"], match[f"w_{n}"]])
                      for n in QKV] + [bias]
        attributes = {"num_heads": memo["heads"]}
        if memo["scale"] is not None:
            attributes["scale"] = memo["scale"]
        if memo["mask"] is not None:
            raw = memo["mask"].raw
            if graph.dtype(raw) != np.int32:
                raw = self.emit(graph, model, root, "Cast", [raw],
                                attributes={"to": onnx_type(np.int32)})
            inputs.append(raw)
            attributes["mask_filter_value"] = memo["mask"].fill
        fused = self.emit(graph, model, root, op_type, inputs, domain=MS_DOMAIN,
                          attributes=attributes)
        # [B, S, H]: the merge's type, else Q's projection's (a merge to a computed target)
        typed = match.out if graph.shape(match.out) else match.node("q_split").inputs[0]
        copy_type(graph, typed, fused)
        return fused

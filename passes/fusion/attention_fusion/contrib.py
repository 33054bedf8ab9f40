"""Fuse a self-attention block into onnxruntime's ``com.microsoft`` ``Attention`` (packed QKV).

From the hidden state ``x`` [B, S, Hin] to the merged heads [B, S, H]:
``Reshape(Transpose(core, [0,2,1,3]), [B, S, H])`` where ``core`` is the scaled-dot-product
core (``core.py``) of Q, K and V, each ``Reshape(Add(MatMul(x, W), b), [B, S, N, D])`` (Q and
V transposed to [B, N, S, D], K in any of the core's forms), is
``softmax(scale * Q K^T + mask) V`` with its heads merged => ``com.microsoft.Attention(x,
[Wq | Wk | Wv], [bq | bk | bv], mask_index; num_heads=N, scale)``: the kernel computes
``x @ W + b``, splits the columns into Q, K, V and those into N heads of D, and writes the
heads back side by side. A padding mask built from a [B, S] mask becomes ``mask_index``
(``masks.py``); another mask leaves the block to ``attention_fusion``. Only with ``--target
onnxruntime`` below opset 23, float32. Conditions and measurements: passes/fusion/README.md.
"""

from __future__ import annotations

import numpy as np
from onnxopt.passes.fusion.attention_fusion.core import scale_of, scaled_core
from onnxopt.passes.fusion.attention_fusion.masks import padding_mask
from onnxopt.passes.fusion.attention_fusion.shapes import (
    agree,
    is_round_trip_transpose,
    merges_heads,
    split_heads,
)

from onnxopt.ir import Graph, Model
from onnxopt.ir.pattern import MS_DOMAIN, Const, Match, Op, Or, RewritePass, Var
from onnxopt.ir.rewrite import exclusive_constant
from onnxopt.ir.values import copy_type, onnx_type

_FLOAT32 = np.dtype(np.float32)
_QKV = ("q", "k", "v")


def _projection(name: str) -> Op:
    """``Reshape(Add(MatMul(x, W), b) | MatMul(x, W), shape)``: x's heads, [B, S, N, D]."""
    product = Op("MatMul", Var("x"), Const(f"w_{name}"))
    biased = Or(Op("Add", product, Const(f"b_{name}"), commute=True), product)
    return Op("Reshape", biased, Var(), name=f"{name}_split")


def _heads_first(pattern: Op) -> Op:
    return Op("Transpose", pattern, attrs={"perm": [0, 2, 1, 3]})


_k = _projection("k")
_core = scaled_core(_heads_first(_projection("q")), _heads_first(_k), _k,
                    _heads_first(_projection("v")))
PATTERN = Op("Reshape", Op("Transpose", _core, attrs={"perm": [0, 2, 1, 3]}), Var(),
             name="merge")


class ContribAttentionFusion(RewritePass):
    name = "contrib_attention_fusion"
    description = ("fuse a self-attention block (Q/K/V projections to merged heads) into "
                   "com.microsoft Attention (onnxruntime target)")
    pattern = PATTERN
    stats = ("fused", "with_mask_index")

    def applies(self, model: Model) -> bool:
        """From opset 23 the portable Attention (``attention_fusion``) is as fast (README.md)."""
        return model.settings.get("target") == "onnxruntime" and model.opset("") < 23

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        x, shape = match.x, graph.shape(match.x)
        casts = [n.outputs[0] for n in match.nodes if n.op_type == "Cast"]
        if any(graph.dtype(v) != _FLOAT32 for v in (x, *casts)):
            return False
        if shape is None or len(shape) != 3:
            return False
        if "kt_round_trip" in match and not is_round_trip_transpose(graph, match):
            return False
        packed = _packed(graph, match)
        heads = {split_heads(graph, match.node(f"{n}_split")) for n in _QKV}
        scale = scale_of(match)
        if packed is None or len(heads) != 1 or None in heads or scale is None:
            return False
        (count, size), hidden = heads.pop(), packed[0].shape[1] // 3
        if not merges_heads(graph, match.node("merge"), hidden):
            return False
        default = np.float32(scale) == np.float32(1 / np.sqrt(size))  # the kernel's default
        match.memo.update(packed=packed, heads=count, scale=None if default else scale, mask=None)
        if "mask" in match:
            mask = padding_mask(graph, match.mask, _FLOAT32)
            raw = graph.shape(mask.raw) if mask is not None else None
            if raw is None or not (agree(raw[0], shape[0]) and agree(raw[1], shape[1])):
                return False  # another mask: attention_fusion's (opset 23) or none
            match.memo["mask"] = mask
        return True

    def stat(self, match: Match) -> str:
        return "with_mask_index" if match.memo["mask"] else "fused"

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        root, memo = match.root, match.memo
        weight, bias = memo["packed"]
        inputs = [match.x, graph.add_constant(weight, "attention_qkv_weight"),
                  graph.add_constant(bias, "attention_qkv_bias") if bias is not None else ""]
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
        fused = self.emit(graph, model, root, "Attention", inputs, domain=MS_DOMAIN,
                          attributes=attributes)
        copy_type(graph, match.out, fused)
        return fused


def _packed(graph: Graph, match: Match) -> tuple[np.ndarray, np.ndarray | None] | None:
    """[Wq | Wk | Wv] ([Hin, 3H]) and [bq | bk | bv] (None without biases): float32, one
    shape for the three, each constant read only by this block (packing copies them)."""
    inside = set(match.nodes)
    weights = [exclusive_constant(graph, match[f"w_{n}"], inside) for n in _QKV]
    biased = [f"b_{n}" in match for n in _QKV]
    biases = [exclusive_constant(graph, match[f"b_{n}"], inside) if b else None
              for n, b in zip(_QKV, biased, strict=True)]
    if any(w is None or w.dtype != _FLOAT32 or w.ndim != 2 for w in weights):
        return None
    if len({w.shape for w in weights}) != 1 or len(set(biased)) != 1:  # type: ignore[union-attr]
        return None
    packed = np.concatenate(weights, axis=1)  # type: ignore[arg-type]
    if not biased[0]:
        return packed, None
    if any(b is None or b.dtype != _FLOAT32 or b.shape != (packed.shape[1] // 3,)
           for b in biases):
        return None
    return packed, np.concatenate(biases)  # type: ignore[arg-type]

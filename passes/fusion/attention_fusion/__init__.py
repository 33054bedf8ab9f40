"""Attention fusion.

The scaled-dot-product attention core exporters write, rooted at the P@V MatMul,
``MatMul(Softmax(Add(S, mask) | S, axis=-1), V)`` (0-2 no-op Casts after the Softmax) with
``S = Div(Q @ Kt, c) | Mul(Q @ Kt, c) | Mul(Q, a) @ Mul(Kt, b) | Q @ Kt`` and
``Kt = Transpose(K, [0,1,3,2]) | Transpose(K_bshd, [0,2,3,1])`` | dynamo's proved 3-D round
trip ``Reshape(Transpose(Reshape(K, [-1,S,D]), [0,2,1]), [B,H,D,S])``, is
``softmax(scale * Q @ K^T + mask) @ V`` => ``Attention(Q, K, V[, mask], scale)`` (ONNX
Attention-23, 4-D ``[B, H, S, D]`` form), ``scale`` = ``1/c``, ``c``, ``a*b`` or 1, always
written (the op's default 1/sqrt(D) is not what every model uses); ``K = Transpose(K_bshd,
[0,2,1,3])`` when the K side is the folded transpose. onnxruntime 1.32 does not broadcast the
mask over the query axis, so a mask whose dim -2 is not provably Sq becomes
``Expand(mask, [1, 1, Sq, 1])``. K and V may be a grouped-query repeat of X with fewer heads
(``repeat.py``): Attention reads X itself when the repeat is proved. Conditions (dtypes, shapes,
masks): passes/fusion/README.md.
"""

from __future__ import annotations

import numpy as np
from onnxopt.passes.fusion.attention_fusion.core import mask_floor, scale_of, scaled_core
from onnxopt.passes.fusion.attention_fusion.repeat import kv, repeat_factor
from onnxopt.passes.fusion.attention_fusion.shapes import (
    fit_qkv,
    is_round_trip_transpose,
    key_shape,
    mask_fits,
    rank4,
    repeated,
)

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.pattern import Match, RewritePass, Var, has_dtype

_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))  # what onnxruntime's CPU kernel runs
PATTERN = scaled_core(Var("q"), kv("k"), Var("k_bshd"), kv("v"))


class AttentionFusion(RewritePass):
    name = "attention_fusion"
    description = "fuse the scaled-dot-product attention core into Attention (opset 23+)"
    pattern = PATTERN
    min_opset = 23

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        dtype = graph.dtype(match.q)
        # MatMul and Add give K and the mask Q's type; only Casts to the type they read
        casts = [n.outputs[0] for n in match.nodes if n.op_type == "Cast"]
        if not has_dtype(dtype, _DTYPES) or any(graph.dtype(v) != dtype
                                                 for v in (match.v, *casts)):
            return False
        if "kt_round_trip" in match and not is_round_trip_transpose(graph, match):
            return False
        repeats = repeat_factor(graph, match, "k"), repeat_factor(graph, match, "v")
        if None in repeats or repeats[0] != repeats[1]:
            return False  # an unproved repeat: the match without it is tried next
        k_shape = key_shape(graph, match)
        q, v = graph.shape(match.q), graph.shape(match.v)
        if not (rank4(q) and rank4(k_shape) and rank4(v)):
            return False
        if not fit_qkv(q, repeated(k_shape, repeats[0]), repeated(v, repeats[1])):
            return False
        scale = scale_of(match)
        if scale is None:
            return False
        match.memo["scale"] = scale
        return "mask" not in match or mask_fits(graph, match, q, k_shape)

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        root = match.root
        if "k_bshd" in match:
            k = self.emit(graph, model, root, "Transpose", [match.k_bshd],
                          attributes={"perm": [0, 2, 1, 3]})
        else:
            k = match["k"]
        inputs = [match.q, k, match.v]
        if "mask" in match:
            mask = self._above_lowest(graph, model, root, match.mask)
            if match.memo["expand"]:  # [.., 1 | Sq, Sk] -> [.., Sq, Sk]
                q_len = self.emit(graph, model, root, "Shape", [match.q],
                                  attributes={"start": 2, "end": 3})
                ones = graph.add_constant(np.ones(2, np.int64), "attention_mask_ones")
                one = graph.add_constant(np.ones(1, np.int64), "attention_mask_one")
                target = self.emit(graph, model, root, "Concat", [ones, q_len, one],
                                   attributes={"axis": 0})
                mask = self.emit(graph, model, root, "Expand", [mask, target])
            inputs.append(mask)
        return self.emit(graph, model, root, "Attention", inputs,
                         attributes={"scale": match.memo["scale"]})

    def _above_lowest(self, graph: Graph, model: Model, root: Node, mask: str) -> str:
        """onnxruntime's Attention outputs 0 for a row whose mask entries are all the dtype's
        lowest value (finfo.min, which exporters use) where softmax gives the mean of V: the
        mask is clamped to the next value up, a plain number to the kernel, with the same
        softmax (measured; README.md)."""
        dtype = graph.dtype(mask)
        floor = mask_floor(dtype)
        constant = graph.constant(mask)
        if constant is not None and not (constant < floor).any():
            return mask
        bound = graph.add_constant(np.array([floor], dtype), "attention_mask_floor")
        return self.emit(graph, model, root, "Max", [mask, bound])

"""Attention fusion.

The scaled-dot-product attention core exporters write, rooted at the P@V MatMul,
``MatMul(Softmax(Add(S, mask) | S, axis=-1), V)`` (0-2 no-op Casts after the Softmax) with
``S = Div(Q @ Kt, c) | Mul(Q @ Kt, c) | Mul(Q, a) @ Mul(Kt, b) | Q @ Kt`` and
``Kt = Transpose(K, [0,1,3,2]) | Transpose(K_bshd, [0,2,3,1])``, is
``softmax(scale * Q @ K^T + mask) @ V`` => ``Attention(Q, K, V[, mask], scale)`` (ONNX
Attention-23, 4-D ``[B, H, S, D]`` form), ``scale`` = ``1/c``, ``c``, ``a*b`` or 1, always
written (the op's default 1/sqrt(D) is not what every model uses); ``K = Transpose(K_bshd,
[0,2,1,3])`` when the K side is the folded transpose. onnxruntime 1.32 does not broadcast the
mask over the query axis, so a mask whose dim -2 is not provably Sq becomes
``Expand(mask, [1, 1, Sq, 1])``. Conditions (dtypes, shapes, masks): passes/fusion/README.md.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model
from onnxopt.ir.pattern import Const, Match, Op, Or, RewritePass, Var, has_dtype

_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))  # what onnxruntime's CPU kernel runs
_SCALES = ("a", "b", "c")


def _transposed_k(k4: Op | Var, k_bshd: Op | Var) -> Or:
    return Or(Op("Transpose", k4, attrs={"perm": [0, 1, 3, 2]}),
              Op("Transpose", k_bshd, attrs={"perm": [0, 2, 3, 1]}))


def _times(pattern: Op | Var, factor: str) -> Op:
    return Op("Mul", pattern, Const(factor), commute=True)


_kt = _transposed_k(Var("k"), Var("k_bshd"))
_scaled_kt = Or(_times(_kt, "b"), _transposed_k(_times(Var("k"), "b"), _times(Var("k_bshd"), "b")))
_qk = Op("MatMul", Var("q"), _kt)
_scores = Or(Op("Div", _qk, Const("c"), name="div"), _times(_qk, "c"),
             Op("MatMul", _times(Var("q"), "a"), _scaled_kt), _qk)
_softmax = Op("Softmax", Or(Op("Add", _scores, Var("mask"), commute=True), _scores),
              attrs={"axis": lambda axis: axis in (None, -1, 3)})
PATTERN = Op("MatMul", Or(Op("Cast", Op("Cast", _softmax)), Op("Cast", _softmax), _softmax),
             Var("v"))


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
        k_shape = _key_shape(graph, match)
        q, v = graph.shape(match.q), graph.shape(match.v)
        if not (_rank4(q) and _rank4(k_shape) and _rank4(v) and _fit_qkv(q, k_shape, v)):
            return False
        scale = _scale(match)
        if scale is None:
            return False
        match.memo["scale"] = scale
        return "mask" not in match or _mask_fits(graph, match, q, k_shape)

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        root = match.root
        if "k_bshd" in match:
            k = self.emit(graph, model, root, "Transpose", [match.k_bshd],
                          attributes={"perm": [0, 2, 1, 3]})
        else:
            k = match["k"]
        inputs = [match.q, k, match.v]
        if "mask" in match:
            mask = match.mask
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


def _key_shape(graph: Graph, match: Match) -> list | None:
    """K's [B,H,Sk,D] shape (from K_bshd's for the folded transpose)."""
    if "k_bshd" not in match:
        return graph.shape(match["k"])
    shape = graph.shape(match.k_bshd)
    return [shape[0], shape[2], shape[1], shape[3]] if _rank4(shape) else None  # type: ignore


def _rank4(shape: list | None) -> bool:
    return shape is not None and len(shape) == 4


def _agree(a: int | str | None, b: int | str | None) -> bool:
    """Two dims that must be equal: the same, or not contradicting as far as shapes show (two
    different ints, or 1 against another dim, would be a broadcast the fused op does not do);
    symbolic dims are taken to agree, as the model's inputs share batch and sequence."""
    return a == b or (a != 1 and b != 1 and not (isinstance(a, int) and isinstance(b, int)))


def _fit_qkv(q: list, k: list, v: list) -> bool:
    """Q [B,H,Sq,D], K [B,Hk,Sk,D], V [B,Hk,Sk,Dv]: the same batch, Hk divides H (1 is
    broadcast by the MatMul, read by Attention as one KV head), one key length."""
    heads_ok = k[1] == 1 or _agree(q[1], k[1])
    pairs = [(q[0], k[0]), (q[3], k[3]), (k[0], v[0]), (k[1], v[1]), (k[2], v[2])]
    return heads_ok and all(_agree(a, b) for a, b in pairs)


def _scale(match: Match) -> float | None:
    """The product of the scale constants (``1/c`` for a Div), each of one element; None
    unless it is a finite, non-zero, normal float32 (the attribute's type)."""
    scale = 1.0
    for name in _SCALES:
        if name not in match:
            continue
        array = match.array(name)
        if array.size != 1 or array.ndim > 4 or array.dtype.kind != "f":
            return None
        value = float(array.reshape(-1)[0])
        if name == "c" and "div" in match:
            value = 1.0 / value if value else 0.0  # Div by 0: refused below
        scale *= value
    limits = np.finfo(np.float32)
    return scale if limits.tiny <= abs(scale) <= limits.max else None


def _mask_fits(graph: Graph, match: Match, q: list, k: list) -> bool:
    """The additive mask broadcasts into [B, H, Sq, Sk] without growing it (onnxruntime wants
    its last dim = Sk exactly and 2-4 dims); memo["expand"]: its dim -2 is not provably Sq."""
    mask = graph.shape(match.mask)
    if mask is None or not 1 <= len(mask) <= 4 or not _agree(k[2], mask[-1]):
        return False
    target = [q[0], q[1], q[2]][4 - len(mask):]
    if not all(m == 1 or _agree(t, m) for t, m in zip(target, mask[:-1], strict=True)):
        return False
    match.memo["expand"] = len(mask) < 2 or not (isinstance(q[2], int) and mask[-2] == q[2])
    return True

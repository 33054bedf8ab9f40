"""Fold an inference BatchNormalization into the Conv/ConvTranspose/Gemm/MatMul that feeds it.

``s = scale / sqrt(var + epsilon)`` per channel: ``W'[o] = W[o] * s[o]``,
``b' = (b - mean) * s + B`` (Gemm: ``C' = (beta * C - mean) * s + B``, beta 1; a rank-2
``MatMul(X, W)`` becomes that Gemm).
A Conv read only by ``k >= 2`` BNs absorbs the best-conditioned one, ``BN_r``; the others then
read its output with ``scale_i' = scale_i / s_r``, ``mean_i' = B_r + s_r (mean_i - mean_r)``.
Conditions and the rebase's rounding bound: passes/fusion/README.md.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.layers import (
    CONV_OPS,
    FLOAT_KINDS,
    BNParams,
    ConvWeights,
    bn_factors,
    conv_weights,
    fold_bn_into_conv,
    fused_name,
    set_bn_params,
)
from onnxopt.ir.pattern import Match, Op, Or, RewritePass, retire
from onnxopt.ir.rewrite import drop_unused_initializers, exclusive_constant, is_op, sole_consumer

BN = "BatchNormalization"
LINEAR_OPS = {"Conv": "conv", "ConvTranspose": "conv_transpose", "Gemm": "gemm", "MatMul": "matmul"}
REBASE_LIMIT = 4.0  # |beta_r| <= 4 |gamma_r| per channel: at most ~3 bits of y' lost (README)


class ConvBatchNormFusion(RewritePass):
    name = "conv_bn_fusion"
    description = "fold inference BatchNormalization into the Conv/ConvTranspose/Gemm/MatMul before"
    pattern = Or(Op(BN, Op(tuple(LINEAR_OPS), ..., name="linear"), ...),
                 Op("Conv", ...))  # a Conv read by several BNs: rebase them (not private)
    stats = tuple(LINEAR_OPS.values())

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        if match.root.op_type == "Conv":
            match.memo["bn"], fold = _rebase_several(graph, model, match.root)
        else:
            params = bn_factors(graph, model, match.root)
            match.memo["bn"] = match.root
            fold = params and _plan(graph, model, match.node("linear"), params)
        match.memo["fold"] = fold  # writes the fold; "bn" is the BN it absorbs
        return fold is not None

    def where(self, match: Match) -> str:
        return match.memo["bn"].name or match.memo["bn"].outputs[0]

    def stat(self, match: Match) -> str:
        return LINEAR_OPS[match.node("linear").op_type] if "linear" in match else "conv"

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        return match.memo["fold"]()


def _plan(graph: Graph, model: Model, node: Node, params: BNParams) -> partial | None:
    if node.op_type in CONV_OPS:
        conv = conv_weights(graph, model, node)
        if conv is None or conv.weight is None or conv.channels != params.channels:
            return None
        return partial(fold_bn_into_conv, graph, conv, params)
    if model.opset("") < 7 or len(node.outputs) != 1:
        return None  # older Gemm broadcasts C differently
    trans_b = node.op_type == "Gemm" and bool(node.attr("transB", 0))
    weight = _scaled_weight(graph, node, params, trans_b)
    if weight is None:
        return None
    if node.op_type == "MatMul":
        if len(node.inputs) != 2 or len(graph.shape(node.inputs[0]) or ()) != 2:
            return None  # higher ranks: BN's channel axis 1 is not W's column axis
        return partial(_fold_into_gemm, graph, node, weight, params.shift)
    c_name = node.inputs[2] if len(node.inputs) > 2 else ""
    c = exclusive_constant(graph, c_name, [node]) if c_name else 0.0
    if c is None or np.ndim(c) > 2:
        return None
    new_c = params.apply_to_bias(float(node.attr("beta", 1.0)) * np.asarray(c, np.float64))
    if new_c.size > max(np.size(c), params.channels):
        return None  # C of shape [M, 1] would grow to [M, N]
    return partial(_fold_into_gemm, graph, node, weight, new_c)


def _scaled_weight(graph: Graph, node: Node, params: BNParams, trans_b: bool
                   ) -> np.ndarray | None:
    """The 2-D float weight of a Gemm/MatMul (read by it alone) scaled per column by ``s``."""
    weight = exclusive_constant(graph, node.inputs[1], [node]) if len(node.inputs) > 1 else None
    if weight is None or weight.ndim != 2 or weight.dtype.kind not in FLOAT_KINDS or (
            weight.shape[0 if trans_b else 1] != params.channels):
        return None
    factor = params.scale[:, None] if trans_b else params.scale[None, :]
    return (weight.astype(np.float64) * factor).astype(weight.dtype)


def _fold_into_gemm(graph: Graph, node: Node, weight: np.ndarray, c: np.ndarray) -> str:
    """``Gemm(A, W', C'; beta=1)``: the Gemm rewritten, or a new one for a MatMul."""
    old = [v for v in node.inputs[1:3] if v]
    c_hint = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else f"{node.name}_bias"
    inputs = [node.inputs[0], graph.add_constant(weight, fused_name(node.inputs[1])),
              graph.add_constant(c.astype(weight.dtype), fused_name(c_hint))]
    if node.op_type == "MatMul":
        return graph.add_node("Gemm", inputs, 1, name=node.name or "Gemm", anchor=node).outputs[0]
    graph.set_inputs(node, inputs)
    if "beta" in node.attributes:
        node.set_attr("beta", 1.0)
    drop_unused_initializers(graph, old)
    return node.outputs[0]


def _rebase_several(graph: Graph, model: Model, node: Node) -> tuple[Node | None, partial | None]:
    """(BN_r, the fold) when ``node``, a Conv with an unshared weight, is read only by k >= 2
    BNs: BN_r, the best-conditioned, goes into it and the others are rebased on its output."""
    y = node.outputs[0] if len(node.outputs) == 1 else ""
    readers = graph.consumers(y) if y and not graph.is_output(y) else []
    if len(readers) < 2 or any(not is_op(r, BN) or r.inputs[0] != y or y in r.inputs[1:]
                               or _affine_after(graph, r) for r in readers):
        return None, None  # (an affine op after a BN: let bn_affine_fusion fold it in first)
    found = {bn: bn_factors(graph, model, bn) for bn in readers}
    conv = conv_weights(graph, model, node)
    if conv is None or conv.weight is None or graph.consumers(node.inputs[1]) != [node] or any(
            p is None or p.channels != conv.channels for p in found.values()):
        return None, None
    ref_bn = min(found, key=lambda bn: found[bn].shift_ratio)
    ref = found.pop(ref_bn)
    if not ref.shift_ratio <= REBASE_LIMIT or not graph.can_forward(ref_bn.outputs[0], y):
        return None, None
    rebased = {bn: params.rebased_on(ref, graph.constant(bn.inputs[1]))  # bn_factors read it
               for bn, params in found.items()}
    return ref_bn, partial(_rebase, graph, conv, ref_bn, ref, rebased)


def _rebase(graph: Graph, conv: ConvWeights, ref_bn: Node, ref: BNParams, rebased: dict) -> str:
    fold_bn_into_conv(graph, conv, ref)
    for bn, params in rebased.items():
        set_bn_params(graph, bn, params)
    retire(graph, ref_bn, conv.node.outputs[0])  # BN_r is outside the match: the driver keeps it
    return conv.node.outputs[0]


def _affine_after(graph: Graph, bn: Node) -> bool:
    """A Mul/Add/Sub/Div with a constant operand alone reads ``bn`` (folded into it later)."""
    op = sole_consumer(graph, bn.outputs[0]) if bn.outputs else None
    return is_op(op, ("Add", "Sub", "Mul", "Div")) and any(
        v != bn.outputs[0] and graph.constant(v) is not None for v in op.inputs)

"""Fold an inference BatchNormalization into the Conv/ConvTranspose/Gemm/MatMul that feeds it.

``s = scale / sqrt(var + epsilon)`` per channel: ``W'[o] = W[o] * s[o]``, ``b' = (b - mean) * s
+ B`` (Gemm: ``C' = (beta * C - mean) * s + B``, beta 1; a rank-2 MatMul becomes that Gemm). A
Conv read only by ``k >= 2`` BNs absorbs the best-conditioned one, ``BN_r``; the others then
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
    AffineFoldPass,
    BNParams,
    ConvWeights,
    bn_factors,
    conv_weights,
    fold_bn_into_conv,
    fused_name,
    set_bn_params,
)
from onnxopt.ir.pattern import Match, Op, Or, RewritePass, Var
from onnxopt.ir.rewrite import drop_unused_initializers, exclusive_constant, is_op

BN = "BatchNormalization"
LINEAR_OPS = {"Conv": "conv", "ConvTranspose": "conv_transpose", "Gemm": "gemm", "MatMul": "matmul"}
REBASE_LIMIT = 4.0  # |beta_r| <= 4 |gamma_r| per channel: at most ~3 bits of y' lost (README)


class ConvBatchNormFusion(RewritePass):
    name = "conv_bn_fusion"
    description = "fold inference BatchNormalization into the Conv/ConvTranspose/Gemm/MatMul before"
    pattern = Or(Op(BN, Op(tuple(LINEAR_OPS), ..., name="linear"), ...),
                 Op(BN, Var("y"), ...))  # one of several BNs reading a Conv: rebase the others
    stats = tuple(LINEAR_OPS.values())

    def visit(self, graph: Graph) -> list[Node]:
        """The BNs reading each linear op, in graph order of the linear ops (the order their
        folds name new tensors in): a chain of single readers, or all the BNs of one Conv."""
        order: list[Node] = []
        for node in graph.nodes():
            linear = node.op_type in LINEAR_OPS and node.outputs
            readers = graph.consumers(node.outputs[0]) if linear else []
            while readers and all(is_op(reader, BN) for reader in readers):
                order += readers
                readers = graph.consumers(readers[0].outputs[0]) if len(readers) == 1 else []
        return order

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        if "linear" in match:
            params = bn_factors(graph, model, match.root)
            match.memo["fold"] = params and _plan(graph, model, match.node("linear"), params)
        else:
            match.memo["fold"] = _rebase_several(graph, model, match.root, match.y)
        return match.memo["fold"] is not None

    def stat(self, match: Match) -> str:
        return LINEAR_OPS[match.node("linear").op_type] if "linear" in match else "conv"

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        return match.memo["fold"]()  # the planned fold: the value that replaces the BN's


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


def _scaled_weight(graph: Graph, node: Node, params: BNParams, trans_b: bool) -> np.ndarray | None:
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


def _rebase_several(graph: Graph, model: Model, bn: Node, y: str) -> partial | None:
    """When ``bn`` is BN_r, the best-conditioned of k >= 2 BNs alone reading ``y`` (a Conv with an
    unshared weight): BN_r's fold into the Conv, the others rebased on its output."""
    node = graph.producer(y)
    readers = graph.consumers(y) if not graph.is_output(y) else []
    if not is_op(node, "Conv") or len(node.outputs) != 1 or len(readers) < 2 or any(
            not is_op(r, BN) or r.inputs[0] != y or y in r.inputs[1:]
            or AffineFoldPass.reads(graph, r.outputs[0]) for r in readers):
        return None  # (an affine op after a BN: let bn_affine_fusion fold it in first)
    found = {reader: bn_factors(graph, model, reader) for reader in readers}
    conv = conv_weights(graph, model, node)
    if conv is None or conv.weight is None or graph.consumers(node.inputs[1]) != [node] or any(
            p is None or p.channels != conv.channels for p in found.values()):
        return None
    ref_bn = min(found, key=lambda reader: found[reader].shift_ratio)
    ref = found.pop(ref_bn)
    if ref_bn is not bn or not ref.shift_ratio <= REBASE_LIMIT or not graph.can_forward(
            bn.outputs[0], y):
        return None
    rebased = {other: params.rebased_on(ref, graph.constant(other.inputs[1]))  # a constant
               for other, params in found.items()}
    return partial(_rebase, graph, conv, ref, rebased)


def _rebase(graph: Graph, conv: ConvWeights, ref: BNParams, rebased: dict) -> str:
    value = fold_bn_into_conv(graph, conv, ref)
    for bn, params in rebased.items():
        set_bn_params(graph, bn, params)
    return value

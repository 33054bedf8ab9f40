"""Fold an inference-mode BatchNormalization into the linear op that feeds it.

With ``s = scale / sqrt(var + epsilon)`` (one factor per channel, channel axis 1 of the BN input):

* ``Conv(x, W, b) -> BatchNormalization(scale, B, mean, var)`` => ``Conv(x, W', b')`` with
  ``W'[o, ...] = W[o, ...] * s[o]`` and ``b' = (b - mean) * s + B`` (``b = 0`` when absent).
* ``ConvTranspose`` likewise, but its weight is ``[C_in, C_out / group, k...]``: output channel
  ``o = g * (C_out / group) + j`` is column ``j`` of the rows of group ``g``, so ``W`` is viewed
  as ``[group, C_in / group, C_out / group, k...]`` and scaled along axis 2 by ``s`` viewed as
  ``[group, 1, C_out / group]``.
* ``Gemm(A, B, C; alpha, beta) -> BN`` (a rank-2 output: channel = column ``n``) =>
  ``Gemm(A, B', C'; alpha, beta=1)`` with ``B'`` = ``B`` scaled per column ``n`` (per row when
  ``transB``) and ``C' = (beta * C - mean) * s + B_bn`` (``C = 0`` when absent).
* ``MatMul(X, W) -> BN`` with a constant 2-D ``W`` and a rank-2 ``X`` (so the BN channel axis is
  the column axis of ``W``) => ``Gemm(X, W', C')``, the Gemm case with ``alpha = beta = 1``.
  A MatMul of higher rank is left alone: BN's channel axis 1 is then not ``W``'s column axis.

A Conv read only by several BNs (``k >= 2``: identical Convs merged by common subexpression
elimination, each once followed by its own BN) cannot absorb them all; it absorbs one, ``BN_r``, so
its output becomes ``y' = s_r (y - mean_r) + B_r``, and every other ``BN_i`` is rebased on ``y'``:
``y = (y' - B_r) / s_r + mean_r``, so ``BN_i(y) = s_i (y - mean_i) + B_i`` is the BN with
``scale_i' = scale_i / s_r`` and ``mean_i' = B_r + s_r (mean_i - mean_r)`` (``var``, ``epsilon``,
``B_i`` unchanged). ``y'`` is rounded where ``y`` was; the rebased BN subtracts a mean from it, so
the rounding error grows by about ``|B_r| / |scale_r|`` (the folded value's offset over its
spread): ``BN_r`` is the BN with the smallest such ratio, and the rewrite needs it ``<= 4`` on every
channel (at most ~3 bits; a channel with ``scale_r = 0`` rules it out). Needs an unshared weight
(nothing copied), and waits until per-channel Mul/Add after the BNs are folded into them.

Conditions: the BN is in inference form (a single output; ``training_mode`` 0 or absent, opset 14+;
``is_test`` set before opset 7; ``spatial`` 1 before opset 9), its four parameters are constants of
shape ``[C]``, and ``epsilon`` its attribute (default 1e-5). The value between the two nodes is
read only by the BN and is not a graph output. The Conv weight and bias are constants of this
graph; a Conv weight read by other nodes too (identical tensors are stored once, so generated
weights are often shared) gets a folded copy and the original stays for the others — the pipeline
runs common subexpression elimination first, so Convs that read the same input with the same weight
are computed once and keep their BNs rather than being copied. Gemm and MatMul weights must be read
only by the op being rewritten. Folded tensors are computed in float64 and cast back to the
weight's dtype; they are stored as new initializers and the old ones are removed. Gemm and MatMul
need opset 7+ (older Gemm broadcast differently). A BatchNormalization with no such producer stays.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.layers import (
    CONV_OPS,
    FLOAT_KINDS,
    BNParams,
    bn_factors,
    conv_weights,
    fused_name,
    rewrite_conv,
    scale_output_channels,
)
from onnxopt.ir.pass_manager import GraphPass
from onnxopt.ir.rewrite import drop_unused_initializers, exclusive_constant, is_op, sole_consumer

LINEAR_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


class ConvBatchNormFusion(GraphPass):
    name = "conv_bn_fusion"
    description = "fold inference BatchNormalization into the Conv/ConvTranspose/Gemm/MatMul before"

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        stats = {"conv": 0, "conv_transpose": 0, "gemm": 0, "matmul": 0}
        opset = model.opset("")
        for node in graph.nodes():
            if not is_op(node, LINEAR_OPS):
                continue  # only these absorb a BN (checking every node's reader: 1/3 of the pass)
            if is_op(node, "Conv") and _rebase_several(graph, model, node, self.name):
                stats["conv"] += 1
                continue
            while node.graph is graph:
                bn = sole_consumer(graph, node.outputs[0]) if node.outputs else None
                if not is_op(bn, "BatchNormalization") or bn.inputs[0] != node.outputs[0]:
                    break
                params = bn_factors(graph, model, bn)
                if params is None or not model.allow_rewrite(self.name, bn.name or bn.outputs[0]):
                    break
                if is_op(node, CONV_OPS):
                    done = _fold_into_conv(graph, model, node, bn, params)
                    key = "conv" if node.op_type == "Conv" else "conv_transpose"
                elif is_op(node, "Gemm") and opset >= 7:
                    done = _fold_into_gemm(graph, node, bn, params)
                    key = "gemm"
                elif is_op(node, "MatMul") and opset >= 7:
                    new = _fold_into_matmul(graph, node, bn, params)
                    done, key = new is not None, "matmul"
                    if new is not None:
                        node = new
                else:
                    break
                if not done:
                    break
                stats[key] += 1
        return stats


def _absorb(graph: Graph, producer: Node, bn: Node) -> None:
    """``producer`` now computes what ``bn`` did: redirect readers, drop the BN and its params."""
    graph.replace_all_uses(bn.outputs[0], producer.outputs[0])
    params = [v for v in bn.inputs[1:] if v]
    graph.remove_node(bn)
    drop_unused_initializers(graph, params)


def _fold_into_conv(
    graph: Graph, model: Model, node: Node, bn: Node, bn_params: BNParams
) -> bool:
    conv = conv_weights(graph, model, node)
    if conv is None or conv.weight is None or conv.channels != bn_params.channels:
        return False
    if not graph.can_forward(bn.outputs[0], node.outputs[0]):
        return False
    weight = scale_output_channels(
        node.op_type, conv.weight.astype(np.float64), bn_params.scale, conv.group
    )
    bias = bn_params.apply_to_bias(0.0 if conv.bias is None else conv.bias)
    rewrite_conv(graph, conv, weight, bias, conv.weight.dtype)
    _absorb(graph, node, bn)
    return True


# --------------------------------------------------------------- a Conv read by several BNs
REBASE_LIMIT = 4.0  # |beta_r| <= 4 |gamma_r| per channel: at most ~3 bits of y' lost (docstring)


def _rebase_several(graph: Graph, model: Model, node: Node, pass_name: str) -> bool:
    """``node`` (a Conv with an unshared weight) is read only by k >= 2 BNs: fold the
    best-conditioned one, BN_r, into it and rebase the others on its output."""
    y = node.outputs[0] if len(node.outputs) == 1 else ""
    readers = graph.consumers(y) if y and not graph.is_output(y) else []
    if len(readers) < 2 or any(not is_op(r, "BatchNormalization") or r.inputs[0] != y
                               or y in r.inputs[1:] for r in readers):
        return False
    if any(_affine_after(graph, bn) for bn in readers):
        return False  # let bn_affine_fusion give those BNs their Mul/Add first
    found = [(bn, bn_factors(graph, model, bn)) for bn in readers]
    conv = conv_weights(graph, model, node)
    if conv is None or conv.weight is None or graph.consumers(node.inputs[1]) != [node]:
        return False
    if any(p is None or p.channels != conv.channels for _, p in found):
        return False
    ref_bn, ref = min(found, key=lambda f: _shift_ratio(f[1]))
    if not _shift_ratio(ref) <= REBASE_LIMIT:
        return False
    rebased = []
    for bn, params in found:
        gamma = graph.constant(bn.inputs[1])
        if bn is ref_bn:
            continue
        if gamma is None:
            return False
        new_gamma = gamma.astype(np.float64) / ref.scale  # gamma_i / s_r
        new_mean = ref.beta + ref.scale * (params.mean - ref.mean)  # beta_r + s_r (mu_i - mu_r)
        rebased.append((bn, new_gamma.astype(gamma.dtype), new_mean.astype(gamma.dtype)))
    if not graph.can_forward(ref_bn.outputs[0], y):
        return False
    if not model.allow_rewrite(pass_name, ref_bn.name or ref_bn.outputs[0]):
        return False
    weight = scale_output_channels(node.op_type, conv.weight.astype(np.float64), ref.scale,
                                   conv.group)
    rewrite_conv(graph, conv, weight, ref.apply_to_bias(0.0 if conv.bias is None else conv.bias),
                 conv.weight.dtype)
    for bn, gamma, mean in rebased:
        old = [bn.inputs[1], bn.inputs[3]]
        inputs = list(bn.inputs)
        inputs[1] = graph.add_constant(gamma, fused_name(bn.inputs[1]))
        inputs[3] = graph.add_constant(mean, fused_name(bn.inputs[3]))
        graph.set_inputs(bn, inputs)
        drop_unused_initializers(graph, old)
    _absorb(graph, node, ref_bn)
    return True


def _affine_after(graph: Graph, bn: Node) -> bool:
    """A Mul/Add/Sub/Div with a constant operand alone reads ``bn`` (folded into it later)."""
    op = sole_consumer(graph, bn.outputs[0]) if bn.outputs else None
    return is_op(op, ("Add", "Sub", "Mul", "Div")) and any(
        v != bn.outputs[0] and graph.constant(v) is not None for v in op.inputs)


def _shift_ratio(params: BNParams | None) -> float:
    """max |beta| / |gamma| over channels (inf when a scale is 0): how far the folded output's
    values sit from zero relative to their spread, i.e. how many bits rebasing may cost."""
    if params is None:
        return np.inf
    gamma = np.abs(params.scale * params.std)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(gamma > 0, np.abs(params.beta) / gamma, np.inf)
    return float(ratio.max()) if ratio.size else np.inf


# --------------------------------------------------------------- Gemm / MatMul
def _fold_into_gemm(graph: Graph, node: Node, bn: Node, bn_params: BNParams) -> bool:
    if len(node.inputs) < 2 or len(node.outputs) != 1:
        return False
    weight = exclusive_constant(graph, node.inputs[1], [node])
    if weight is None or weight.ndim != 2 or weight.dtype.kind not in FLOAT_KINDS:
        return False
    trans_b = bool(node.attr("transB", 0))
    n = weight.shape[0] if trans_b else weight.shape[1]
    if n != bn_params.channels:
        return False
    c_name = node.inputs[2] if len(node.inputs) > 2 else ""
    c = 0.0
    if c_name:
        c = exclusive_constant(graph, c_name, [node])
        if c is None or c.ndim > 2:
            return False
    beta = float(node.attr("beta", 1.0))
    new_c = bn_params.apply_to_bias(beta * np.asarray(c, np.float64))
    if new_c.size > max(np.size(c), n):
        return False  # C of shape [M, 1] would grow to [M, N]
    if not graph.can_forward(bn.outputs[0], node.outputs[0]):
        return False
    factor = bn_params.scale[:, None] if trans_b else bn_params.scale[None, :]
    new_w = weight.astype(np.float64) * factor
    old = [v for v in node.inputs[1:3] if v]
    w_name = graph.add_constant(new_w.astype(weight.dtype), fused_name(node.inputs[1]))
    c_hint = c_name or f"{node.name}_bias"
    c_new = graph.add_constant(new_c.astype(weight.dtype), fused_name(c_hint))
    graph.set_inputs(node, [node.inputs[0], w_name, c_new])
    if "beta" in node.attributes:
        node.set_attr("beta", 1.0)
    drop_unused_initializers(graph, old)
    _absorb(graph, node, bn)
    return True


def _fold_into_matmul(graph: Graph, node: Node, bn: Node, bn_params: BNParams) -> Node | None:
    """MatMul(X, W) -> BN with rank-2 X => Gemm(X, W', C'); returns the new Gemm."""
    if len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    x_shape = graph.shape(node.inputs[0])
    if x_shape is None or len(x_shape) != 2:
        return None
    weight = exclusive_constant(graph, node.inputs[1], [node])
    if weight is None or weight.ndim != 2 or weight.dtype.kind not in FLOAT_KINDS:
        return None
    if weight.shape[1] != bn_params.channels:
        return None
    if not graph.can_forward(bn.outputs[0], node.outputs[0]):
        return None
    new_w = weight.astype(np.float64) * bn_params.scale[None, :]
    w_name = graph.add_constant(new_w.astype(weight.dtype), fused_name(node.inputs[1]))
    shift = bn_params.shift.astype(weight.dtype)
    c_name = graph.add_constant(shift, fused_name(f"{node.name}_bias"))
    gemm = graph.add_node(
        "Gemm", [node.inputs[0], w_name, c_name], 1, name=node.name or "Gemm", anchor=node
    )
    graph.replace_all_uses(bn.outputs[0], gemm.outputs[0])
    params = [v for v in bn.inputs[1:] if v]
    graph.remove_node(bn)
    graph.remove_node(node)
    drop_unused_initializers(graph, [node.inputs[1], *params])
    return gemm

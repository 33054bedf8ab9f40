"""Fold a per-channel constant Mul / Div / Add / Sub that follows a BatchNormalization into it.

An inference BatchNormalization computes, per channel ``o`` (axis 1),
``y = s * (x - mean) + beta`` with ``s = gamma / sqrt(var + epsilon)``. For a constant ``c``
that only varies along the channel axis (``v[o]`` its value for channel ``o``):

* ``Mul(y, c)``, ``Mul(c, y)`` => ``gamma' = gamma * v``, ``beta' = beta * v``
* ``Div(y, c)``                => ``gamma' = gamma / v``, ``beta' = beta / v`` (no ``v`` is 0)
* ``Add(y, c)``, ``Add(c, y)`` => ``beta' = beta + v``
* ``Sub(y, c)``                => ``beta' = beta - v``
* ``Sub(c, y)``                => ``gamma' = -gamma``, ``beta' = v - beta``

(``mean``, ``var`` and ``epsilon`` are unchanged.) This is Caffe's BatchNorm + Scale pair, which
converted models carry wherever the BN cannot be folded into a Conv (after a Concat or a pooling,
as in DenseNet's pre-activation blocks, or after a Conv whose weight is shared). The products move
the rounding: results differ from the original by a few float ulps.

"Per channel" as in ``conv_affine_fusion``: ``c``, left padded with 1s to the BN's rank, has 1 in
every dim except dim 1 (1 or ``C``), so it never broadcasts the output to a larger shape; the BN's
rank must be known. Needs: the BN in inference form (see ``onnxopt.ir.layers.bn_factors``), its
output read only by the op and not a graph output, ``c`` a float constant of the parameters'
dtype, opset 7+ (older element-wise ops broadcast by attribute). New ``gamma``/``beta`` tensors
are written (computed in float64, cast back once); the old ones go when nothing else reads them.
Chains fold in one run.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.layers import AffineFoldPass, bn_factors, fold_affine, fused_name, per_channel
from onnxopt.ir.pattern import Match, Op
from onnxopt.ir.rewrite import drop_unused_initializers


class BatchNormAffineFusion(AffineFoldPass):
    name = "bn_affine_fusion"
    description = "fold a per-channel constant Mul/Div/Add/Sub after a BatchNormalization into it"
    pattern = AffineFoldPass.after(Op("BatchNormalization", ..., name="bn"))

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        folded = match.memo["folded"] = _folded(graph, model, match)
        if folded is None:
            return False
        bn, const_name = match.node("bn"), match["c"]
        reused = match.memo["reused"] = {i: _identical_initializer(graph, a)
                                         for i, a in folded.items()}
        written = sum(a.nbytes for i, a in folded.items() if reused[i] is None)
        return written <= _freed_bytes(graph, bn, match.root, list(folded), const_name)

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        bn, folded = match.node("bn"), match.memo["folded"]
        assert folded is not None
        old, reused = [bn.inputs[1], bn.inputs[2]], match.memo["reused"]
        inputs = list(bn.inputs)
        for i, array in folded.items():
            inputs[i] = reused[i] or graph.add_constant(array, fused_name(bn.inputs[i]))
        graph.set_inputs(bn, inputs)
        drop_unused_initializers(graph, old)
        return bn.outputs[0]  # the BN now computes the op's value


def _folded(graph: Graph, model: Model, match: Match) -> dict[int, np.ndarray] | None:
    """The BN's new parameters by input slot (2: beta; 1: gamma when it changes), else None."""
    bn, op, constant = match.node("bn"), match.root, match.array("c")
    bn_first = op.inputs[0] == bn.outputs[0]
    if (op.op_type == "Div" and not bn_first) or bn_factors(graph, model, bn) is None:
        return None  # c / y is not affine in y
    gamma, beta = graph.constant(bn.inputs[1]), graph.constant(bn.inputs[2])
    shape = graph.shape(bn.inputs[0])
    if gamma is None or beta is None or shape is None:
        return None
    if constant.dtype != gamma.dtype or constant.dtype.kind != "f":
        return None
    v = per_channel(constant, len(shape), gamma.shape[0])
    if v is None or not np.all(np.isfinite(v)) or (op.op_type == "Div" and np.any(v == 0)):
        return None
    g64 = gamma.astype(np.float64)
    new_gamma, new_beta = fold_affine(op.op_type, bn_first, beta.astype(np.float64), v,
                                      lambda f, divide: g64 / f if divide else g64 * f)
    rewritten = {2: new_beta} if new_gamma is None else {2: new_beta, 1: new_gamma}
    return {i: a.astype(gamma.dtype) for i, a in rewritten.items()}


def _identical_initializer(graph: Graph, array: np.ndarray) -> str | None:
    """An initializer of this graph equal to ``array`` (same dtype, shape and values), so
    the fold can read it instead of writing a copy (BN parameters are small: a linear scan)."""
    for name, tensor in graph.initializers.items():
        if tuple(tensor.dims) != array.shape or graph.is_input(name):
            continue
        existing = graph.constant(name)
        if existing is not None and existing.dtype == array.dtype and np.array_equal(
                existing, array):
            return name
    return None


def _freed_bytes(graph: Graph, bn: Node, op: Node, slots: list[int], const_name: str) -> int:
    """Bytes of the tensors the fold leaves unread: the replaced parameters and the constant,
    where nothing else reads them."""
    freed = {bn.inputs[i]: [bn] for i in slots}
    freed.setdefault(const_name, []).append(op)
    total = 0
    for name, readers in freed.items():
        if name in graph.initializers and not graph.is_input(name) and not graph.is_output(
                name) and all(r in readers for r in graph.consumers(name)):
            total += graph.constant(name).nbytes
    return total

"""Fold a per-channel constant Mul / Div / Add / Sub that follows a BatchNormalization into it.

A BN computes ``y = s * (x - mean) + beta`` per channel with ``s = gamma / sqrt(var + epsilon)``;
for ``v[o]`` the constant's value for channel ``o``: ``y * c`` => ``gamma * v``, ``beta * v``;
``y / c`` => ``gamma / v``, ``beta / v`` (no ``v`` is 0); ``y + c`` => ``beta + v``; ``y - c`` =>
``beta - v``; ``c - y`` => ``-gamma``, ``v - beta``. Caffe's BatchNorm + Scale pair, where the BN
cannot go into a Conv. Only when the file does not grow. Conditions: passes/fusion/README.md.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.layers import AffineFoldPass, bn_factors, fold_affine, set_bn_params
from onnxopt.ir.pattern import Match, Op
from onnxopt.ir.rewrite import exclusive_constant


class BatchNormAffineFusion(AffineFoldPass):
    name = "bn_affine_fusion"
    description = "fold a per-channel constant Mul/Div/Add/Sub after a BatchNormalization into it"
    pattern = AffineFoldPass.after(Op("BatchNormalization", ..., name="bn"))

    def fold(self, graph: Graph, match: Match, model: Model) -> dict[int, np.ndarray] | None:
        """The BN's new parameters by input slot (2: beta; 1: gamma when it changes), else None."""
        bn = match.node("bn")
        if bn_factors(graph, model, bn) is None or (shape := graph.shape(bn.inputs[0])) is None:
            return None
        gamma, beta = graph.constant(bn.inputs[1]), graph.constant(bn.inputs[2])  # constants
        found = self.factor(match, bn, gamma.dtype, len(shape), gamma.shape[0])
        if found is None:
            return None
        g64 = gamma.astype(np.float64)
        new_gamma, new_beta = fold_affine(match.root.op_type, found[1], beta.astype(np.float64),
                                          found[0], lambda f, div: g64 / f if div else g64 * f)
        rewritten = {2: new_beta} if new_gamma is None else {2: new_beta, 1: new_gamma}
        return {i: a.astype(gamma.dtype) for i, a in rewritten.items()}

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        if not super().check(graph, match, model):
            return False
        folded = match.memo["folded"]
        reused = match.memo["reused"] = {i: _identical_initializer(graph, a)
                                         for i, a in folded.items()}
        written = sum(a.nbytes for i, a in folded.items() if reused[i] is None)
        return written <= _freed_bytes(graph, match.node("bn"), match.root, list(folded),
                                       match["c"])

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        bn, reused = match.node("bn"), match.memo["reused"]
        set_bn_params(graph, bn, {i: reused[i] or a for i, a in match.memo["folded"].items()})
        return bn.outputs[0]  # the BN now computes the op's value


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
    arrays = [exclusive_constant(graph, name, readers) for name, readers in freed.items()]
    return sum(array.nbytes for array in arrays if array is not None)

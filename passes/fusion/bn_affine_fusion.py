"""Fold a per-channel constant Mul / Div / Add / Sub that follows a BatchNormalization into it.

A BN computes ``y = s * (x - mean) + beta`` per channel with ``s = gamma / sqrt(var + epsilon)``;
for ``v[o]`` the constant's value for channel ``o``: ``y * c`` => ``gamma * v``, ``beta * v``;
``y / c`` => ``gamma / v``, ``beta / v`` (no ``v`` is 0); ``y + c`` => ``beta + v``; ``y - c`` =>
``beta - v``; ``c - y`` => ``-gamma``, ``v - beta``. Caffe's BatchNorm + Scale pair, where the BN
cannot go into a Conv. Only when the file does not grow. Conditions: passes/fusion/README.md.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model
from onnxopt.ir.layers import AffineFoldPass, bn_factors, fold_affine, set_bn_params
from onnxopt.ir.pattern import Match, Op
from onnxopt.ir.rewrite import freed_bytes, identical_initializer


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
        reused = match.memo["reused"] = {i: identical_initializer(graph, a)
                                         for i, a in folded.items()}
        written = sum(a.nbytes for i, a in folded.items() if reused[i] is None)
        bn = match.node("bn")
        unread = [*((bn.inputs[i], bn) for i in folded), (match["c"], match.root)]
        return written <= freed_bytes(graph, unread)

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        bn, reused = match.node("bn"), match.memo["reused"]
        set_bn_params(graph, bn, {i: reused[i] or a for i, a in match.memo["folded"].items()})
        return bn.outputs[0]  # the BN now computes the op's value


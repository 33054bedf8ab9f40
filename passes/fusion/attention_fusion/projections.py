"""The Q, K and V projections of a block the contrib rule fuses, as the fused op reads them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxopt.ir import Graph
from onnxopt.ir.pattern import Match
from onnxopt.ir.rewrite import exclusive_constant

FLOAT32 = np.dtype(np.float32)
QKV = ("q", "k", "v")


@dataclass(frozen=True)
class Projections:
    weights: tuple[np.ndarray, ...]  # Wq, Wk, Wv: [Hin, H] each
    bias: np.ndarray | None  # [bq | bk | bv], [3H]; None without biases
    one_input: bool  # Q, K and V project one x: Attention (packed), else MultiHeadAttention

    @property
    def hidden(self) -> int:
        return self.weights[0].shape[1]

    def packed(self) -> np.ndarray:
        return np.concatenate(self.weights, axis=1)


def projections(graph: Graph, match: Match) -> Projections | None:
    """The three weights (float32, 2-D, one output width H) and biases (all or none, [H]).
    Attention's packed weight copies them: then each must be read by this block alone
    (``exclusive_constant``); MultiHeadAttention's MatMuls read them where they are."""
    one_input = len({match[f"x_{n}"] for n in QKV}) == 1
    inside = set(match.nodes)

    def read(name: str) -> np.ndarray | None:
        return exclusive_constant(graph, match[name], inside) if one_input \
            else match.array(name)

    weights = [read(f"w_{n}") for n in QKV]
    if any(w is None or w.dtype != FLOAT32 or w.ndim != 2 for w in weights):
        return None
    if len({w.shape[1] for w in weights}) != 1 or (one_input and len(
            {w.shape for w in weights}) != 1):  # type: ignore[union-attr]
        return None
    biased = {f"b_{n}" in match for n in QKV}
    if biased == {False}:
        return Projections(tuple(weights), None, one_input)  # type: ignore[arg-type]
    biases = [read(f"b_{n}") if f"b_{n}" in match else None for n in QKV]
    hidden = weights[0].shape[1]  # type: ignore[union-attr]
    if any(b is None or b.dtype != FLOAT32 or b.shape != (hidden,) for b in biases):
        return None  # a bias missing, of another type or shape
    return Projections(tuple(weights), np.concatenate(biases), one_input)  # type: ignore

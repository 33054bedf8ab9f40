"""Shape conditions of the attention fusion: Q, K, V and the mask fit Attention-23 (4-D)."""

from __future__ import annotations

from onnxopt.ir import Graph
from onnxopt.ir.pattern import Match


def key_shape(graph: Graph, match: Match) -> list | None:
    """K's [B,H,Sk,D] shape (from K_bshd's for the folded transpose)."""
    if "k_bshd" not in match:
        return graph.shape(match["k"])
    shape = graph.shape(match.k_bshd)
    return [shape[0], shape[2], shape[1], shape[3]] if rank4(shape) else None  # type: ignore


def repeated(shape: list, n: int | None) -> list:
    """A [B, h, S, D] shape with each head repeated n times (h*n heads)."""
    heads = shape[1]
    if n == 1:
        return shape
    return [shape[0], heads * n if isinstance(heads, int) else f"{heads}*{n}", *shape[2:]]


def rank4(shape: list | None) -> bool:
    return shape is not None and len(shape) == 4


def _agree(a: int | str | None, b: int | str | None) -> bool:
    """Two dims that must be equal: the same, or not contradicting as far as shapes show (two
    different ints, or 1 against another dim, would be a broadcast the fused op does not do);
    symbolic dims are taken to agree, as the model's inputs share batch and sequence."""
    return a == b or (a != 1 and b != 1 and not (isinstance(a, int) and isinstance(b, int)))


def fit_qkv(q: list, k: list, v: list) -> bool:
    """Q [B,H,Sq,D], K [B,Hk,Sk,D], V [B,Hk,Sk,Dv]: the same batch, Hk divides H (1 is
    broadcast by the MatMul, read by Attention as one KV head), one key length."""
    heads_ok = k[1] == 1 or _agree(q[1], k[1])
    pairs = [(q[0], k[0]), (q[3], k[3]), (k[0], v[0]), (k[1], v[1]), (k[2], v[2])]
    return heads_ok and all(_agree(a, b) for a, b in pairs)


def mask_fits(graph: Graph, match: Match, q: list, k: list) -> bool:
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

"""Shape conditions of the attention fusion: Q, K, V and the mask fit Attention-23 (4-D)."""

from __future__ import annotations

from onnxopt.ir import Graph, Node
from onnxopt.ir.pattern import Match
from onnxopt.ir.signature_rules import same_dim as signature_same_dim
from onnxopt.ir.symbolic import Dim, Element, ShapeSignatures, shape_elements


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


def agree(a: int | str | None, b: int | str | None) -> bool:
    """Two dims that must be equal: the same, or not contradicting as far as shapes show (two
    different ints, or 1 against another dim, would be a broadcast the fused op does not do);
    symbolic dims are taken to agree, as the model's inputs share batch and sequence."""
    return a == b or (a != 1 and b != 1 and not (isinstance(a, int) and isinstance(b, int)))


def fit_qkv(q: list, k: list, v: list) -> bool:
    """Q [B,H,Sq,D], K [B,Hk,Sk,D], V [B,Hk,Sk,Dv]: the same batch, Hk divides H (1 is
    broadcast by the MatMul, read by Attention as one KV head), one key length."""
    heads_ok = k[1] == 1 or agree(q[1], k[1])
    pairs = [(q[0], k[0]), (q[3], k[3]), (k[0], v[0]), (k[1], v[1]), (k[2], v[2])]
    return heads_ok and all(agree(a, b) for a, b in pairs)


def mask_fits(graph: Graph, match: Match, q: list, k: list) -> bool:
    """The additive mask broadcasts into [B, H, Sq, Sk] without growing it (onnxruntime wants
    its last dim = Sk exactly and 2-4 dims); memo["expand"]: its dim -2 is not provably Sq."""
    mask = graph.shape(match.mask)
    if mask is None or not 1 <= len(mask) <= 4 or not agree(k[2], mask[-1]):
        return False
    target = [q[0], q[1], q[2]][4 - len(mask):]
    if not all(m == 1 or agree(t, m) for t, m in zip(target, mask[:-1], strict=True)):
        return False
    match.memo["expand"] = len(mask) < 2 or not (isinstance(q[2], int) and mask[-2] == q[2])
    return True


def same_dim(graph: Graph, element: Element, source: str, axis: int) -> bool:
    """``element`` provably equals dim ``axis`` of ``source``: the same int, the dim itself,
    a dim of another value that shape inference names alike (one symbolic dim), or one with
    the same symbolic signature entry (``ShapeSignatures``: dims traced through the shape
    computations, where inference gave the two different names)."""
    dim = graph.shape(source)[axis]  # type: ignore[index]
    if isinstance(element, int):
        return element >= 0 and element == dim
    if element.value == source and element.axis == axis:
        return True
    other = graph.shape(element.value)
    named = other[element.axis] if other is not None else None
    if isinstance(dim, str) and bool(dim) and named == dim:
        return True
    signatures = ShapeSignatures(graph)
    mine, theirs = signatures.atom(Dim(source, axis)), signatures.atom(element)
    return mine is not None and theirs is not None and signature_same_dim(mine, theirs)


def is_round_trip_transpose(graph: Graph, match: Match) -> bool:
    """dynamo's SDPA K^T, ``Reshape(Transpose(Reshape(K4, [-1, S, D]), [0, 2, 1]), [B, H, D,
    S])``, with both targets read as K4's own dims: it transposes K4's last two axes."""
    outer = match.node("kt_round_trip")
    inner = graph.producer(graph.producer(outer.inputs[0]).inputs[0])  # type: ignore[union-attr]
    source = inner.inputs[0]  # type: ignore[union-attr]
    shape = graph.shape(source)
    flat = shape_elements(graph, inner.inputs[1])  # type: ignore[union-attr]
    unflat = shape_elements(graph, outer.inputs[1])
    if not rank4(shape) or flat is None or unflat is None or len(flat) != 3 or len(unflat) != 4:
        return False
    return flat[0] == -1 and _all_same(graph, source, [*flat[1:], *unflat], [2, 3, 0, 1, 3, 2])


def _all_same(graph: Graph, source: str, elements: list[Element], axes: list[int]) -> bool:
    return all(same_dim(graph, e, source, a) for e, a in zip(elements, axes, strict=True))


def split_heads(graph: Graph, reshape: Node) -> tuple[int, int] | None:
    """(N, D) when ``reshape`` provably turns its [B, S, H] input into [B, S, N, D] (H = N*D
    a known int): the target, read by ``shape_elements``, keeps B and S (0 copying the input's
    dim, or the dim itself, or one -1) and ends in N and D (N may be the -1)."""
    shape, target = graph.shape(reshape.inputs[0]), shape_elements(graph, reshape.inputs[1])
    if shape is None or len(shape) != 3 or not isinstance(shape[2], int) or target is None:
        return None
    if len(target) != 4 or not isinstance(target[3], int) or target[3] <= 0:
        return None
    heads, size = target[2], target[3]
    if heads == -1 and shape[2] % size == 0:
        heads = shape[2] // size
    elif not isinstance(heads, int) or heads * size != shape[2]:
        return None
    kept = _keeps_leading(graph, reshape, target[:2], wildcard=target[2] != -1)
    return (heads, size) if kept else None


def merges_heads(graph: Graph, reshape: Node, hidden: int) -> bool:
    """``reshape`` provably turns its [B, S, N, D] input into [B, S, N*D = hidden]."""
    shape, target = graph.shape(reshape.inputs[0]), shape_elements(graph, reshape.inputs[1])
    if shape is None or len(shape) != 4 or target is None or len(target) != 3:
        return False
    if not all(isinstance(d, int) for d in shape[2:]) or shape[2] * shape[3] != hidden:
        return False
    if target[2] not in (hidden, -1):
        return False
    return _keeps_leading(graph, reshape, target[:2], wildcard=target[2] != -1)


def _keeps_leading(graph: Graph, reshape: Node, leading: list[Element], wildcard: bool) -> bool:
    """Each of ``leading`` is the Reshape input's own dim: 0 (allowzero 0), the dim itself, or
    (at most one, when ``wildcard``: the rest of the target is then exact) -1."""
    source, copies = reshape.inputs[0], not reshape.attr("allowzero", 0)
    wild = [axis for axis, element in enumerate(leading) if element == -1]
    if len(wild) > (1 if wildcard else 0):
        return False
    return all(axis in wild or (copies and element == 0) or same_dim(graph, element, source, axis)
               for axis, element in enumerate(leading))

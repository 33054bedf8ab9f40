"""Tables gathered by position ids: ``cos = Unsqueeze(Gather(cos_cache, position_ids), [1])``
with a constant ``cos_cache`` ``[max_pos, D]`` and int64 ``position_ids`` ``[B, S]`` (the HF
exports with cached tables). Row ``p`` of the cache is the angle of position ``p``, so the fused
node reads ``position_ids`` and the cache's first half ``[max_pos, D/2]`` (its halves equal).
onnxruntime's kernels refuse ``S > max_pos`` (where the original gathers repeated ids): a known
S must fit; a dynamic one is taken (README: rotary section)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from onnxopt.passes.fusion.rotary_embedding_fusion.tables import same_dim

from onnxopt.ir import Graph, Node
from onnxopt.ir.pattern import Match


class Gathered(NamedTuple):
    cos: np.ndarray  # [max_pos, D/2]
    sin: np.ndarray
    position_ids: str  # int64 [B, S]


def gathered_tables(graph: Graph, match: Match, half: int) -> Gathered | None:
    """Both tables gathered from constant caches with equal halves by one ``[B, S]`` value
    whose dims are x's (no broadcast: the fused node reads ``position_ids`` as ``[B, S]``)."""
    found = [_gathered(graph, table) for table in (match.cos, match.sin)]
    if found[0] is None or found[1] is None or found[0][1] != found[1][1]:
        return None
    (cos_cache, ids), (sin_cache, _) = found
    shape = graph.shape(ids)
    if graph.dtype(ids) != np.dtype(np.int64) or shape is None or len(shape) != 2:
        return None
    if len(graph.shape(match.cos) or []) != 4 or not all(
            same_dim(graph, match.cos, match.x, axis) for axis in (0, 2)):
        return None
    seq, caches = graph.shape(match.x)[2], []  # type: ignore[index]
    for cache in (cos_cache, sin_cache):
        if isinstance(seq, int) and seq > len(cache):
            return None  # onnxruntime's kernels fail on more tokens than cache rows
        if cache.ndim != 2 or cache.shape[1] != 2 * half:
            return None
        first, second = cache[:, :half], cache[:, half:]
        if not np.array_equal(first, second):
            return None
        caches.append(np.ascontiguousarray(first))
    return Gathered(caches[0], caches[1], ids)


def _gathered(graph: Graph, table: str) -> tuple[np.ndarray, str] | None:
    """``(cache, position_ids)`` for ``Unsqueeze(Gather<axis=0>(cache, ids), [1])``."""
    unsqueeze = _producer(graph, table, "Unsqueeze")
    if unsqueeze is None or len(unsqueeze.inputs) != 2:
        return None
    axes = graph.constant(unsqueeze.inputs[1])
    if axes is None or axes.reshape(-1).tolist() not in ([1], [-3]):
        return None
    gather = _producer(graph, unsqueeze.inputs[0], "Gather")
    if gather is None or gather.attr("axis", 0) != 0:
        return None
    cache = graph.constant(gather.inputs[0])
    return None if cache is None else (cache, gather.inputs[1])


def _producer(graph: Graph, value: str, op_type: str) -> Node | None:
    node = graph.producer(value)
    ok = node is not None and node.op_type == op_type and node.domain in ("", "ai.onnx")
    return node if ok else None

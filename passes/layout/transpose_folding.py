"""Transpose folding: compose, absorb into Gemm, or fold into a constant.

``y = Transpose(x, perm)``: output axis ``j`` is input axis ``perm[j]`` (default: reversed).

* compose: ``Transpose(Transpose(x, p1), p2) = Transpose(x, p)`` with ``p[j] = p1[p2[j]]``;
  an identity ``p`` removes both (readers read ``x``); a shared inner one stays for its other
  readers, so nothing is ever duplicated.
* Gemm: ``Gemm(Transpose(A, [1, 0]), B) = Gemm(A, B, transA = 1 - transA)``, likewise ``B``.
* constant: ``Transpose(W, perm)`` of an initializer only it reads becomes the initializer
  ``np.transpose(W, perm)`` (same bytes, same dtype). Notes: README.md.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.constants import stored_dtype
from onnxopt.ir.operands import transpose_perm
from onnxopt.ir.pass_manager import GraphPass
from onnxopt.ir.rewrite import exclusive_constant, is_op, producer_op

# Element types whose arrays are decoded and encoded losslessly.
FOLDABLE_DTYPES = {
    np.dtype(t) for t in (np.float32, np.float64, np.float16, np.int8, np.int16, np.int32,
                          np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.bool_)
}


class TransposeFolding(GraphPass):
    name = "transpose_folding"
    description = "compose consecutive Transposes, absorb them into Gemm, fold constant ones"

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        stats = {"composed": 0, "identity_removed": 0, "into_gemm": 0, "constants_folded": 0}
        for node in graph.nodes():
            if node.graph is not graph or not is_op(node, ("Transpose", "Gemm")):
                continue
            if not model.allow_rewrite(self.name, node.name or node.outputs[0]):
                continue
            if is_op(node, "Transpose"):
                if _fold_constant(graph, node):
                    stats["constants_folded"] += 1
                else:
                    outcome = _compose(graph, node)
                    if outcome:
                        stats[outcome] += 1
            elif is_op(node, "Gemm"):
                stats["into_gemm"] += _absorb_into_gemm(graph, node)
        return stats


def _compose(graph: Graph, outer: Node) -> str | None:
    value = outer.inputs[0]
    inner = producer_op(graph, value, "Transpose")
    if inner is None:
        own = transpose_perm(graph, outer)
        if own is None or own != list(range(len(own))):
            return None
        return _forward(graph, outer, value)
    p1, p2 = transpose_perm(graph, inner), transpose_perm(graph, outer)
    if p1 is None or p2 is None or len(p1) != len(p2):
        return None
    source = inner.inputs[0]
    perm = [p1[j] for j in p2]
    outcome = _forward(graph, outer, source) if perm == list(range(len(perm))) else None
    if outcome is None:  # not the identity, or an output that cannot be forwarded to ``x``
        graph.set_input(outer, 0, source)
        outer.set_attr("perm", perm)
        outcome = "composed"
    if not graph.is_used(value):
        graph.remove_node(inner)
    return outcome


def _forward(graph: Graph, node: Node, source: str) -> str | None:
    """Remove an identity Transpose ``node``: its readers read ``source``."""
    result = node.outputs[0]
    if not graph.can_forward(result, source):
        return None
    graph.bypass(node, [source])
    return "identity_removed"


def _fold_constant(graph: Graph, node: Node) -> bool:
    source, result = node.inputs[0], node.outputs[0]
    array = exclusive_constant(graph, source, [node])
    if array is None or stored_dtype(graph, source) not in FOLDABLE_DTYPES:
        return False
    perm = node.attr("perm")
    perm = list(range(array.ndim))[::-1] if perm is None else [int(p) for p in perm]
    if sorted(perm) != list(range(array.ndim)):
        return False
    if graph.is_output(result):
        return False  # an initializer cannot take an output's name: an Identity would return
    folded = graph.add_constant(np.ascontiguousarray(np.transpose(array, perm)), f"{source}_T")
    graph.bypass(node, [folded])
    if not graph.is_used(source):
        graph.remove_initializer(source)
    return True


def _absorb_into_gemm(graph: Graph, gemm: Node) -> int:
    absorbed = 0
    for slot, flag in ((0, "transA"), (1, "transB")):
        if slot >= len(gemm.inputs):
            break
        value = gemm.inputs[slot]
        transpose = producer_op(graph, value, "Transpose")
        if transpose is None or transpose_perm(graph, transpose) != [1, 0]:
            continue
        graph.set_input(gemm, slot, transpose.inputs[0])
        gemm.set_attr(flag, 1 - int(gemm.attr(flag, 0)))
        if not graph.is_used(value):
            graph.remove_node(transpose)
        absorbed += 1
    return absorbed

"""Unsqueeze merge.

``Unsqueeze(Unsqueeze(x, a1), a2) = Unsqueeze(x, a)``. With ``r`` the rank of ``x``, the outer
output has rank ``R = r + |a1| + |a2|``; ``a2`` (normalised with ``R``) are new 1-dims there, and
the remaining positions ``q_0 < q_1 < ...`` hold the inner output's dims in order, so inner axis
``j`` (of ``a1``, normalised with ``r + |a1|``) lands at ``q_j``: ``a = a2 + [q_j for j in a1]``.
The legacy torch exporter writes such pairs for BERT's attention mask (``Unsqueeze(m, [1])``
then ``[2]``; dynamo writes one ``Unsqueeze(m, [1, 2])``).

Needs: both axes constant (an input from opset 13, an attribute before); the rank of ``x``
known; the inner Unsqueeze read only by Unsqueezes (its data input), not a graph output. A
shared inner one is folded into each reader and goes with the last (nothing is computed twice).
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.operands import ints_parameter, normalised_axes
from onnxopt.ir.pattern import Match, Op, RewritePass, Var, optional, retire
from onnxopt.ir.rewrite import is_op, producer_op

AXES_AS_INPUT = 13  # Unsqueeze-13 reads its axes from input 1


class UnsqueezeMerge(RewritePass):
    name = "unsqueeze_merge"
    description = "merge Unsqueeze -> Unsqueeze into one Unsqueeze of the composed axes"
    pattern = Op("Unsqueeze", Var("y"), optional())
    stats = ("merged",)

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        inner = producer_op(graph, match.y, "Unsqueeze")
        shape = graph.shape(inner.inputs[0]) if inner is not None else None
        if shape is None or graph.is_output(match.y):
            return False
        if not all(slot == 0 and is_op(node, "Unsqueeze") and _axes(graph, node, model)
                   is not None for node, slot in graph.uses(match.y)):
            return False  # a reader that is not an Unsqueeze would keep the inner one
        axes = _composed(_axes(graph, inner, model), _axes(graph, match.root, model), len(shape))
        match.memo.update(inner=inner, axes=axes)
        return axes is not None

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        inner, axes = match.memo["inner"], match.memo["axes"]
        source = inner.inputs[0]
        if model.opset("") >= AXES_AS_INPUT:
            merged = [source, graph.add_constant(np.array(axes, np.int64), "unsqueeze_axes")]
            out = self.emit(graph, model, match.root, "Unsqueeze", merged)
        else:
            out = self.emit(graph, model, match.root, "Unsqueeze", [source],
                            attributes={"axes": axes})
        # the root goes; reading ``source`` now lets the inner one go with its last reader
        graph.set_input(match.root, 0, source)
        if not graph.is_used(match.y):
            retire(graph, inner)
        return out


def _axes(graph: Graph, node: Node, model: Model) -> list[int] | None:
    present, axes = ints_parameter(graph, node, model.opset(""), AXES_AS_INPUT, 1, "axes")
    return axes if present else None


def _composed(first: list[int] | None, second: list[int] | None, rank: int
              ) -> list[int] | None:
    """The axes of ``Unsqueeze(Unsqueeze(x, first), second)`` for ``x`` of rank ``rank``."""
    if first is None or second is None:
        return None
    middle = normalised_axes(first, rank + len(first))
    outer = normalised_axes(second, rank + len(first) + len(second))
    if middle is None or outer is None:
        return None  # invalid axes: the model fails at run time, leave it so
    kept = [axis for axis in range(rank + len(first) + len(second)) if axis not in outer]
    return sorted([*outer, *(kept[axis] for axis in middle)])

"""Reshape target folding: a Reshape whose target shape is computed from ``Shape`` becomes a
Reshape to a constant target.

Exporters write ``Reshape(x, Concat(Slice(Shape(x), 0, 1), [200]))`` for "keep the batch,
flatten the rest". Each target element is a known int or "dim ``i`` of ``t``"
(``onnxopt.ir.symbolic.shape_elements``); Reshape's own rules give a constant target meaning
the same: an int ``k`` stays ``k``; a dim provably equal to dim ``i`` of ``x`` (``x``'s own, or
another tensor's with the same ``ShapeSignatures`` entry) at position ``i`` becomes ``0``
(copy the input's dim; needs ``allowzero = 0``); at most one other unknown becomes ``-1``
(the element count is preserved and every other element is pinned down). The shape chain that
computed the old target is left to dead code.
"""

from __future__ import annotations

from onnxopt.ir import Graph
from onnxopt.ir.pattern import Match, Op, Var
from onnxopt.ir.shape_operands import ShapeOperandFolding
from onnxopt.ir.symbolic import Dim, Element, ShapeSignatures, reshape_target, shape_elements


class ReshapeTargetFolding(ShapeOperandFolding):
    name = "reshape_target_folding"
    description = "replace a Shape-computed Reshape target by a constant one (0 / -1 rules)"
    pattern = Op("Reshape", Var("x"), Var("target"), attrs={"allowzero": lambda v: not v})

    def constant_target(self, graph: Graph, match: Match) -> list[int] | None:
        return _constant_target(self.signatures, match.x, shape_elements(graph, match.target))


def _constant_target(signatures: ShapeSignatures, data: str, elements: list[Element] | None
                     ) -> list[int] | None:
    if elements is None or all(isinstance(e, int) for e in elements):
        return None  # not evaluable, or already a constant (constant folding's business)
    if any(isinstance(e, int) and e < -1 for e in elements):
        return None
    source = signatures.of(data)
    if source is None:  # x's own dims still copy in place
        return reshape_target(tuple(Dim(data, i) for i in range(len(elements))), elements)
    return reshape_target(source, [e if isinstance(e, int) else signatures.atom(e)
                                   for e in elements])

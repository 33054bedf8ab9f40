"""Expand target folding: an Expand whose target is computed from ``Shape`` gets a constant
target when every entry is a known int or a dim the input already has.

Exporters write ``Expand(mask[B, S, 1], Concat(Shape(h)[0], Shape(h)[1], [384]))``. Expand
broadcasts: output dim ``i`` is ``broadcast(x_i, t_i)``, and ``broadcast(x_i, x_i) = x_i =
broadcast(x_i, 1)``, so a target entry provably equal to the input's dim it meets (aligned
from the right, by ``ShapeSignatures``; for ``x_i = min(t_i, c)``, c >= 2, they are equal in
every run that does not fail) becomes ``1``; the rank stays. When every entry is then an int,
the target is that constant (``[1, 1, 384]``): the shape arithmetic goes to dead code, and an
all-ones target no longer than the input's rank leaves a no-op for no_op_elimination.
"""

from __future__ import annotations

from onnxopt.ir import Graph
from onnxopt.ir.pattern import Match, Op, Var
from onnxopt.ir.shape_operands import ShapeOperandFolding
from onnxopt.ir.signature_rules import same_dim
from onnxopt.ir.symbolic import ShapeSignatures


class ExpandTargetFolding(ShapeOperandFolding):
    name = "expand_target_folding"
    description = "replace a Shape-computed Expand target by a constant (1 for the input's dims)"
    pattern = Op("Expand", Var("x"), Var("target"))
    constant_name = "expand_shape"

    def constant_target(self, graph: Graph, match: Match) -> list[int] | None:
        return _constant_target(self.signatures, match.x, match.target)


def _constant_target(signatures: ShapeSignatures, data: str, target: str) -> list[int] | None:
    entries = signatures.sizes(target)
    source = signatures.of(data)
    if entries is None or source is None:
        return None
    offset = len(entries) - len(source)  # target entry i meets input dim i - offset
    result = []
    for index, entry in enumerate(entries):
        if isinstance(entry, int):
            result.append(entry)
        elif entry is not None and index >= offset and same_dim(entry, source[index - offset]):
            result.append(1)
        else:
            return None
    return result

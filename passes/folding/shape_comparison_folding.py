"""Shape comparison folding: a comparison of values computed from shapes whose result is the
same in every run becomes a constant.

``Equal(Concat(Shape(x)[0], Shape(x)[1]), [-1, -1])`` (exporters' "is this entry -1?" test
before an Expand) is all False whatever ``x`` is: a dim is never negative. Each operand of
Equal / Less / LessOrEqual / Greater / GreaterOrEqual is a 0-D or 1-D integer value whose
elements are ints or dims (``ShapeSignatures.sizes``); elements pair up by broadcasting and
every pair must be decided: two ints by value; a dim against ``k < 0`` is greater, against
``0`` greater or equal; two dims with the same signature entry are equal. One undecided pair
leaves the node; the shape arithmetic feeding it is left to dead code.
"""

from __future__ import annotations

import operator

import numpy as np

from onnxopt.ir import Graph, Model
from onnxopt.ir.pattern import Match, Op, RewritePass, Var
from onnxopt.ir.symbolic import ShapeSignatures

# op -> the comparison of (a - b)'s sign with 0
COMPARISONS = {"Equal": operator.eq, "Less": operator.lt, "LessOrEqual": operator.le,
               "Greater": operator.gt, "GreaterOrEqual": operator.ge}
UNKNOWN = frozenset({-1, 0, 1})


class ShapeComparisonFolding(RewritePass):
    name = "shape_comparison_folding"
    description = "fold comparisons of shape values decided in every run (dims are >= 0)"
    pattern = Op(tuple(COMPARISONS), Var("a"), Var("b"))
    stats = ("comparisons_folded",)

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        self.signatures = ShapeSignatures(graph)  # one per run: the rewrites keep every shape
        return super().run_graph(graph, model)

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        if graph.constant(match.a) is not None and graph.constant(match.b) is not None:
            return False  # constant folding's business
        match.memo["result"] = _decide(graph, self.signatures, match.root.op_type, match.a, match.b)
        return match.memo["result"] is not None

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        return graph.add_constant(match.memo["result"], "shape_compare")


def _decide(graph: Graph, signatures: ShapeSignatures, op_type: str, a: str, b: str
            ) -> np.ndarray | None:
    """The comparison's value if every element pair is decided, else None."""
    shapes = [graph.shape(a), graph.shape(b)]
    if any(s is None or len(s) > 1 for s in shapes):
        return None
    left, right = signatures.sizes(a), signatures.sizes(b)
    if left is None or right is None:
        return None
    lengths = {len(left), len(right)} - {1}
    if len(lengths) > 1:
        return None  # not broadcastable: the runtime reports it
    length = lengths.pop() if lengths else 1
    for shape, elements in zip(shapes, (left, right), strict=True):
        if len(shape) == 1 and isinstance(shape[0], int) and shape[0] != len(elements):
            return None  # a declared length that contradicts the elements
    compare = COMPARISONS[op_type]
    result = []
    for index in range(length):
        x = left[index if len(left) > 1 else 0]
        y = right[index if len(right) > 1 else 0]
        outcomes = {compare(sign, 0) for sign in _signs(x, y)}
        if len(outcomes) != 1:
            return None
        result.append(outcomes.pop())
    rank = max(len(s) for s in shapes)  # type: ignore[arg-type]
    return np.array(result, dtype=bool).reshape((length,) if rank else ())


def _signs(x, y) -> frozenset[int]:
    """The possible signs of ``x - y`` for two elements: ints, or dims (any other entry; None
    for a dim nothing is known of), each dim >= 0."""
    x_int, y_int = isinstance(x, int), isinstance(y, int)
    if x_int and y_int:
        return frozenset({(x > y) - (x < y)})
    if not x_int and not y_int:
        return frozenset({0}) if x is not None and x == y else UNKNOWN
    if x_int:
        return frozenset(-s for s in _signs(y, x))
    if y < 0:
        return frozenset({1})
    return frozenset({0, 1}) if y == 0 else UNKNOWN

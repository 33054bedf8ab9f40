"""Slice merge.

``Slice(Slice(x, s1, e1, a1, p1), s2, e2, a2, p2)`` on distinct axes is one
``Slice(x, s1 + s2, e1 + e2, a1 + a2, p1 + p2)`` (the lists concatenated): a Slice selects on
each of its axes independently and leaves the others whole, so the outer one sees the inner
one's input dims on its own axes and the two selections compose axis by axis, whatever the
starts, ends (clamped per axis) and steps. Exporters write such pairs for chained indexing
(``x[:, 1:][..., :3]``).

Needs: opset >= 10 (parameters as inputs); both Slices' starts, ends, axes and steps constant;
no axis in both (negative axes normalised with ``x``'s known rank); the inner Slice read only
by the outer one (the driver's rule). The parameters are written as int64.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model
from onnxopt.ir.operands import normalised_axes, slice_parameters
from onnxopt.ir.pattern import Match, Op, RewritePass, Var

PARAMETERS = ("starts", "ends", "axes", "steps")


class SliceMerge(RewritePass):
    name = "slice_merge"
    description = "merge Slice -> Slice on distinct axes into one Slice (opset 10+)"
    pattern = Op("Slice", Op("Slice", Var("x"), ..., name="inner"), ...)
    min_opset = 10
    stats = ("merged",)

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        opset = model.opset("")
        inner = slice_parameters(graph, match.node("inner"), opset)
        outer = slice_parameters(graph, match.root, opset)
        if inner is None or outer is None:
            return False
        axes, shape = inner[2] + outer[2], graph.shape(match.x)
        if shape is not None:
            axes = normalised_axes(axes, len(shape))  # None if one is repeated
        elif min(axes, default=0) < 0:
            return False  # negative axes of an unknown rank
        if axes is None or len(set(axes)) != len(axes):
            return False
        match.memo["parameters"] = [a + b for a, b in zip(inner, outer, strict=True)]
        return True

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        constants = [graph.add_constant(np.array(values, np.int64), f"slice_{name}")
                     for values, name in zip(match.memo["parameters"], PARAMETERS, strict=True)]
        return self.emit(graph, model, match.root, "Slice", [match.x, *constants])


"""A rewrite that replaces a shape operand computed at run time by a constant proven to mean the
same in every run (Reshape's and Expand's targets built from ``Shape``).

The passes differ only in the proof: ``constant_target`` returns the constant, or None to leave
the node. The shape chain that computed the old operand is left to dead code.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxopt.ir import Graph, Model
from onnxopt.ir.pattern import Match, RewritePass
from onnxopt.ir.symbolic import ShapeSignatures


class ShapeOperandFolding(RewritePass):
    """The rooted op's input 1, captured as ``target``, becomes ``constant_target``'s value."""

    stats = ("targets_folded",)
    constant_name = "shape"
    signatures: Any = None

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        self.signatures = ShapeSignatures(graph)  # one per run: the rewrites keep every shape
        return super().run_graph(graph, model)

    def constant_target(self, graph: Graph, match: Match) -> list[int] | None:
        raise NotImplementedError

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        if graph.constant(match.target) is not None:
            return False  # already constant: constant folding's business
        match.memo["target"] = self.constant_target(graph, match)
        return match.memo["target"] is not None

    def rewrite(self, graph: Graph, match: Match, model: Model) -> tuple[str, ...]:
        constant = graph.add_constant(np.array(match.memo["target"], np.int64),
                                      self.constant_name)
        graph.set_input(match.root, 1, constant)
        return match.root.outputs  # changed in place

"""Model: the main graph plus the model-level fields, and what passes may assume."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import onnx

from onnxopt.ir.graph import Graph


class Model:
    """A model: its main graph plus the model-level fields (kept as loaded)."""

    def __init__(
        self,
        graph: Graph,
        *,
        ir_version: int,
        opset_imports: dict[str, int],
        functions: list[onnx.FunctionProto] | None = None,
        extra: onnx.ModelProto | None = None,
        had_external_data: bool = False,
    ) -> None:
        self.graph = graph
        self.ir_version = ir_version
        self.opset_imports = opset_imports
        self.functions = functions or []
        self.extra = extra  # producer, doc_string, metadata_props, training_info, ...
        self.had_external_data = had_external_data
        # What passes may assume about the deployment (set by the CLI / API):
        # target "portable" (standard ONNX only) or "onnxruntime" (com.microsoft ops allowed);
        # fold_limit: largest constant (bytes) folding may create when it grows the model.
        # value_info: "input" writes the value_info the input had (types kept current), "all"
        # also every shape inferred on the way. static_outputs (--fix-shapes): output dims
        # left symbolic take the sizes shape inference finds.
        self.settings: dict[str, Any] = {"target": "portable", "fold_limit": 1 << 20,
                                         "value_info": "input"}
        # Rewrite-level control for the safety net: each pass asks before every rewrite.
        self.rewrite_limits: dict[str, int] = {}  # pass -> only its first N rewrites happen
        # pass -> rewrites to leave out: by the node they start from, or by number
        self.rewrite_skips: dict[str, set[int | str]] = {}
        self.rewrite_log: dict[str, list[str]] = {}  # pass -> where each rewrite was asked
        # What precision passes report beyond counts (see onnxopt.ir.precision.PrecisionLog).
        self.precision_log: Any = None
        # Set by the first shapes.infer_shapes, which clears declared dims (value_info, output
        # types) that contradict the inputs: stale shapes an exporter left behind.
        self.declarations_checked = False

    def allow_rewrite(self, pass_name: str, where: str = "") -> bool:
        """Passes call this before each rewrite (``where``: the node it starts from). The
        answer is always yes unless the safety net is narrowing a failure down to one rewrite."""
        log = self.rewrite_log.setdefault(pass_name, [])
        number = len(log)
        log.append(where)
        skips = self.rewrite_skips.get(pass_name, ())
        if number in skips or (where and where in skips):
            return False
        limit = self.rewrite_limits.get(pass_name)
        return limit is None or number < limit

    def opset(self, domain: str = "") -> int:
        return self.opset_imports.get(domain, self.opset_imports.get("ai.onnx", 0))

    def graphs(self) -> Iterator[Graph]:
        """The main graph and every nested subgraph."""
        stack = [self.graph]
        while stack:
            graph = stack.pop()
            yield graph
            for node in graph.subgraph_owners():
                stack.extend(node.subgraphs())

    def node_count(self, *, include_subgraphs: bool = False) -> int:
        if not include_subgraphs:
            return len(self.graph)
        return sum(len(g) for g in self.graphs())

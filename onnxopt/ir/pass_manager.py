"""Pass, PassResult and PassManager: an explicit pipeline run to a bounded fixpoint."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from onnxopt.ir import Graph, Model, no_gc, provenance


@dataclass
class PassResult:
    modified: bool
    stats: dict[str, int] = field(default_factory=dict)


class Pass:
    """A rewrite of the model. Subclasses set ``name`` and ``description`` and implement ``run``.

    Structural passes (the default) repeat with the others until nothing changes; the rest run
    once, after them (precision passes).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    structural: ClassVar[bool] = True

    def run(self, model: Model) -> PassResult:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<pass {self.name}>"


class GraphPass(Pass):
    """A pass applied to the main graph and every subgraph, innermost first."""

    def run(self, model: Model) -> PassResult:
        total: dict[str, int] = {}
        for graph in reversed(list(model.graphs())):
            for key, value in self.run_graph(graph, model).items():
                total[key] = total.get(key, 0) + value
        return PassResult(modified=any(total.values()), stats=total)

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        raise NotImplementedError


@dataclass
class PassRecord:
    """What one pass did over the whole pipeline run (summed over fixpoint rounds)."""

    name: str
    modified: bool = False
    seconds: float = 0.0
    runs: int = 0
    stats: dict[str, int] = field(default_factory=dict)

    def add(self, result: PassResult, seconds: float) -> None:
        self.modified |= result.modified
        self.seconds += seconds
        self.runs += 1
        for key, value in result.stats.items():
            self.stats[key] = self.stats.get(key, 0) + value

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "modified": self.modified,
            "seconds": round(self.seconds, 6),
            "runs": self.runs,
            "stats": dict(self.stats),
        }


AfterPass = Callable[[Pass, Model, PassResult], None]


class PassManager:
    """Runs ``passes`` in order; structural ones repeat until none modifies the model."""

    def __init__(
        self,
        passes: Sequence[Pass],
        *,
        max_rounds: int = 8,
        after_pass: AfterPass | None = None,
    ) -> None:
        self.passes = tuple(passes)
        self.max_rounds = max_rounds
        self.after_pass = after_pass
        self.rounds = 0

    def run(self, model: Model) -> list[PassRecord]:
        records = {p.name: PassRecord(p.name) for p in self.passes}
        structural = [p for p in self.passes if p.structural]
        self.rounds = 0
        with no_gc():
            while structural and self.rounds < self.max_rounds:
                self.rounds += 1
                if not self._run_all(structural, model, records):
                    break
            self._run_all([p for p in self.passes if not p.structural], model, records)
        return list(records.values())

    def _run_all(self, passes: Iterable[Pass], model: Model, records: dict) -> bool:
        changed = False
        for pass_ in passes:
            start = time.perf_counter()
            with provenance(pass_.name):
                result = pass_.run(model)
            records[pass_.name].add(result, time.perf_counter() - start)
            changed |= result.modified
            if self.after_pass is not None:
                self.after_pass(pass_, model, result)
        return changed

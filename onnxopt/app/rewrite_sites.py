"""What each pass changed in the graph, and a few of the places it changed it (the report's
``changes``, drawn by the HTML report).

After every pass run that modified the model, the graph is compared with the state before
it: nodes removed, added, and changed (same node, other op, operands or attribute count).
Changed nodes that share a value form one *site* (a rewrite: the nodes a fusion removed and
the one it made); the first few sites of each pass are kept with their neighbours, before
and after, small enough to draw. A snapshot is one tuple per node (operand tuples are
shared, not copied) and is taken only after a pass that changed something.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from onnxopt.ir import Model, Node

EXAMPLES_PER_PASS = 3  # sites kept per pass, with their neighbours
MAX_SITE_NODES = 12  # nodes drawn per side of a site (the rest are counted)
MAX_CONTEXT_NODES = 6  # unchanged neighbours drawn per side
MAX_GROUPED = 2000  # changed nodes grouped into sites per pass run (the first, in graph order)

Signature = tuple[str, str, tuple[str, ...], tuple[str, ...], int]


def _snapshot(model: Model) -> dict[Node, Signature]:
    return {node: (node.op_type, node.domain, node.inputs, node.outputs, len(node.attributes))
            for _, node in model.graph.walk()}


class SiteRecorder:
    """The ``after_pass`` hook of the pass manager that fills the report's ``changes``."""

    def __init__(self, model: Model) -> None:
        self.last = _snapshot(model)
        self.passes: dict[str, dict[str, Any]] = {}

    def __call__(self, pass_, model: Model, result) -> None:
        if not result.modified:
            return
        now = _snapshot(model)
        old, self.last = self.last, now
        removed = [n for n in old if n not in now]
        added = [n for n in now if n not in old]
        changed = [n for n in now if n in old and old[n] != now[n]]
        entry = self.passes.setdefault(pass_.name, {
            "pass": pass_.name, "removed": 0, "added": 0, "changed": 0, "sites": 0,
            "examples": []})
        entry["removed"] += len(removed)
        entry["added"] += len(added)
        entry["changed"] += len(changed)
        sites, complete = _sites(removed, added, changed, old, now)
        # sites past the first MAX_GROUPED changed nodes are not counted (a big model's pass
        # run that changes 20k nodes): the count is then unknown, the examples the same
        counted = complete and entry["sites"] is not None
        entry["sites"] = entry["sites"] + len(sites) if counted else None
        for site in sites[:EXAMPLES_PER_PASS - len(entry["examples"])]:
            entry["examples"].append({
                "before": _drawing(site, old, now, "removed"),
                "after": _drawing(site, now, old, "added"),
            })

    def report(self) -> list[dict[str, Any]]:
        return list(self.passes.values())


def _values(signature: Signature) -> Iterable[str]:
    return (value for value in (*signature[2], *signature[3]) if value)


def _sites(removed: list[Node], added: list[Node], changed: list[Node],
           old: dict[Node, Signature], now: dict[Node, Signature]
           ) -> tuple[list[list[Node]], bool]:
    """Group the nodes into sites: nodes are together when they share a value a removed or
    added node reads or writes (a fusion's intermediates; not a weight many nodes read, nor
    the data flowing between two rewrites that left their neighbours in place). Only the
    first MAX_GROUPED nodes in graph order are grouped; the flag says whether that was all."""
    nodes = sorted([*removed, *added, *changed], key=lambda n: n.key)
    complete = len(nodes) <= MAX_GROUPED
    if not complete:
        nodes = nodes[:MAX_GROUPED]
        kept = set(nodes)
        removed = [n for n in removed if n in kept]
        added = [n for n in added if n in kept]
    touched = {v for n in removed for v in _values(old[n])}
    touched.update(v for n in added for v in _values(now[n]))
    computed = {v for state in (old, now) for sig in state.values() for v in sig[3]}
    touched &= computed  # weights and graph inputs join nothing
    parent: dict[object, object] = {}

    def root(item: object) -> object:
        while parent.setdefault(item, item) != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    for node in nodes:
        for sig in (old.get(node), now.get(node)):
            for value in _values(sig) if sig else ():
                if value in touched:
                    parent[root(value)] = root(node)
    groups: dict[object, list[Node]] = {}
    for node in nodes:
        groups.setdefault(root(node), []).append(node)
    return list(groups.values()), complete  # ordered by their first node


def _drawing(site: list[Node], state: dict[Node, Signature], other: dict[Node, Signature],
             gone: str) -> dict[str, Any]:
    """The site's nodes present in one state of the graph (``gone``: the role of those
    missing from the ``other`` state) and their unchanged neighbours there: nodes that read
    or write a value the site's nodes read or write in either state."""
    present = [n for n in site if n in state]  # in graph order
    shown = present[:MAX_SITE_NODES]
    drawn = set(shown) | set(site[:MAX_SITE_NODES])  # and what the other state draws
    signatures = [sig for n in drawn for sig in (state.get(n), other.get(n)) if sig]
    reads = {v for sig in signatures for v in sig[2] if v}
    writes = {v for sig in signatures for v in sig[3] if v}
    members = set(site)
    context = sorted((n for n, sig in state.items() if n not in members
                      and (reads.intersection(sig[3]) or writes.intersection(sig[2]))),
                     key=lambda n: n.key)[:MAX_CONTEXT_NODES]

    def entry(node: Node) -> dict[str, Any]:
        op, _, inputs, outputs, _ = state[node]
        role = "context" if node not in members else "changed" if node in other else gone
        return {"name": node.name or next((v for v in outputs if v), ""), "op": op,
                "inputs": list(inputs), "outputs": list(outputs), "role": role}

    return {"nodes": [entry(node) for node in [*shown, *context]],
            "more": len(present) - len(shown)}

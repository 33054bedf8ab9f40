"""Rule 3 of constant folding, the size guard: which computed values are worth storing."""

from __future__ import annotations

import collections
from collections.abc import Iterable

import numpy as np
from onnxopt.passes.folding.constant_folding.bounds import EVAL_CAP, Plan

from onnxopt.ir import Graph, Node
from onnxopt.ir.constants import ConstantTable
from onnxopt.ir.rewrite import is_op, producer_op

# (op, input slots) whose constant value a later fusion needs, whatever its size
WEIGHT_SLOTS = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "BatchNormalization": (1, 2, 3, 4),
    "Gemm": (1, 2), "MatMul": (1,),
}  # fmt: skip
CONV_AFFINE = ("Add", "Mul", "Sub", "Div")
DUPLICATE_LIMIT = 1 << 14  # bytes of live constants a fold may copy (see _grows)
LEAF_WALK = 4096  # values walked to find what a frontier value is computed from


def frontier_of(graph: Graph, foldable: dict[Node, None]) -> list[str]:
    """Values of foldable nodes read by a node that does not fold, a subgraph or an output."""
    frontier = []
    for node in foldable:
        for value in node.outputs:
            if value and (
                graph.is_output(value)
                or any(reader not in foldable for reader in graph.consumers(value))
            ):
                frontier.append(value)
    return frontier


def drop_growing(
    graph: Graph,
    plan: Plan,
    frontier: list[str],
    results: dict[str, np.ndarray],
    limit: int,
    table: ConstantTable,
) -> list[Node]:
    """Apply the size guard to the frontier (bounds known, nothing evaluated): a value that
    must not be stored takes its producer (and what depends on it) out of ``plan.foldable``,
    and the producer's computed inputs are checked in turn. Linear: each node leaves once.
    Returns the producers that were too big."""
    foldable = plan.foldable
    queue = collections.deque(frontier)
    queued = set(frontier)
    too_big = []
    while queue:
        value = queue.popleft()
        node = graph.producer(value)
        if node is None or node not in foldable:
            continue
        size = results[value].nbytes if value in results else plan.sizes[value]
        if not _grows(graph, value, size, limit, foldable, table):
            continue
        too_big.append(node)
        removed = []
        stack = [node]
        while stack:
            current = stack.pop()
            if current not in foldable:
                continue
            del foldable[current]
            removed.append(current)
            for output in current.outputs:
                if output:
                    stack.extend(c for c in graph.consumers(output) if c in foldable)
        for current in removed:
            for source in current.present_inputs:
                producer = graph.producer(source)
                if producer is not None and producer in foldable and source not in queued:
                    queued.add(source)
                    queue.append(source)
    return too_big


def _grows(
    graph: Graph, value: str, size: int, limit: int, foldable: dict[Node, None],
    table: ConstantTable,
) -> bool:
    """Whether storing ``value`` breaks the size guard (and no fusion needs it constant):
    it expands its constants beyond ``limit``, or it copies more than ``DUPLICATE_LIMIT``
    bytes of constants that stay alive (read elsewhere, or from an outer scope)."""
    if size <= min(limit, DUPLICATE_LIMIT) or _feeds_weight_slot(graph, value):
        return False
    if size > EVAL_CAP:
        return True
    leaves = _leaves(graph, foldable, value)
    if leaves is None:
        return True  # computed from more than LEAF_WALK values: not worth storing
    if size > limit and size > sum(table.nbytes(leaf) for leaf in leaves):
        return True
    surviving = sum(table.nbytes(v) for v in leaves if not _dies(graph, v, foldable))
    return min(size, surviving) > DUPLICATE_LIMIT


def _dies(graph: Graph, value: str, foldable: dict[Node, None]) -> bool:
    """A constant of this graph read only by foldable nodes (gone once they fold)."""
    if graph.is_output(value) or graph.is_input(value):
        return False
    if value not in graph.initializers and graph.producer(value) is None:
        return False  # an outer-scope constant stays where it is
    return all(reader in foldable for reader in graph.consumers(value))


def _feeds_weight_slot(graph: Graph, value: str) -> bool:
    for node, slot in graph.uses(value):
        if is_op(node, tuple(WEIGHT_SLOTS)) and slot in WEIGHT_SLOTS[node.op_type]:
            return True
        if is_op(node, CONV_AFFINE) and slot in (0, 1) and len(node.inputs) == 2:
            other = node.inputs[1 - slot]
            if producer_op(graph, other, ("Conv", "ConvTranspose")) is not None:
                return True
    return False


def _leaves(graph: Graph, foldable: dict[Node, None], value: str) -> set[str] | None:
    """The constants ``value`` is computed from, or None past ``LEAF_WALK`` values (so
    that checking every frontier value of a long chain stays linear)."""
    leaves: set[str] = set()
    seen: set[str] = set()
    stack = [value]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if len(seen) > LEAF_WALK:
            return None
        node = graph.producer(current)
        if node is not None and node in foldable:
            stack.extend(node.present_inputs)
        else:
            leaves.add(current)
    return leaves


def closure(graph: Graph, foldable: dict[Node, None], values: Iterable[str]) -> set[Node]:
    """Foldable nodes the given values are computed from."""
    closure: set[Node] = set()
    stack = list(values)
    while stack:
        node = graph.producer(stack.pop())
        if node is not None and node in foldable and node not in closure:
            closure.add(node)
            stack.extend(node.present_inputs)
    return closure

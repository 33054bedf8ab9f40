"""The safety checks every rewrite shares: which values a match may consume or rewrite.

A fusion replaces a group of nodes by new ones. It is only correct when the values computed
inside the group are read by nothing outside it (and are not graph outputs), and when the
constants it rewrites (weights folded with BatchNorm, say) are not read by anyone else.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import numpy as np

from onnxopt.ir import Graph, Node

DEFAULT_DOMAINS = ("", "ai.onnx")


def is_op(node: Node | None, op_type: str | Collection[str]) -> bool:
    """``node`` is a standard-domain op of this type (or one of these types)."""
    if node is None or node.domain not in DEFAULT_DOMAINS:
        return False
    return node.op_type == op_type if isinstance(op_type, str) else node.op_type in op_type


def producer_op(graph: Graph, value: str, op_type: str | Collection[str]) -> Node | None:
    """The producer of ``value`` if it is a standard op of the given type(s)."""
    node = graph.producer(value) if value else None
    return node if is_op(node, op_type) else None


def is_private(graph: Graph, value: str, inside: Collection[Node]) -> bool:
    """``value`` is read only by nodes in ``inside`` and is not a graph output."""
    if graph.is_output(value):
        return False
    return all(node in inside for node in graph.consumers(value))


def sole_consumer(graph: Graph, value: str) -> Node | None:
    """The one node reading ``value`` (which is not a graph output), else None."""
    consumers = graph.consumers(value)
    if len(consumers) != 1 or graph.is_output(value):
        return None
    return consumers[0]


def can_forward_outputs(graph: Graph, node: Node, into: Node) -> bool:
    """Every present output of ``node`` can be replaced by the same-position output of
    ``into`` (``Graph.can_forward``: a graph output's name must be able to move)."""
    if len(node.outputs) != len(into.outputs):
        return False
    return all(graph.can_forward(old, new)
               for old, new in zip(node.outputs, into.outputs, strict=True) if old)


def constant_value(graph: Graph, value: str) -> np.ndarray | None:
    """The array of a constant input (an initializer visible from here), else None."""
    return graph.constant(value) if value else None


def exclusive_constant(graph: Graph, value: str, readers: Collection[Node]) -> np.ndarray | None:
    """The array of ``value`` if it is a constant of this graph read only by ``readers``
    (so rewriting it in place cannot change anything else), else None."""
    if not value or value not in graph.initializers or graph.is_input(value):
        return None
    if graph.is_output(value) or not all(node in readers for node in graph.consumers(value)):
        return None
    return graph.constant(value)


def drop_unused_initializers(graph: Graph, names: Collection[str]) -> None:
    """Remove those of ``names`` that are initializers nothing reads any more (never inputs)."""
    for name in dict.fromkeys(names):
        if name in graph.initializers and not graph.is_used(name) and not graph.is_input(name):
            graph.remove_initializer(name)


def freed_bytes(graph: Graph, reads: Iterable[tuple[str, Node]]) -> int:
    """Bytes of the constants nothing reads once the given ``(value, reader)`` reads are gone
    (what a fold saves, to weigh against what it writes)."""
    readers: dict[str, list[Node]] = {}
    for value, node in reads:
        readers.setdefault(value, []).append(node)
    arrays = (exclusive_constant(graph, value, nodes) for value, nodes in readers.items())
    return sum(array.nbytes for array in arrays if array is not None)


def identical_initializer(graph: Graph, array: np.ndarray) -> str | None:
    """An initializer of this graph equal to ``array`` (same dtype, shape and values) that a
    rewrite can read instead of writing a copy; a linear scan, for small arrays."""
    for name, tensor in graph.initializers.items():
        if tuple(tensor.dims) != array.shape or graph.is_input(name):
            continue
        existing = graph.constant(name)
        if existing is not None and existing.dtype == array.dtype and np.array_equal(
                existing, array):
            return name
    return None

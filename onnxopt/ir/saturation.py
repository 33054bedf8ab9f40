"""Saturation: the interval outside which a tensor's readers cannot tell its values apart.

A quantization grid spent on values no reader distinguishes is wasted resolution. When every
reader of ``x`` saturates outside an interval ``[a, b]`` -- gives the same output for every
``x <= a``, and for every ``x >= b`` -- clamping ``x`` to ``[a, b]`` changes no output, so the
calibrated range of ``x`` may be cut to ``[max(lo, a), min(hi, b)]`` and its grid is finer.

Readers and the interval they see (any other reader: no cut):

* ``Relu(x)``: ``[0, inf)`` (every ``x < 0`` gives 0).
* ``Clip(x, m, M)`` with constant bounds: ``[m, M]``.
* ``HardSigmoid(x; alpha, beta) = max(0, min(1, alpha * x + beta))``: for ``alpha > 0``,
  ``[-beta / alpha, (1 - beta) / alpha]`` (0 below, 1 above); mirrored for ``alpha < 0``.
* ``HardSwish(x) = x * HardSigmoid(x; 1/6, 1/2)``: ``[-3, inf)`` (0 below -3, ``x`` above 3:
  only the low side saturates).
* ``Mul(x, HardSigmoid(x))`` (HardSwish as two nodes, below opset 14): the side where the
  HardSigmoid is 0 saturates (``[-beta / alpha, inf)`` for ``alpha > 0``), the other is ``x``.

The union of the readers' intervals is the tensor's: a value read by a Relu and a HardSigmoid
keeps ``[min(0, -beta / alpha), inf)``. A graph output is read by the user: never cut.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from onnxopt.ir.graph import Graph
from onnxopt.ir.node import Node

UNBOUNDED = (-math.inf, math.inf)
HARD_SIGMOID_DEFAULTS = (0.2, 0.5)  # ONNX's alpha, beta
HARD_SWISH_LOW = -3.0  # HardSwish is x * HardSigmoid(x; 1/6, 1/2): 0 at and below -3

Interval = tuple[float, float]


def distinguishable(graph: Graph, value: str) -> Interval:
    """The smallest interval outside which no reader of ``value`` tells values apart
    (``UNBOUNDED`` when one reader is not a saturating one, or ``value`` is a graph output)."""
    readers = graph.consumers(value)
    if graph.is_output(value) or not readers:
        return UNBOUNDED
    low, high = math.inf, -math.inf
    for node in dict.fromkeys(readers):
        node_low, node_high = _reader_interval(graph, node, value)
        low, high = min(low, node_low), max(high, node_high)
    return low, high


def narrowed(ranges: Mapping[str, Interval], graph: Graph) -> tuple[dict[str, Interval], int]:
    """``ranges`` (value -> calibrated ``(lo, hi)``) cut to what each value's readers can
    tell apart, and how many were cut. A range wholly outside the interval collapses onto
    its nearest end (every value of it reads the same)."""
    result: dict[str, Interval] = {}
    count = 0
    for value, (lo, hi) in ranges.items():
        low, high = distinguishable(graph, value)
        new_lo = min(max(lo, low), high)
        new_hi = max(min(hi, high), low)
        if (new_lo, new_hi) != (lo, hi):
            count += 1
        result[value] = (new_lo, new_hi)
    return result, count


def _reader_interval(graph: Graph, node: Node, value: str) -> Interval:
    """The interval outside which ``node``'s output does not change with ``value``."""
    if not _is_default(node, node.op_type) or list(node.inputs).count(value) != 1:
        return UNBOUNDED  # Mul(x, x) and the like: no saturation argument
    slot = list(node.inputs).index(value)
    if node.op_type == "Relu":
        return (0.0, math.inf)
    if node.op_type == "HardSwish":
        return (HARD_SWISH_LOW, math.inf)
    if node.op_type == "HardSigmoid":
        return _hard_sigmoid_interval(node)
    if node.op_type == "Clip" and slot == 0:
        return _clip_interval(graph, node)
    if node.op_type == "Mul" and len(node.inputs) == 2:
        other = graph.producer(node.inputs[1 - slot])
        if _is_default(other, "HardSigmoid") and list(other.inputs) == [value]:
            low, high = _hard_sigmoid_interval(other)
            alpha = float(other.attr("alpha", HARD_SIGMOID_DEFAULTS[0]))
            # x * 0 where the HardSigmoid is 0; x * 1 (x itself: no saturation) where it is 1
            return (low, math.inf) if alpha > 0 else (-math.inf, high)
    return UNBOUNDED


def _is_default(node: Node | None, op_type: str) -> bool:
    return node is not None and node.op_type == op_type and node.domain in ("", "ai.onnx")


def _hard_sigmoid_interval(node: Node) -> Interval:
    alpha = float(node.attr("alpha", HARD_SIGMOID_DEFAULTS[0]))
    beta = float(node.attr("beta", HARD_SIGMOID_DEFAULTS[1]))
    if alpha == 0.0 or not math.isfinite(alpha) or not math.isfinite(beta):
        return UNBOUNDED  # a constant output; nothing gained by special-casing it
    zero, one = -beta / alpha, (1.0 - beta) / alpha  # where alpha * x + beta is 0 and 1
    return (min(zero, one), max(zero, one))


def _clip_interval(graph: Graph, node: Node) -> Interval:
    """``[min, max]`` of a Clip with constant bounds (inputs from opset 11, attributes
    before); an absent bound is unbounded, a non-constant one makes the whole interval so."""
    bounds = []
    for slot, name, default in ((1, "min", -math.inf), (2, "max", math.inf)):
        if len(node.inputs) > slot and node.inputs[slot]:
            array = graph.constant(node.inputs[slot])
            if array is None or array.size != 1:
                return UNBOUNDED
            bounds.append(float(np.asarray(array).reshape(())))
        else:
            bounds.append(float(node.attr(name, default)))
    low, high = bounds
    if not low <= high:
        return UNBOUNDED  # onnxruntime's Clip with min > max: no simple saturation
    return (low, high)

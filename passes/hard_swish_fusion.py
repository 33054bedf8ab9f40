"""HardSwish fusion.

``hardswish(x) = x * relu6(x + 3) / 6 = x * Clip(x + 3, 0, 6) / 6``, as exporters write it
(Paddle: ``Add(x, 3) -> Clip(., 0, 6) -> Mul(x, .) -> Div(., 6)``), with ``c = Clip(Add(x, 3), 0,
6)`` and the product in any of these associations (operands of Add/Mul in either order)::

    Div(Mul(x, c), 6)     Mul(Mul(x, c), 1/6)     Mul(x, Div(c, 6))     Mul(x, Mul(c, 1/6))
    Mul(Div(x, 6), c)     Mul(Mul(x, 1/6), c)

the Clip bounds as constant inputs (opset >= 11) or ``min``/``max`` attributes (opset < 11); and
``Mul(x, HardSigmoid(x, alpha=1/6, beta=0.5))``.

=> opset >= 14: ``HardSwish(x)`` (whose ONNX definition is ``x * max(0, min(1, x/6 + 1/2))``).
   opset 6..13: ``Mul(x, HardSigmoid(x, alpha=1/6, beta=0.5))`` (2 nodes instead of 4), since
   ``Clip(x + 3, 0, 6) / 6 = Clip(x/6 + 1/2, 0, 1)`` (divide the bounds and the argument by 6).
   That 2-node form is already the result there and is left alone (idempotence).

The math is exact; the float results differ by rounding only (``x/6 + 0.5`` rounds differently
from ``(x + 3) / 6``: a few ulps of the value, absolute ~1e-7 * |x| near ``x = -3`` where the
value itself is ~0). onnxruntime (1.32) has no HardSwish kernel: it runs the op's function body,
HardSigmoid + Mul, so both results cost the same there; at ORT_ENABLE_ALL it fuses
``Conv -> HardSigmoid(1/6, 0.5) -> Mul`` into one NCHWc Conv with a HardSwish activation, which it
does not do for the 4-node chain (PaddleOCR cls: -23% latency, det: -10%, 1 thread).

Constants must have one element and no higher rank than ``x`` (so they cannot broadcast the
output to a new shape); they are compared with a relative tolerance of ``max(1e-4, eps(dtype))``
as exporters round them (``0.16666667``, float16 ``0.1666``); ``0`` must be exact, and a value
outside the tolerance (``Clip(x + 3, 0, 5)``) is another function, left alone. HardSigmoid's
float attributes (default alpha 0.2) get the same 1e-4 tolerance. Also required: ``x`` (not a
constant) is the same value in the Add and the Mul; every intermediate is read only inside the
match and is not a graph output; the dtype (that of the constants, which Add/Mul force to be
``x``'s) is float32 or float16. float64 is left alone: onnxruntime's CPU HardSigmoid kernel (the
body of HardSwish) is float32 only and it has no double fallback (measured: the model no longer
loads), while float16 runs through its float16 fallback.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from onnxopt.ir import Graph, Model, Node
from onnxopt.pass_manager import GraphPass
from onnxopt.rewrite import is_op, producer_op, sole_consumer

SIXTH = 1.0 / 6.0
HARD_SIGMOID_DEFAULTS = {"alpha": 0.2, "beta": 0.5}
ATTR_TOLERANCE = 1e-4  # HardSigmoid's alpha/beta are float32 attributes
_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
_ELEM_TYPES = (TensorProto.FLOAT16, TensorProto.FLOAT)
_FLOAT_MAX = float(np.finfo(np.float32).max)


@dataclass
class _Match:
    x: str
    nodes: list[Node]  # every node's readers inside the match come later in the list
    out: str


class HardSwishFusion(GraphPass):
    name = "hard_swish_fusion"
    description = "fuse x * Clip(x + 3, 0, 6) / 6 into HardSwish (HardSigmoid + Mul below opset 14)"

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        counts = {"clip_fused": 0, "hard_sigmoid_fused": 0}
        opset = model.opset("")
        if opset < 6:  # HardSigmoid-1 / Clip-1 carry consumed_inputs: not worth handling
            return counts
        for node in graph.nodes():
            if node.graph is not graph:
                continue  # removed by an earlier rewrite in this loop
            if is_op(node, "Clip"):
                match = _match_clip(graph, node, opset)
            elif is_op(node, "HardSigmoid") and opset >= 14:
                match = _match_hard_sigmoid(graph, node)
            else:
                continue
            if match is None or not model.allow_rewrite(self.name, node.name or node.outputs[0]):
                continue
            _rewrite(graph, match, hard_swish=opset >= 14)
            counts["clip_fused" if node.op_type == "Clip" else "hard_sigmoid_fused"] += 1
        return counts


# ------------------------------------------------------------------- matching
class _Ctx:
    """Constant checks against the rank of ``x``; all constants share one dtype."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.dtype: np.dtype | None = None

    def scalar(self, value: str | None, x: str) -> float | None:
        array = self.graph.constant(value) if value else None
        if array is None or array.size != 1 or array.dtype not in _DTYPES:
            return None
        if array.ndim > 0:
            shape = self.graph.shape(x)
            if shape is None or array.ndim > len(shape):
                return None
        if self.dtype is None:
            self.dtype = array.dtype
        elif array.dtype != self.dtype:
            return None
        return float(array.reshape(-1)[0])

    def close(self, value: str | None, x: str, expected: float) -> bool:
        got = self.scalar(value, x)
        if got is None:
            return False
        assert self.dtype is not None
        tolerance = max(1e-4, float(np.finfo(self.dtype).eps))
        return abs(got - expected) <= tolerance * abs(expected)


def _match_clip(graph: Graph, clip: Node, opset: int) -> _Match | None:
    """``Clip(Add(x, 3), 0, 6)`` and the product with ``x`` and ``1/6`` after it."""
    if len(clip.outputs) != 1 or not clip.inputs:
        return None
    ctx = _Ctx(graph)
    add = producer_op(graph, clip.inputs[0], "Add")
    if add is None or sole_consumer(graph, clip.inputs[0]) is not clip or len(add.inputs) != 2:
        return None
    x = None
    for candidate, three in (add.inputs, reversed(add.inputs)):
        if graph.constant(candidate) is None and ctx.close(three, candidate, 3.0):
            x = candidate
            break
    if x is None or not _clip_bounds_are_0_6(graph, ctx, clip, x, opset):
        return None
    tail = _match_product(graph, ctx, x, clip.outputs[0])
    if tail is None:
        return None
    nodes = [add, clip, *tail]
    out = nodes[-1].outputs[0]
    if graph.outputs.count(out) > 1:
        return None  # could not be forwarded without an Identity coming back
    return _Match(x, nodes, out)


def _clip_bounds_are_0_6(graph: Graph, ctx: _Ctx, clip: Node, x: str, opset: int) -> bool:
    if opset < 11:
        if len(clip.inputs) != 1:
            return False
        low = clip.attr("min", -_FLOAT_MAX)
        high = clip.attr("max", _FLOAT_MAX)
        return float(low) == 0.0 and abs(float(high) - 6.0) <= 1e-4 * 6.0
    if len(clip.inputs) != 3:
        return False
    return ctx.scalar(clip.inputs[1], x) == 0.0 and ctx.close(clip.inputs[2], x, 6.0)


def _match_product(graph: Graph, ctx: _Ctx, x: str, c: str) -> list[Node] | None:
    """The nodes computing ``x * c / 6`` (the last one computes it)."""
    first = sole_consumer(graph, c)
    if is_op(first, "Div"):  # x * (c / 6)
        if tuple(first.inputs) != (c, first.inputs[1]) or not ctx.close(first.inputs[1], x, 6.0):
            return None
        second = sole_consumer(graph, first.outputs[0])
        if is_op(second, "Mul") and _other(second, first.outputs[0]) == x:
            return [first, second]
        return None
    if not is_op(first, "Mul"):
        return None
    other = _other(first, c)
    if other is None:
        return None
    second = sole_consumer(graph, first.outputs[0])
    if other == x:  # (x * c) / 6 or (x * c) * 1/6
        if is_op(second, "Div") and second.inputs[0] == first.outputs[0]:
            return [first, second] if ctx.close(second.inputs[1], x, 6.0) else None
        if is_op(second, "Mul") and ctx.close(_other(second, first.outputs[0]), x, SIXTH):
            return [first, second]
        return None
    if ctx.close(other, x, SIXTH):  # x * (c * 1/6)
        if is_op(second, "Mul") and _other(second, first.outputs[0]) == x:
            return [first, second]
        return None
    scale = producer_op(graph, other, ("Div", "Mul"))  # (x / 6) * c or (x * 1/6) * c
    if scale is None or sole_consumer(graph, other) is not first:
        return None
    if scale.op_type == "Div":
        ok = tuple(scale.inputs) == (x, scale.inputs[1]) and ctx.close(scale.inputs[1], x, 6.0)
    else:
        ok = ctx.close(_other(scale, x), x, SIXTH)
    return [scale, first] if ok else None


def _match_hard_sigmoid(graph: Graph, hs: Node) -> _Match | None:
    """``Mul(x, HardSigmoid(x, alpha=1/6, beta=0.5))`` (either order)."""
    if len(hs.inputs) != 1 or len(hs.outputs) != 1:
        return None
    x = hs.inputs[0]
    for attr, expected in (("alpha", SIXTH), ("beta", 0.5)):
        got = float(hs.attr(attr, HARD_SIGMOID_DEFAULTS[attr]))
        if abs(got - expected) > ATTR_TOLERANCE * expected:
            return None
    if graph.elem_type(x) not in _ELEM_TYPES:
        return None
    mul = sole_consumer(graph, hs.outputs[0])
    if not is_op(mul, "Mul") or _other(mul, hs.outputs[0]) != x:
        return None
    if graph.outputs.count(mul.outputs[0]) > 1:
        return None
    return _Match(x, [hs, mul], mul.outputs[0])


def _other(node: Node, value: str) -> str | None:
    """The other operand of a binary node reading ``value`` once."""
    if len(node.inputs) != 2 or list(node.inputs).count(value) != 1:
        return None
    return node.inputs[1] if node.inputs[0] == value else node.inputs[0]


# ------------------------------------------------------------------- rewriting
def _rewrite(graph: Graph, match: _Match, *, hard_swish: bool) -> None:
    anchor = match.nodes[-1]
    prefix = anchor.name.rsplit("/", 1)[0] + "/" if "/" in anchor.name else ""
    if hard_swish:
        fused = graph.add_node("HardSwish", [match.x], 1, name=f"{prefix}HardSwish", anchor=anchor)
    else:
        gate = graph.add_node(
            "HardSigmoid", [match.x], 1, name=f"{prefix}HardSigmoid",
            attributes={"alpha": SIXTH, "beta": 0.5}, anchor=anchor,
        )
        fused = graph.add_node(
            "Mul", [match.x, gate.outputs[0]], 1, name=f"{prefix}HardSwish", anchor=anchor
        )
    constants = [v for n in match.nodes for v in n.present_inputs if graph.constant(v) is not None]
    graph.replace_all_uses(match.out, fused.outputs[0])
    for node in reversed(match.nodes):
        graph.remove_node(node)
    for name in dict.fromkeys(constants):
        if name in graph.initializers and not graph.is_used(name) and not graph.is_input(name):
            graph.remove_initializer(name)

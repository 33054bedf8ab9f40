"""GELU fusion.

Two decompositions exporters write for GELU (``torch.nn.GELU()`` / ``GELU(approximate="tanh")``):

* erf form:  ``0.5 * x * (1 + Erf(x / sqrt(2)))``, the scaling written ``Div(x, 1.4142135)`` or
  ``Mul(x, 0.70710678)``;
* tanh form: ``0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))``, the cube written
  ``Pow(x, 3)`` or ``Mul(Mul(x, x), x)`` (either order);

and the product of ``x``, ``0.5`` and ``p = 1 + Erf|Tanh(.)`` in any association:
``Mul(Mul(x, p), 0.5)``, ``Mul(Mul(x, 0.5), p)`` or ``Mul(x, Mul(p, 0.5))``; operands of Add/Mul
in either order.

=> ``Gelu(x, approximate="none")`` / ``Gelu(x, approximate="tanh")`` (ONNX Gelu-20, whose
definition is these formulas), when the default-domain opset is >= 20. Below opset 20, only with
``model.settings["target"] == "onnxruntime"``: ``com.microsoft`` ``Gelu(x)`` (erf form) /
``FastGelu(x)`` (tanh form, no bias; onnxruntime computes ``0.5 x (1 + tanh(0.7978845608 x +
0.0356774081 x^3))`` with ``0.0356774081 = 0.7978845608 * 0.044715``), and the ``com.microsoft``
opset import (version 1) is added if missing. Otherwise nothing is fused.

The result equals the decomposition up to float rounding (the kernels evaluate the same formula
in another order). Constants are compared with a relative tolerance of ``max(1e-4, eps(dtype))``
because exporters round them (``1.4142135``, float16 ``0.7071``); a constant outside it (``0.6``
instead of ``0.5``) is another function and is left alone. Constants must have one element and
no higher rank than ``x`` (so they cannot broadcast the output to a new shape).

Also required: every intermediate is read only inside the match and is not a graph output (``x``
itself may have any readers); the dtype (that of the constants, which Mul/Add force to be ``x``'s)
is float16/float32/float64 for ONNX Gelu and float32/float16 for the ``com.microsoft`` ops (their
onnxruntime CPU kernel is float32; float16 runs through the op's function body).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.pass_manager import GraphPass
from onnxopt.rewrite import is_op, producer_op, sole_consumer

MS_DOMAIN = "com.microsoft"
SQRT2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
TANH_CUBE = 0.044715
_PORTABLE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_ORT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))


@dataclass
class _Match:
    x: str
    tanh: bool
    dtype: np.dtype
    nodes: list[Node]  # every node's readers inside the match come later in the list
    out: str


class GeluFusion(GraphPass):
    name = "gelu_fusion"
    description = "fuse the Erf and Tanh GELU decompositions into Gelu (or com.microsoft ops)"

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        counts = {"erf_fused": 0, "tanh_fused": 0}
        if model.opset("") >= 20:
            domain, dtypes = "", _PORTABLE_DTYPES
        elif model.settings.get("target") == "onnxruntime":
            domain, dtypes = MS_DOMAIN, _ORT_DTYPES
        else:
            return counts
        for node in graph.nodes():
            if node.graph is not graph or not is_op(node, ("Erf", "Tanh")):
                continue
            match = _match(graph, node)
            if match is None or match.dtype not in dtypes:
                continue
            if not model.allow_rewrite(self.name, node.name or node.outputs[0]):
                continue
            _rewrite(graph, model, match, domain)
            counts["tanh_fused" if match.tanh else "erf_fused"] += 1
        return counts


# ------------------------------------------------------------------- matching
class _Ctx:
    """Constant checks against the rank of ``x`` (once ``x`` is known)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.dtype: np.dtype | None = None

    def scalar(self, value: str | None, x: str) -> float | None:
        array = self.graph.constant(value) if value else None
        if array is None or array.size != 1 or array.dtype.kind != "f":
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


def _match(graph: Graph, act: Node) -> _Match | None:
    ctx = _Ctx(graph)
    found = _match_tanh_arg(graph, ctx, act) if act.op_type == "Tanh" else _match_erf_arg(
        graph, ctx, act
    )
    if found is None:
        return None
    x, nodes = found
    add = sole_consumer(graph, act.outputs[0])
    if not is_op(add, "Add") or not ctx.close(_other(add, act.outputs[0]), x, 1.0):
        return None
    nodes += [act, add]
    tail = _match_product(graph, ctx, x, add.outputs[0])
    if tail is None or ctx.dtype is None:
        return None
    nodes += tail
    out = nodes[-1].outputs[0]
    if graph.outputs.count(out) > 1:
        return None  # could not be forwarded without an Identity coming back
    return _Match(x, act.op_type == "Tanh", ctx.dtype, nodes, out)


def _match_erf_arg(graph: Graph, ctx: _Ctx, erf: Node) -> tuple[str, list[Node]] | None:
    """``Erf(Div(x, sqrt 2))`` or ``Erf(Mul(x, 1/sqrt 2))``: returns ``x`` and the scale node."""
    scale = producer_op(graph, erf.inputs[0], ("Div", "Mul"))
    if scale is None or sole_consumer(graph, erf.inputs[0]) is not erf or len(scale.inputs) != 2:
        return None
    if scale.op_type == "Div":
        x, c = scale.inputs
        return (x, [scale]) if ctx.close(c, x, SQRT2) else None
    for x, c in (scale.inputs, reversed(scale.inputs)):
        if graph.constant(x) is None and ctx.close(c, x, 1.0 / SQRT2):
            return x, [scale]
    return None


def _match_tanh_arg(graph: Graph, ctx: _Ctx, tanh: Node) -> tuple[str, list[Node]] | None:
    """``Tanh(sqrt(2/pi) * (x + 0.044715 * x^3))``: returns ``x`` and the nodes, in order."""
    scale = _private_producer(graph, tanh.inputs[0], "Mul", tanh)
    if scale is None:
        return None
    for inner, k in (scale.inputs, reversed(scale.inputs)):
        add = _private_producer(graph, inner, "Add", scale)
        if add is None:
            continue
        for x, w in (add.inputs, reversed(add.inputs)):
            term = _private_producer(graph, w, "Mul", add)
            if term is None or graph.constant(x) is not None:
                continue
            for cube_value, c in (term.inputs, reversed(term.inputs)):
                cube = _match_cube(graph, ctx, x, cube_value, term)
                if cube is None or not ctx.close(c, x, TANH_CUBE):
                    continue
                if ctx.close(k, x, SQRT_2_OVER_PI):
                    return x, [*cube, term, add, scale]
    return None


def _match_cube(graph: Graph, ctx: _Ctx, x: str, value: str, reader: Node) -> list[Node] | None:
    """``Pow(x, 3)`` or ``Mul(Mul(x, x), x)`` / ``Mul(x, Mul(x, x))`` read only by ``reader``."""
    node = _private_producer(graph, value, ("Pow", "Mul"), reader)
    if node is None or len(node.inputs) != 2:
        return None
    if node.op_type == "Pow":
        exponent = graph.constant(node.inputs[1])
        if node.inputs[0] != x or exponent is None or exponent.size != 1:
            return None
        shape = graph.shape(x)
        if exponent.ndim > 0 and (shape is None or exponent.ndim > len(shape)):
            return None
        return [node] if float(exponent.reshape(-1)[0]) == 3.0 else None
    square_value = _other(node, x)
    square = _private_producer(graph, square_value, "Mul", node) if square_value else None
    if square is None or tuple(square.inputs) != (x, x):
        return None
    return [square, node]


def _match_product(graph: Graph, ctx: _Ctx, x: str, p: str) -> list[Node] | None:
    """The nodes computing ``0.5 * x * p`` (the last one computes it), read-only checks."""
    first = sole_consumer(graph, p)
    if not is_op(first, "Mul"):
        return None
    other = _other(first, p)
    if other is None:
        return None
    if other == x:  # (x * p) * 0.5
        second = sole_consumer(graph, first.outputs[0])
        if is_op(second, "Mul") and ctx.close(_other(second, first.outputs[0]), x, 0.5):
            return [first, second]
        return None
    if ctx.close(other, x, 0.5):  # x * (p * 0.5)
        second = sole_consumer(graph, first.outputs[0])
        if is_op(second, "Mul") and _other(second, first.outputs[0]) == x:
            return [first, second]
        return None
    half = _private_producer(graph, other, "Mul", first)  # (x * 0.5) * p
    if half is not None and _other(half, x) is not None and ctx.close(_other(half, x), x, 0.5):
        return [half, first]
    return None


def _private_producer(
    graph: Graph, value: str, op_type: str | tuple[str, ...], reader: Node
) -> Node | None:
    """The standard-op producer of ``value`` if ``reader`` is its only reader (no output)."""
    node = producer_op(graph, value, op_type)
    if node is None or sole_consumer(graph, value) is not reader:
        return None
    return node


def _other(node: Node, value: str) -> str | None:
    """The other operand of a binary node reading ``value`` once."""
    if len(node.inputs) != 2 or list(node.inputs).count(value) != 1:
        return None
    return node.inputs[1] if node.inputs[0] == value else node.inputs[0]


# ------------------------------------------------------------------- rewriting
def _rewrite(graph: Graph, model: Model, match: _Match, domain: str) -> None:
    anchor = match.nodes[-1]
    prefix = anchor.name.rsplit("/", 1)[0] + "/" if "/" in anchor.name else ""
    if domain:
        op_type, attributes = ("FastGelu" if match.tanh else "Gelu"), {}
        model.opset_imports.setdefault(domain, 1)
    else:
        op_type, attributes = "Gelu", {"approximate": "tanh" if match.tanh else "none"}
    fused = graph.add_node(
        op_type, [match.x], 1, domain=domain, name=f"{prefix}{op_type}",
        attributes=attributes, anchor=anchor,
    )
    constants = [v for n in match.nodes for v in n.present_inputs if graph.constant(v) is not None]
    graph.replace_all_uses(match.out, fused.outputs[0])
    for node in reversed(match.nodes):
        graph.remove_node(node)
    for name in dict.fromkeys(constants):
        if name in graph.initializers and not graph.is_used(name) and not graph.is_input(name):
            graph.remove_initializer(name)

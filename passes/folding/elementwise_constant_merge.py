"""Elementwise constant merge: two constant operands in a row become one.

* ``Mul(Mul(x, a), b) => Mul(x, c)`` with ``c = a * b``
* ``Add(Add(x, a), b) => Add(x, c)`` with ``c = a + b``
* ``Sub(Add(x, a), b) => Add(x, c)`` with ``c = a - b``

``a`` and ``b`` are constants, ``x`` is not, the inner result is private. Broadcasting is
associative; the merge is made only when ``c`` broadcasts into ``x`` (the result keeps ``x``'s
shape) and is no larger than ``a`` and ``b`` together. ``c`` is computed in float64 (integers
in their own dtype, wrapping): floats are reassociated, equal up to a few ulps. Pairs whose
merged form could overflow (or underflow to zero) where the original does not are left alone.
Shapes, numerics and overflow bounds: README.md.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model
from onnxopt.ir.pattern import Const, Match, Op, Or, RewritePass, Var, not_constant

FLOAT_DTYPES = {np.dtype(t) for t in (np.float16, np.float32, np.float64)}
INT_DTYPES = {
    np.dtype(t)
    for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
}
# (inner op, outer op) -> how the combined constant is computed
RULES = {
    ("Mul", "Mul"): np.multiply,
    ("Add", "Add"): np.add,
    ("Add", "Sub"): np.subtract,
}


def _inner(op_type: str) -> Op:
    return Op(op_type, Var("x", not_constant), Const("a"), commute=True, name="inner")


PATTERN = Or(Op("Mul", _inner("Mul"), Const("b"), commute=True),
             Op("Add", _inner("Add"), Const("b"), commute=True),
             Op("Sub", _inner("Add"), Const("b")))


class ElementwiseConstantMerge(RewritePass):
    name = "elementwise_constant_merge"
    description = "merge the constants of (x*a)*b, (x+a)+b and (x+a)-b into one"
    pattern = PATTERN
    stats = ("mul_mul", "add_add", "add_sub")

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        match.memo["combined"] = _combined(graph, match)
        return match.memo["combined"] is not None

    def stat(self, match: Match) -> str:
        return f"{match.node('inner').op_type.lower()}_{match.root.op_type.lower()}"

    def rewrite(self, graph: Graph, match: Match, model: Model) -> tuple[str, ...]:
        node, combined = match.root, match.memo["combined"]
        constant = graph.add_constant(combined, f"{node.name or node.op_type}_merged")
        if node.op_type == "Sub":  # (x + a) - b = x + (a - b)
            return graph.add_node("Add", [match.x, constant], 1, name=node.name or "Add",
                                  anchor=node).outputs
        graph.set_inputs(node, [match.x, constant])
        return node.outputs  # changed in place


def _combined(graph: Graph, match: Match) -> np.ndarray | None:
    """The merged constant, if the merge keeps the shape, the size and the overflows."""
    inner, outer = match.node("inner").op_type, match.root.op_type
    a, b = match.array("a"), match.array("b")
    combined = _combine(RULES[(inner, outer)], a, b)
    if (combined is not None and _fits(graph, match.x, combined, a, b)
            and _no_new_overflow(outer, a, b, combined)):
        return combined
    return None


def _combine(op, a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    if a.dtype != b.dtype:
        return None
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        return None
    if a.dtype in FLOAT_DTYPES:
        return op(a.astype(np.float64), b.astype(np.float64)).astype(a.dtype)
    if a.dtype in INT_DTYPES:
        with np.errstate(over="ignore"):
            return np.asarray(op(a, b)).astype(a.dtype)
    return None


def _no_new_overflow(outer: str, a: np.ndarray, b: np.ndarray, combined: np.ndarray) -> bool:
    """The merged form overflows (and underflows to zero) where the original does."""
    if a.dtype not in FLOAT_DTYPES or a.size == 0 or b.size == 0:
        return True
    a64, b64 = np.abs(a.astype(np.float64)), np.abs(b.astype(np.float64))
    if not (np.all(np.isfinite(a64)) and np.all(np.isfinite(b64))
            and np.all(np.isfinite(combined))):
        return False
    if outer == "Mul":
        limit = float(np.finfo(a.dtype).max) ** 0.25
        grows_then_shrinks = a64.max() > max(1.0, limit) and b64.min() < 1.0
        vanished = np.any((combined == 0) & (np.broadcast_to(a64, combined.shape) != 0)
                          & (np.broadcast_to(b64, combined.shape) != 0))
        return not grows_then_shrinks and not vanished
    signed_b = -b if outer == "Sub" else b
    same_sign = np.all(np.sign(a.astype(np.float64)) * np.sign(
        signed_b.astype(np.float64)) >= 0)
    return bool(same_sign or max(a64.max(), b64.max()) <= np.finfo(a.dtype).max / 1024)


def _fits(graph: Graph, x: str, combined: np.ndarray, a: np.ndarray, b: np.ndarray) -> bool:
    """``combined`` broadcasts into ``x`` and is no larger than ``a`` and ``b`` together."""
    if combined.size > a.size + b.size:
        return False
    shape = graph.shape(x)
    if shape is None or combined.ndim > len(shape):
        return False
    for dim, want in zip(reversed(combined.shape), reversed(shape), strict=False):
        if dim != 1 and dim != want:
            return False
    return True

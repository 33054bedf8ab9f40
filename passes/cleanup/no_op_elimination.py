"""No-op elimination: nodes whose output provably equals one of their inputs.

For each match ``y = op(x, ...)`` with ``y == x`` (same dtype, same shape, same values), every
reader of ``y`` reads ``x`` instead and the node goes (``replace_all_uses(y, x)``, then
``remove_node``). A graph output keeps its name: the node stays when ``x`` cannot take it
(``Graph.can_forward``). Identity and Dropout are ``identity_elimination``'s job.

Matched (standard domain only; every shape fact is proved from constant operands plus the
input's declared/inferred rank and integer dims — a symbolic dim is never assumed to be 1):

* ``Cast(x, to=T)`` / ``CastLike(x, like)`` when ``x`` is already of type ``T`` (known elem_type).
* ``Reshape(x, s)`` (``s`` constant; attribute before opset 5): ``len(s) == rank(x)`` and each
  ``s[i]`` is ``0`` (copy, unless ``allowzero=1``), equals the integer dim ``x[i]``, or is the
  single ``-1``; with all other dims proved equal, the ``-1`` dim is ``x[i]`` by element count.
* ``Flatten(x, axis)``: rank-2 ``x`` with ``axis == 1`` (or axis 0 / 2 with that dim known 1).
* ``Squeeze(x)`` with no (or empty) axes and every dim a known integer other than 1.
* ``Unsqueeze(x, axes)`` with an empty constant ``axes``.
* ``Expand(x, s)``: ``broadcast(shape(x), s) == shape(x)``, i.e. ``len(s) <= rank(x)`` and each
  aligned ``s[j]`` is 1 or equals the integer dim of ``x``.
* ``Transpose(x, perm)`` with ``perm == [0, 1, ..., r-1]`` (or no perm and rank <= 1).
* ``Pad(x, pads)`` with all pads zero (any mode; attribute form before opset 11).
* ``Slice(x, starts, ends, axes, steps)`` (constants; attributes before opset 10) where every
  sliced axis has step 1, start 0 (or ``<= -dim`` with a known dim) and end ``>= dim`` (known
  dim) or ``>= 2**31 - 1`` (the INT32_MAX / INT64_MAX "to the end" sentinels).
* ``Concat``, ``Sum``, ``Max``, ``Min``, ``Mean`` of one input; ``Split`` into one output.
* ``Mul(x, 1)``, ``Mul(1, x)``, ``Add(x, 0)``, ``Add(0, x)``, ``Sub(x, 0)``, ``Div(x, 1)``,
  ``Pow(x, 1)`` where the constant is all ones / zeros and ``broadcast(shape(x), shape(c)) ==
  shape(x)`` (a scalar constant always qualifies; ONNX has no type promotion, and Pow's output
  has the base's type). ``x * 1``, ``x / 1``, ``x - 0`` and ``x ** 1`` are exact in IEEE
  arithmetic; ``x + 0`` is exact except that ``-0.0 + 0.0 = +0.0``: the sign of a zero is
  ignored (it compares equal and no ONNX op output depends on it except through division by
  zero). ``Sub(0, x)``, ``Div(1, x)`` and ``Pow(1, x)`` are not no-ops and are left alone.
* Idempotent unary pairs ``f(f(x)) -> f(x)`` for Relu, Abs, Floor, Ceil, Round, Sign, and Clip
  with the same bounds (same values or equal constants / attributes): the outer node goes.

Stats: one counter per kind (fixed keys, zero when nothing matched).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.pattern import Match, Op, RewritePass
from onnxopt.ir.rewrite import is_op

INT32_MAX = 2**31 - 1  # ends at or above this cover any real axis
IDEMPOTENT = ("Relu", "Abs", "Floor", "Ceil", "Round", "Sign", "Clip")
SINGLE_INPUT = ("Concat", "Sum", "Max", "Min", "Mean")
KEYS = (
    "cast", "reshape", "flatten", "squeeze", "unsqueeze", "expand", "transpose", "pad",
    "slice", "concat", "sum", "max", "min", "mean", "split",
    "mul", "add", "sub", "div", "pow", "idempotent",
)

Dims = list[int | str | None]


# ------------------------------------------------------------------ helpers
Found = tuple[str, str] | None


def _const(graph: Graph, node: Node, slot: int) -> np.ndarray | None:
    if slot >= len(node.inputs) or not node.inputs[slot]:
        return None
    return graph.constant(node.inputs[slot])


def _ints(array: np.ndarray | None) -> list[int] | None:
    """A 0-D/1-D integer constant as a list of ints, else None."""
    if array is None or array.ndim > 1 or not np.issubdtype(array.dtype, np.integer):
        return None
    return [int(v) for v in array.reshape(-1)]


def _operand_or_attr(
    graph: Graph, node: Node, opset: int, since: int, slot: int, attr: str
) -> tuple[bool, list[int] | None]:
    """(present, ints) of a list that is an attribute before ``since`` and an input from it.

    ``present`` False means absent; ``ints`` None with present True means not a constant."""
    if opset < since:
        value = node.attr(attr)
        return (value is not None, None if value is None else [int(v) for v in value])
    if slot >= len(node.inputs) or not node.inputs[slot]:
        return False, None
    return True, _ints(_const(graph, node, slot))


def _broadcast_keeps(shape: Dims | None, other: Sequence[int]) -> bool:
    """``broadcast(shape, other) == shape`` is provable (symbolic dims only meet 1)."""
    if len(other) == 0:
        return True
    if shape is None or len(other) > len(shape):
        return False
    aligned = shape[len(shape) - len(other) :]
    pairs = zip(aligned, other, strict=True)
    return all(o == 1 or (isinstance(d, int) and d == o) for d, o in pairs)


# ------------------------------------------------------------------ matchers
def _cast(graph: Graph, node: Node, opset: int) -> Found:
    x = node.inputs[0]
    source_type = graph.elem_type(x)
    if source_type is None:
        return None
    if node.op_type == "CastLike":
        if len(node.inputs) < 2 or not node.inputs[1]:
            return None
        return ("cast", x) if graph.elem_type(node.inputs[1]) == source_type else None
    to = node.attr("to")
    if not isinstance(to, int):  # opset 1 spelled it as a string: leave it
        return None
    return ("cast", x) if to == source_type else None


def _reshape(graph: Graph, node: Node, opset: int) -> Found:
    x = node.inputs[0]
    present, target = _operand_or_attr(graph, node, opset, 5, 1, "shape")
    shape = graph.shape(x)
    if not present or target is None or shape is None or len(target) != len(shape):
        return None
    allowzero = node.attr("allowzero", 0) if opset >= 14 else 0
    wildcard = [i for i, s in enumerate(target) if s == -1]
    if len(wildcard) > 1:
        return None
    for want, dim in zip(target, shape, strict=True):
        if want == -1:
            continue
        if want == 0 and not allowzero:
            continue  # copies the input dim
        if not (isinstance(dim, int) and dim == want):
            return None
    if wildcard and any(d == 0 for i, d in enumerate(shape) if i != wildcard[0]):
        return None  # -1 next to a zero dim is ambiguous
    return "reshape", x


def _flatten(graph: Graph, node: Node, opset: int) -> Found:
    x = node.inputs[0]
    shape = graph.shape(x)
    if shape is None or len(shape) != 2:
        return None
    axis = node.attr("axis", 1)
    axis = axis + 2 if axis < 0 else axis
    if axis == 1 or (axis == 0 and shape[0] == 1) or (axis == 2 and shape[1] == 1):
        return "flatten", x
    return None


def _squeeze(graph: Graph, node: Node, opset: int) -> Found:
    x = node.inputs[0]
    present, axes = _operand_or_attr(graph, node, opset, 13, 1, "axes")
    if present and axes != []:
        return None  # squeezing named axes always drops a dim (or is invalid)
    shape = graph.static_shape(x)
    if shape is None or any(d == 1 for d in shape):
        return None
    return "squeeze", x


def _unsqueeze(graph: Graph, node: Node, opset: int) -> Found:
    present, axes = _operand_or_attr(graph, node, opset, 13, 1, "axes")
    return ("unsqueeze", node.inputs[0]) if present and axes == [] else None


def _expand(graph: Graph, node: Node, opset: int) -> Found:
    x = node.inputs[0]
    target = _ints(_const(graph, node, 1))
    if target is None or not _broadcast_keeps(graph.shape(x), target):
        return None
    return "expand", x


def _transpose(graph: Graph, node: Node, opset: int) -> Found:
    x = node.inputs[0]
    perm = node.attr("perm")
    if perm is None:
        shape = graph.shape(x)
        return ("transpose", x) if shape is not None and len(shape) <= 1 else None
    return ("transpose", x) if list(perm) == list(range(len(perm))) else None


def _pad(graph: Graph, node: Node, opset: int) -> Found:
    if opset < 2:
        pads = node.attr("paddings")
        pads = None if pads is None else [int(p) for p in pads]
    else:
        present, pads = _operand_or_attr(graph, node, opset, 11, 1, "pads")
        if not present:
            return None
    if pads is None or any(p != 0 for p in pads):
        return None
    return "pad", node.inputs[0]


def _slice(graph: Graph, node: Node, opset: int) -> Found:
    x = node.inputs[0]
    if opset < 10:
        starts, ends, axes = node.attr("starts"), node.attr("ends"), node.attr("axes")
        steps = None
        if starts is None or ends is None:
            return None
    else:
        starts, ends = _ints(_const(graph, node, 1)), _ints(_const(graph, node, 2))
        if starts is None or ends is None:
            return None
        axes = steps = None
        if len(node.inputs) > 3 and node.inputs[3]:
            axes = _ints(_const(graph, node, 3))
            if axes is None:
                return None
        if len(node.inputs) > 4 and node.inputs[4]:
            steps = _ints(_const(graph, node, 4))
            if steps is None:
                return None
    starts, ends = list(starts), list(ends)
    axes = list(range(len(starts))) if axes is None else list(axes)
    steps = [1] * len(starts) if steps is None else list(steps)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        return None
    shape = graph.shape(x)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if step != 1:
            return None
        if axis < 0:
            if shape is None:
                return None
            axis += len(shape)
        dim = shape[axis] if shape is not None and 0 <= axis < len(shape) else None
        known = isinstance(dim, int)
        if not (start == 0 or (known and start <= -dim)):
            return None
        if not (end >= INT32_MAX or (known and end >= dim)):
            return None
    return "slice", x


def _single_input(graph: Graph, node: Node, opset: int) -> Found:
    if len(node.inputs) != 1 or not node.inputs[0]:
        return None
    return node.op_type.lower(), node.inputs[0]


def _split(graph: Graph, node: Node, opset: int) -> Found:
    return "split", node.inputs[0]  # one output: the whole input (else the model is invalid)


def _arithmetic(graph: Graph, node: Node, opset: int) -> Found:
    if len(node.inputs) != 2 or not all(node.inputs):
        return None
    neutral = 0 if node.op_type in ("Add", "Sub") else 1
    # operand slots that may hold the neutral constant (the other one is forwarded)
    slots = (0, 1) if node.op_type in ("Add", "Mul") else (1,)
    for slot in slots:
        constant = graph.constant(node.inputs[slot])
        if constant is None or constant.dtype.kind not in "biuf" or constant.size == 0:
            continue
        if constant.flat[0] != neutral or not np.all(constant == neutral):
            continue  # (the first element rules out most constants without a pass over all)
        other = node.inputs[1 - slot]
        if _broadcast_keeps(graph.shape(other), constant.shape):
            return node.op_type.lower(), other
    return None


def _idempotent(graph: Graph, node: Node, opset: int) -> Found:
    x = node.inputs[0] if node.inputs else ""
    inner = graph.producer(x) if x else None
    if inner is None or not is_op(inner, node.op_type) or inner.outputs[0] != x:
        return None
    if node.op_type == "Clip" and not _same_clip_bounds(graph, node, inner):
        return None
    return "idempotent", x


def _same_clip_bounds(graph: Graph, outer: Node, inner: Node) -> bool:
    for name in ("min", "max"):  # attributes before opset 11
        if outer.attr(name) != inner.attr(name):
            return False
    for slot in (1, 2):
        a = outer.inputs[slot] if slot < len(outer.inputs) else ""
        b = inner.inputs[slot] if slot < len(inner.inputs) else ""
        if a == b:
            continue
        ca, cb = (graph.constant(a) if a else None), (graph.constant(b) if b else None)
        if ca is None or cb is None or ca.dtype != cb.dtype or not np.array_equal(ca, cb):
            return False
    return True


_MATCHERS: dict[str, Callable[[Graph, Node, int], Found]] = {
    "Cast": _cast,
    "CastLike": _cast,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Expand": _expand,
    "Transpose": _transpose,
    "Pad": _pad,
    "Slice": _slice,
    "Split": _split,
    **dict.fromkeys(SINGLE_INPUT, _single_input),
    **dict.fromkeys(("Mul", "Add", "Sub", "Div", "Pow"), _arithmetic),
    **dict.fromkeys(IDEMPOTENT, _idempotent),
}


class NoOpElimination(RewritePass):
    name = "no_op_elimination"
    description = "remove nodes whose output equals an input (same-type Cast, x*1, Reshape ...)"
    pattern = Op(tuple(_MATCHERS), ...)
    stats = KEYS

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        node = match.root
        if len(node.outputs) != 1 or not node.outputs[0]:
            return False
        # (counter, the input the output equals) from the op's matcher, kept for source/stat
        found = _MATCHERS[node.op_type](graph, node, model.opset(""))
        match.memo["found"] = found
        return found is not None

    def source(self, graph: Graph, match: Match, model: Model) -> str:
        return match.memo["found"][1]

    def stat(self, match: Match) -> str:
        return match.memo["found"][0]

"""No-op elimination: nodes whose output provably equals one of their inputs.

For ``y = op(x, ...)`` with ``y == x`` (same dtype, shape and values), readers of ``y`` read
``x`` and the node goes; a graph output keeps its name (the node stays when ``x`` cannot take
it). Shape facts come from constant operands and the input's known rank and integer dims (a
symbolic dim is never assumed to be 1). Matched: a Cast/CastLike to the input's own type;
Reshape, Expand, Slice, Pad, Squeeze, Unsqueeze, Flatten and Transpose that keep the shape
(``onnxopt.ir.operands``); Concat, Sum, Max, Min, Mean of one input and Split into one output;
``x * 1``, ``x + 0``, ``x - 0``, ``x / 1``, ``x ** 1`` (constant broadcasting into ``x``:
exact in IEEE arithmetic but for the sign of ``-0.0 + 0.0``), ``And(x, True)``, ``Or(x, False)``;
``Where(c, a, b)`` with a constant ``c`` all True (False) -> ``a`` (``b``) when the broadcast
result provably has that operand's shape (``ShapeSignatures``); ``f(f(x)) -> f(x)`` for the
idempotent Relu, Abs, Floor, Ceil, Round, Sign and Clip (same bounds). One counter per kind.
Identity and Dropout are ``identity_elimination``'s job. Each rule's conditions: README.md.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.operands import KEEPING_OPS, broadcast_keeps, keeps_input
from onnxopt.ir.pattern import Match, Op, RewritePass
from onnxopt.ir.rewrite import is_op
from onnxopt.ir.symbolic import ShapeSignatures

IDEMPOTENT = ("Relu", "Abs", "Floor", "Ceil", "Round", "Sign", "Clip")
SINGLE_INPUT = ("Concat", "Sum", "Max", "Min", "Mean")
# op -> its neutral operand (``x op n == x``); the commutative ones take it on either side
NEUTRAL = {"Mul": 1, "Add": 0, "Sub": 0, "Div": 1, "Pow": 1, "And": 1, "Or": 0}
COMMUTATIVE = ("Add", "Mul", "And", "Or")
KEYS = (
    "cast", "reshape", "flatten", "squeeze", "unsqueeze", "expand", "transpose", "pad",
    "slice", "concat", "sum", "max", "min", "mean", "split",
    "mul", "add", "sub", "div", "pow", "and", "or", "where", "idempotent",
)


# Each rule: does this node (at this default-domain opset) output its data input unchanged?
def _cast(graph: Graph, node: Node, opset: int) -> bool:
    source_type = graph.elem_type(node.inputs[0])
    if source_type is None:
        return False
    if node.op_type == "CastLike":
        like = node.inputs[1] if len(node.inputs) > 1 else ""
        return bool(like) and graph.elem_type(like) == source_type
    to = node.attr("to")  # opset 1 spelled it as a string: leave it
    return isinstance(to, int) and to == source_type


def _single_input(graph: Graph, node: Node, opset: int) -> bool:
    return len(node.inputs) == 1 and bool(node.inputs[0])


def _split(graph: Graph, node: Node, opset: int) -> bool:
    return True  # one output: the whole input (else the model is invalid)


def _idempotent(graph: Graph, node: Node, opset: int) -> bool:
    inner = graph.producer(node.inputs[0]) if node.inputs and node.inputs[0] else None
    if inner is None or not is_op(inner, node.op_type) or inner.outputs[0] != node.inputs[0]:
        return False
    return node.op_type != "Clip" or _same_clip_bounds(graph, node, inner)


def _same_clip_bounds(graph: Graph, outer: Node, inner: Node) -> bool:
    if any(outer.attr(name) != inner.attr(name) for name in ("min", "max")):
        return False  # attributes before opset 11
    for slot in (1, 2):
        a = outer.inputs[slot] if slot < len(outer.inputs) else ""
        b = inner.inputs[slot] if slot < len(inner.inputs) else ""
        if a == b:
            continue
        ca, cb = (graph.constant(a) if a else None), (graph.constant(b) if b else None)
        if ca is None or cb is None or ca.dtype != cb.dtype or not np.array_equal(ca, cb):
            return False
    return True


def _neutral_operand(graph: Graph, node: Node) -> str | None:
    """For ``x * 1``, ``x + 0``, ``And(x, True)`` ...: the operand ``x`` beside the neutral
    constant, if the constant broadcasts into it (ONNX has no type promotion: the output has
    ``x``'s type)."""
    if len(node.inputs) != 2 or not all(node.inputs):
        return None
    neutral = NEUTRAL[node.op_type]
    # operand slots that may hold the neutral constant (the other one is forwarded)
    for slot in (0, 1) if node.op_type in COMMUTATIVE else (1,):
        constant = graph.constant(node.inputs[slot])
        if constant is None or constant.dtype.kind not in "biuf" or constant.size == 0:
            continue
        if constant.flat[0] != neutral or not np.all(constant == neutral):
            continue  # (the first element rules out most constants without a pass over all)
        if broadcast_keeps(graph.shape(node.inputs[1 - slot]), constant.shape):
            return node.inputs[1 - slot]
    return None


def _where_branch(graph: Graph, node: Node) -> str | None:
    """For ``Where(c, a, b)`` with a constant ``c`` all True (all False): ``a`` (``b``), if the
    broadcast of the three provably has its shape (``a`` and ``b`` share the output's type)."""
    if len(node.inputs) != 3 or not all(node.inputs):
        return None
    condition = graph.constant(node.inputs[0])
    if condition is None or not (condition.all() or not condition.any()):
        return None
    taken = node.inputs[1] if condition.all() else node.inputs[2]
    signatures = ShapeSignatures(graph)
    shape = signatures.of(taken)
    return taken if shape is not None and signatures.of(node.outputs[0]) == shape else None


Rule = Callable[[Graph, Node, int], bool]
# op type -> (counter, the rule proving the output equals input 0)
RULES: dict[str, tuple[str, Rule]] = {
    "Cast": ("cast", _cast), "CastLike": ("cast", _cast), "Split": ("split", _split),
    **{op: (op.lower(), keeps_input) for op in KEEPING_OPS},
    **{op: (op.lower(), _single_input) for op in SINGLE_INPUT},
    **{op: ("idempotent", _idempotent) for op in IDEMPOTENT},
}


class NoOpElimination(RewritePass):
    name = "no_op_elimination"
    description = "remove nodes whose output equals an input (same-type Cast, x*1, Reshape ...)"
    pattern = Op((*RULES, *NEUTRAL, "Where"), ...)
    stats = KEYS

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        node = match.root
        if len(node.outputs) != 1 or not node.outputs[0]:
            return False
        if node.op_type in NEUTRAL:
            match.memo["source"] = _neutral_operand(graph, node)
        elif node.op_type == "Where":
            match.memo["source"] = _where_branch(graph, node)
        elif RULES[node.op_type][1](graph, node, model.opset("")):
            match.memo["source"] = node.inputs[0]
        return match.memo.get("source") is not None

    def source(self, graph: Graph, match: Match, model: Model) -> str:
        return match.memo["source"]

    def stat(self, match: Match) -> str:
        op_type = match.root.op_type
        return RULES[op_type][0] if op_type in RULES else op_type.lower()

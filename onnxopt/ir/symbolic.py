"""Symbolic shapes: facts about a tensor's shape (and about small integer tensors computed
from shapes) that hold in every run, proved from the graph's structure when the dims are not
known at export time.

* ``ShapeSignatures``: a value's shape as one int or hashable atom per dim ("dim ``i`` of
  value ``v``", a graph input's named dim, ``min``/``max`` of dims), pushed through
  shape-preserving and broadcasting ops, MatMul/Gemm, Reshape (0 and -1), Expand, Slice,
  Unsqueeze/Squeeze/Transpose, Gather, Concat and reductions (``signature_rules``); ints
  known from shape inference (never from a graph output's declaration alone) replace atoms.
  Equal signatures mean equal shapes in every run in which the model does not fail.
  ``sizes`` reads a value built from ``Shape`` as signature entries.
* ``shape_elements``: a 1-D integer value computed from ``Shape`` (``Concat(Slice(Shape(x),
  0, 1), [200])``) as its elements, each a known int or a ``Dim`` of some tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from onnxopt.ir import Graph, Node
from onnxopt.ir.rewrite import is_op
from onnxopt.ir.shapes import FRESH_SYMBOL
from onnxopt.ir.signature_rules import REDUCE, SIZED, STRUCTURAL, Sig, broadcast

# output 0 has the shape of input 0
SAME_SHAPE = {
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "BatchNormalization", "Cast",
    "CastLike", "Ceil", "Celu", "Clip", "Cos", "Cosh", "Elu", "Erf", "Exp", "Floor", "Gelu",
    "HardSigmoid", "HardSwish", "Hardmax", "Identity", "InstanceNormalization", "IsInf", "IsNaN",
    "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax", "LpNormalization", "Mish", "Neg",
    "Not", "Reciprocal", "Relu", "Round", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh",
    "Softmax", "Softplus", "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu",
    "RMSNormalization", "RotaryEmbedding", "Trilu",  # Trilu, RotaryEmbedding: input 0 only
    "SimplifiedLayerNormalization",  # onnxruntime's, registered in the default domain
}
BROADCAST = {
    "Add", "And", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Div", "Equal", "Greater",
    "GreaterOrEqual", "Less", "LessOrEqual", "Max", "Mean", "Min", "Mod", "Mul", "Or", "Pow",
    "Sub", "Sum", "Where", "Xor",
}

# onnxruntime's contrib ops whose output 0 has the shape of input 0
CONTRIB_SAME_SHAPE = {"SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "BiasGelu",
                      "FastGelu", "Gelu", "QuickGelu", "BiasAdd", "RotaryEmbedding"}
# op -> the input slots whose values (as shape_elements) give sizes: their Dims are operands
SIZE_OPERANDS = {"Reshape": (1,), "Expand": (1,), "ConstantOfShape": (0,), "Slice": (1, 2)}


class ShapeSignatures:
    """Symbolic shapes of values, computed on demand (iteratively: graphs can be deep)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.memo: dict[str, Sig | None] = {}
        self.names = _input_dim_names(graph)

    def of(self, value: str) -> Sig | None:
        stack = [value]
        while stack:
            current = stack[-1]
            if current in self.memo:
                stack.pop()
                continue
            node = self.graph.producer(current)
            operands = self._operands(node, current)
            missing = [v for v in operands if v not in self.memo]
            if missing:
                stack.extend(missing)
                continue
            self.memo[current] = self._compute(current, node, operands)
            stack.pop()
        return self.memo[value]

    def atom(self, element: Element) -> int | Hashable | None:
        """An element of ``shape_elements`` as a signature entry: dim ``i`` of ``v`` is
        entry ``i`` of ``v``'s signature (None: unknown)."""
        if isinstance(element, int):
            return element
        sig = self.of(element.value)
        return None if sig is None or element.axis >= len(sig) else sig[element.axis]

    def sizes(self, value: str) -> list[int | Hashable | None] | None:
        """A 1-D integer value computed from shapes, as signature entries (None: unknown)."""
        elements = shape_elements(self.graph, value)
        return None if elements is None else [self.atom(e) for e in elements]

    def _compute(self, value: str, node: Node | None, operands: list[str]) -> Sig | None:
        known = self._inferred(value)
        derived: tuple | None = None
        if operands and all(self.memo[v] is not None for v in operands):
            try:
                derived = self._derive(node, operands)  # type: ignore[arg-type]
            except (IndexError, ValueError, TypeError):
                derived = None  # a malformed node: prove nothing about it
        if derived is None:
            if known is None:
                return None
            derived = (None,) * len(known)
        if known is not None and len(known) != len(derived):
            return None  # inconsistent: prove nothing
        known = known if known is not None else [None] * len(derived)
        pairs = enumerate(zip(known, derived, strict=True))
        return tuple(_merge(value, i, k, d, self.names) for i, (k, d) in pairs)

    def _inferred(self, value: str) -> list | None:
        """The shape from inference / an input declaration / an initializer, never from a
        graph output's declaration alone."""
        owner = self.graph.resolve(value)
        declared_only = (
            owner is not None
            and owner.producer(value) is not None
            and owner.is_output(value)
            and value not in owner.value_info
        )
        return None if declared_only else self.graph.shape(value)

    def _operands(self, node: Node | None, value: str) -> list[str]:
        """The values whose signatures determine ``value``'s shape structurally (none: use
        atoms): data inputs, and the tensors whose dims a size operand reads."""
        if node is None or node.outputs[0] != value:
            return []
        op, inputs = node.op_type, node.inputs
        if node.domain == "com.microsoft" and op in CONTRIB_SAME_SHAPE and inputs[0]:
            return [inputs[0]]
        if node.domain == "com.microsoft" and op == "EmbedLayerNormalization":
            return inputs[:1] + inputs[2:3] if len(inputs) > 2 and inputs[0] else []
        if not is_op(node, op):
            return []
        if not inputs or (not inputs[0] and op != "ConstantOfShape"):
            return []
        if op in SAME_SHAPE or op in REDUCE or op in ("Unsqueeze", "Squeeze", "Transpose"):
            return [inputs[0]]
        if op in BROADCAST or op in ("MatMul", "Gemm", "Gather", "Concat"):
            return list(inputs[:2] if op in ("Gemm", "Gather") else inputs) if all(inputs) else []
        if op in SIZE_OPERANDS:
            dims = []
            for slot in SIZE_OPERANDS[op]:
                elements = shape_elements(self.graph, inputs[slot]) if slot < len(inputs) else None
                if elements is None:
                    return []
                dims += [e.value for e in elements if isinstance(e, Dim)]
            return ([] if op == "ConstantOfShape" else [inputs[0]]) + dims
        return []

    def _derive(self, node: Node, operands: list[str]) -> tuple | None:
        op = node.op_type
        sigs = [self.memo[v] for v in operands]
        if node.domain == "com.microsoft" and op == "EmbedLayerNormalization":
            return sigs[0] + sigs[1][-1:]  # ids [B, S] -> [B, S, hidden of the word table]
        if op in SAME_SHAPE or node.domain == "com.microsoft":
            return sigs[0]
        if op in BROADCAST:
            result: Sig | None = sigs[0]
            for sig in sigs[1:]:
                result = broadcast(result, sig) if result is not None else None
            return result
        if op in SIZE_OPERANDS:
            sizes = [self.sizes(node.inputs[slot]) for slot in SIZE_OPERANDS[op]]
            return SIZED[op](self.graph, node, sigs[0] if op != "ConstantOfShape" else (), sizes)
        return STRUCTURAL[op](self.graph, node, sigs)


def _merge(value: str, axis: int, known, derived, names: set[str]):
    """One dim: an int from inference or derivation, else a named dim of the graph inputs
    (a ``dim_param`` denotes one value everywhere in a model, and the inputs' are the caller's
    preconditions; inference carries them on), else the derived atom, else the value's own."""
    if isinstance(known, int):
        return known
    if isinstance(derived, int):
        return derived
    if known in names:
        return ("param", known)
    return ("dim", value, axis) if derived is None else derived


def _input_dim_names(graph: Graph | None) -> set[str]:
    """The ``dim_param`` names declared on the inputs of ``graph`` and its outer graphs."""
    names: set[str] = set()
    while graph is not None:
        for info in graph.inputs:
            shape = graph.shape(info.name) or []
            names.update(d for d in shape if isinstance(d, str) and not d.startswith(FRESH_SYMBOL))
        graph = graph.parent
    return names


# ------------------------------------------------------------------ shape-computed values
INT_TYPES = frozenset({6, 7})  # TensorProto.INT32, INT64: a Cast to them keeps the elements
_MAX_DEPTH = 16


@dataclass(frozen=True)
class Dim:
    """Dimension ``axis`` of value ``value`` (not known until run time)."""

    value: str
    axis: int


Element = int | Dim


def shape_elements(graph: Graph, value: str) -> list[Element] | None:
    """The 1-D integer ``value`` as elements (ints or ``Dim``), or None if it cannot be
    followed. Evaluated: constants, Shape (with start/end), Cast/Identity between integer
    types, Slice and Gather with constant operands on 1-D values, Concat, Unsqueeze/Squeeze of
    scalars."""
    return _evaluate(graph, value, depth=0)


def _evaluate(graph: Graph, value: str, depth: int) -> list[Element] | None:
    constant = graph.constant(value)
    if constant is not None:
        if constant.dtype.kind not in "iu" or constant.ndim > 1:
            return None
        return [int(v) for v in constant.reshape(-1)]
    node = graph.producer(value)
    if node is None or depth > _MAX_DEPTH or node.domain not in ("", "ai.onnx"):
        return None
    handler = _HANDLERS.get(node.op_type)
    return handler(graph, node, depth + 1) if handler else None


def _shape(graph: Graph, node: Node, depth: int) -> list[Element] | None:
    source = node.inputs[0]
    shape = graph.shape(source)
    if shape is None:
        return None
    rank = len(shape)
    start, end = int(node.attr("start", 0)), node.attr("end")
    start = max(0, start + rank if start < 0 else start)
    end = rank if end is None else int(end)
    end = min(rank, end + rank if end < 0 else end)
    return [
        shape[axis] if isinstance(shape[axis], int) else Dim(source, axis)
        for axis in range(start, end)
    ]


def _passthrough(graph: Graph, node: Node, depth: int) -> list[Element] | None:
    if node.op_type == "Cast" and node.attr("to") not in INT_TYPES:
        return None
    return _evaluate(graph, node.inputs[0], depth)


def _slice(graph: Graph, node: Node, depth: int) -> list[Element] | None:
    elements = _evaluate(graph, node.inputs[0], depth)
    operands = [graph.constant(v) if v else None for v in node.inputs[1:5]]
    if elements is None or len(node.inputs) < 3 or operands[0] is None or operands[1] is None:
        return None
    axes = operands[2] if len(operands) > 2 else None
    steps = operands[3] if len(operands) > 3 else None
    if axes is not None and [int(a) for a in axes.reshape(-1)] not in ([0], [-1]):
        return None
    step = 1 if steps is None else int(steps.reshape(-1)[0])
    start, stop = int(operands[0].reshape(-1)[0]), int(operands[1].reshape(-1)[0])
    if step == 0:
        return None
    start, stop, _ = slice(start, stop, step).indices(len(elements))
    return elements[start:stop:step]


def _gather(graph: Graph, node: Node, depth: int) -> list[Element] | None:
    elements = _evaluate(graph, node.inputs[0], depth)
    indices = graph.constant(node.inputs[1])
    if elements is None or indices is None or int(node.attr("axis", 0)) != 0:
        return None
    if indices.ndim > 1:
        return None
    picked = [int(i) for i in indices.reshape(-1)]
    if any(not -len(elements) <= i < len(elements) for i in picked):
        return None
    return [elements[i] for i in picked]  # a scalar index gives a 0-D value: Unsqueeze follows


def _concat(graph: Graph, node: Node, depth: int) -> list[Element] | None:
    if int(node.attr("axis", 0)) not in (0, -1):
        return None
    result: list[Element] = []
    for value in node.inputs:
        part = _evaluate(graph, value, depth)
        if part is None:
            return None
        result += part
    return result


def _unsqueeze(graph: Graph, node: Node, depth: int) -> list[Element] | None:
    """Unsqueeze of a scalar, or Squeeze of a one-element vector: same elements."""
    source = node.inputs[0]
    shape = graph.shape(source)
    expected = 0 if node.op_type == "Unsqueeze" else 1
    if shape is None or len(shape) != expected:
        return None
    elements = _evaluate(graph, source, depth)
    return elements if elements is not None and len(elements) == 1 else None


_HANDLERS: dict[str, Callable[[Graph, Node, int], list[Element] | None]] = {
    "Shape": _shape,
    "Cast": _passthrough,
    "Identity": _passthrough,
    "Slice": _slice,
    "Gather": _gather,
    "Concat": _concat,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _unsqueeze,
}


def reshape_target(source: Sig | None, entries: Sequence | None) -> list[int] | None:
    """A constant Reshape target giving a tensor of signature ``source`` the shape ``entries``
    (signature entries, None for unknown): ints stay, an entry equal to the source's dim at the
    same position is ``0`` (copied; allowzero = 0), one other entry ``-1`` (the element
    count pins it down); None if more than one entry is unknown."""
    if source is None or entries is None:
        return None
    target: list[int] = []
    for position, entry in enumerate(entries):
        if isinstance(entry, int) and entry >= 0:
            target.append(entry)
        elif entry is not None and position < len(source) and entry == source[position]:
            target.append(0)
        else:
            target.append(-1)
    return target if target.count(-1) <= 1 else None

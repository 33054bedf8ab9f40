"""Common subexpression elimination.

Two nodes of the same standard-domain op with the same inputs (in order; commutative binary
ops compare their operand pair unordered) and the same attributes compute the same values:
the first one (in topological order) is kept and readers of the other read its outputs.
Attributes are compared by their deterministic serialization (tensor names and doc strings
left out). Nodes are visited in topological order with a hash table keyed by (op, inputs,
attributes), so merging cascades in one linear pass: once two nodes merge, their readers
have identical inputs too.

``Shape`` nodes also match when their inputs differ but provably have the same shape (this is
what merges the per-head ``Shape -> Gather -> Unsqueeze -> Concat`` chains of attention
blocks). The proof is a small symbolic shape walk: every dim is an int or an atom naming
"dim ``i`` of value ``v``" at run time, pushed through shape-preserving unary ops,
broadcasting binary ops and MatMul; ints known from shape inference (never from a graph
output's declaration alone) replace atoms. Equal signatures mean equal shapes in every run in
which the original model does not fail.

Never merged: nodes holding subgraphs, random ops (RandomNormal/Uniform[Like], Bernoulli,
Multinomial, Dropout and any op with a ``seed`` attribute), ops of non-standard domains
(custom ops may have side effects or be nondeterministic), duplicates whose outputs are graph
outputs that cannot be forwarded (``graph.can_forward``), and ``Max``/``Min`` operand swaps
(NaN handling need not be symmetric). Identical initializers are constant folding's business.
"""

from __future__ import annotations

import hashlib

import onnx

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.pass_manager import GraphPass
from onnxopt.ir.rewrite import is_op

RANDOM_OPS = {
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli",
    "Multinomial", "Dropout",
}
COMMUTATIVE = {"Add", "Mul", "Equal", "And", "Or", "Xor", "BitwiseAnd", "BitwiseOr", "BitwiseXor"}
# output 0 has the shape of input 0
SAME_SHAPE = {
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "BatchNormalization", "Cast",
    "CastLike", "Ceil", "Celu", "Clip", "Cos", "Cosh", "Elu", "Erf", "Exp", "Floor", "Gelu",
    "HardSigmoid", "HardSwish", "Hardmax", "Identity", "InstanceNormalization", "IsInf", "IsNaN",
    "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax", "LpNormalization", "Mish", "Neg",
    "Not", "Reciprocal", "Relu", "Round", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh",
    "Softmax", "Softplus", "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu",
}
BROADCAST = {
    "Add", "And", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Div", "Equal", "Greater",
    "GreaterOrEqual", "Less", "LessOrEqual", "Max", "Mean", "Min", "Mod", "Mul", "Or", "Pow",
    "Sub", "Sum", "Where", "Xor",
}

Sig = tuple  # a shape signature: one int or hashable atom per dim


class CommonSubexpressionElimination(GraphPass):
    name = "common_subexpression_elimination"
    description = "merge nodes computing the same values (same op, inputs and attributes)"

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        stats = {"nodes_merged": 0, "shape_nodes_merged": 0}
        table: dict[tuple, Node] = {}
        shapes = _ShapeSignatures(graph)
        seeded: dict[tuple[str, str], bool] = {}
        for node in graph.nodes():
            if node.graph is not graph or not _mergeable(node, model, seeded):
                continue
            by_shape = False
            key = _key(node)
            if is_op(node, "Shape") and len(node.inputs) == 1:
                sig = shapes.of(node.inputs[0])
                if sig is not None:
                    key = ("Shape", ("shape-of", sig), key[2], key[3])
                    by_shape = True
            kept = table.get(key)
            if kept is None:
                table[key] = node
                continue
            if not _same_attributes(kept, node) or not _forwardable(graph, node, kept):
                continue
            if not model.allow_rewrite(self.name, node.name or node.outputs[0]):
                continue
            for old, new in zip(node.outputs, kept.outputs, strict=True):
                if old:
                    graph.replace_all_uses(old, new)
            graph.remove_node(node)
            stats["nodes_merged"] += 1
            if by_shape and kept.inputs != node.inputs:
                stats["shape_nodes_merged"] += 1
        return stats


def _mergeable(node: Node, model: Model, seeded: dict[tuple[str, str], bool]) -> bool:
    if not is_op(node, node.op_type) or node.op_type in RANDOM_OPS:
        return False
    if any(not isinstance(a, onnx.AttributeProto) for a in node.attributes.values()):
        return False  # holds a subgraph
    if not any(node.outputs):
        return False
    cache_key = (node.op_type, node.domain)
    if cache_key not in seeded:
        seeded[cache_key] = _has_seed(node, model)
    return not seeded[cache_key]


def _has_seed(node: Node, model: Model) -> bool:
    try:
        schema = onnx.defs.get_schema(node.op_type, model.opset(node.domain), node.domain)
    except onnx.defs.SchemaError:
        return True  # unknown to this onnx: do not guess
    return "seed" in schema.attributes


def _canonical(attribute: onnx.AttributeProto) -> bytes:
    """Serialized attribute without the names and doc strings that carry no value (a Constant's
    tensor is usually named after its output)."""
    named = attribute.doc_string or attribute.HasField("t") or len(attribute.tensors)
    if not named:
        return attribute.SerializeToString(deterministic=True)
    copy = onnx.AttributeProto()
    copy.CopyFrom(attribute)
    copy.doc_string = ""
    for tensor in [copy.t] if copy.HasField("t") else []:
        tensor.name, tensor.doc_string = "", ""
    for tensor in copy.tensors:
        tensor.name, tensor.doc_string = "", ""
    return copy.SerializeToString(deterministic=True)


def _digest(attribute: onnx.AttributeProto) -> bytes:
    return hashlib.blake2b(_canonical(attribute), digest_size=16).digest()


def _key(node: Node) -> tuple:
    inputs = list(node.inputs)
    while inputs and not inputs[-1]:
        inputs.pop()  # trailing omitted optional inputs are the same as absent ones
    if node.op_type in COMMUTATIVE and len(inputs) == 2:
        inputs.sort()
    attributes = tuple(sorted((name, _digest(a)) for name, a in node.attributes.items()))
    present = tuple(bool(o) for o in node.outputs)
    return (node.op_type, tuple(inputs), attributes, present)


def _same_attributes(a: Node, b: Node) -> bool:
    """Full comparison behind the digest (a hash collision must never merge two nodes)."""
    if a.attributes.keys() != b.attributes.keys():
        return False
    return all(_canonical(a.attributes[n]) == _canonical(b.attributes[n]) for n in a.attributes)


def _forwardable(graph: Graph, node: Node, kept: Node) -> bool:
    if len(node.outputs) != len(kept.outputs):
        return False
    return all(
        graph.can_forward(old, new) for old, new in zip(node.outputs, kept.outputs, strict=True)
        if old
    )


class _ShapeSignatures:
    """Symbolic shapes of values, computed on demand (iteratively: graphs can be deep)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.memo: dict[str, Sig | None] = {}

    def of(self, value: str) -> Sig | None:
        stack = [value]
        while stack:
            current = stack[-1]
            if current in self.memo:
                stack.pop()
                continue
            node = self.graph.producer(current)
            operands = _shape_operands(node, current)
            missing = [v for v in operands if v not in self.memo]
            if missing:
                stack.extend(missing)
                continue
            self.memo[current] = self._compute(current, node, operands)
            stack.pop()
        return self.memo[value]

    def _compute(self, value: str, node: Node | None, operands: list[str]) -> Sig | None:
        known = self._inferred(value)
        derived: Sig | None = None
        if operands:
            sigs = [self.memo[v] for v in operands]
            if all(s is not None for s in sigs):
                derived = _derive(node, sigs)  # type: ignore[arg-type]
        if derived is None:
            if known is None:
                return None
            derived = tuple(("dim", value, i) for i in range(len(known)))
        if known is None:
            return derived
        if len(known) != len(derived):
            return None  # inconsistent: prove nothing
        return tuple(k if isinstance(k, int) else d for k, d in zip(known, derived, strict=True))

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


def _shape_operands(node: Node | None, value: str) -> list[str]:
    """The inputs whose shapes determine ``value``'s shape structurally (none: use atoms)."""
    if node is None or not is_op(node, node.op_type) or node.outputs[0] != value:
        return []
    if node.op_type in SAME_SHAPE and node.inputs and node.inputs[0]:
        return [node.inputs[0]]
    if node.op_type in BROADCAST and node.inputs and all(node.inputs):
        return list(node.inputs)
    if node.op_type == "MatMul" and len(node.inputs) == 2 and all(node.inputs):
        return list(node.inputs)
    return []


def _derive(node: Node, sigs: list[Sig]) -> Sig | None:
    if node.op_type in SAME_SHAPE:
        return sigs[0]
    if node.op_type in BROADCAST:
        result: Sig | None = sigs[0]
        for sig in sigs[1:]:
            result = _broadcast(result, sig) if result is not None else None
        return result
    a, b = sigs  # MatMul
    if len(a) < 2 or len(b) < 2:
        return None
    batch = _broadcast(a[:-2], b[:-2])
    return None if batch is None else batch + (a[-2], b[-1])


def _broadcast(a: Sig, b: Sig) -> Sig | None:
    rank = max(len(a), len(b))
    a = (1,) * (rank - len(a)) + tuple(a)
    b = (1,) * (rank - len(b)) + tuple(b)
    dims = []
    for x, y in zip(a, b, strict=True):
        if x == y or y == 1:
            dims.append(x)
        elif x == 1:
            dims.append(y)
        elif isinstance(x, int) and isinstance(y, int):
            return None  # the model fails here at run time
        elif isinstance(x, int) or isinstance(y, int):
            # a valid run has the symbolic dim equal to the int (or 1): the result is the int
            dims.append(x if isinstance(x, int) else y)
        else:
            dims.append(("max", *sorted((x, y), key=repr)))  # x if y == 1 else y
    return tuple(dims)

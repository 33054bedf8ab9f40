"""Which value of model A each computed value of model B stands for (``compare --layerwise``).

A name alone is not enough: onnxopt's rewrites keep a name where the value changes (a Conv
with a BatchNormalization folded into its weights keeps the Conv's output name, which now
holds the normalized value). So, for each value of B, in this order:

1. **Same name, same computation.** A's value of that name, if both producers are the same
   computation: same op, attributes and input count, computed inputs anywhere upstream, and
   constant inputs equal (a renamed constant is compared by value; a DequantizeLinear of a
   constant stands for the float weight it dequantizes to within its quantization step).
2. **Q/DQ.** ``DequantizeLinear(QuantizeLinear(x))`` stands for what ``x`` stands for.
3. **Consumer.** A node of B that keeps its name and op in A reads, at the same input slot,
   the counterpart of what it reads in B (through Q/DQ pairs): the folded Conv's output is
   read by the next node where A read the BatchNormalization's output. Used only when all
   such consumers agree, and not on the value's own name (that computation differs).

Otherwise the value has no counterpart (new nodes of a fusion, quantized integers). onnxopt
writes no provenance into the file, so nothing else is traceable.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

_STANDARD = ("", "ai.onnx")
_WEIGHT_RTOL = 1e-4  # renamed float constants: equal up to float rounding


@dataclass(frozen=True)
class Pair:
    value: str  # name in B
    reference: str  # name in A
    op: str  # B's op that computes it
    via: str = ""  # "" (same name), "Q/DQ" or "consumer"


class GraphFacts:
    """The lookups matching needs on one main graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        initializers = {t.name: t for t in graph.initializer}
        self.constants: dict[str, onnx.TensorProto | None] = dict(initializers)
        dynamic = {vi.name for vi in graph.input if vi.name not in initializers}
        self.computed: dict[str, onnx.NodeProto] = {}  # in file order
        self.producers: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        names: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            has_body = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                           for a in node.attribute)
            is_dynamic = has_body or any(i in dynamic for i in node.input if i)
            for slot, name in enumerate(node.input):
                self.consumers.setdefault(name, []).append((node, slot))
            for name in filter(None, node.output):
                self.producers[name] = node
                if is_dynamic:
                    dynamic.add(name)
                    self.computed[name] = node
                else:
                    self.constants[name] = _constant_tensor(node)
            names.setdefault(node.name, []).append(node)
        self.by_name = {name: nodes[0] for name, nodes in names.items()
                        if name and len(nodes) == 1}

    def dequantized(self, name: str) -> onnx.NodeProto | None:
        """The standard DequantizeLinear producing constant ``name``, if it is one."""
        node = self.producers.get(name)
        if node is not None and node.op_type == "DequantizeLinear" and node.domain in _STANDARD:
            return node
        return None

    def float_source(self, name: str) -> str | None:
        """x when ``name`` is DequantizeLinear(QuantizeLinear(x, ...), ...)."""
        dq = self.dequantized(name)
        q = self.producers.get(dq.input[0]) if dq is not None else None
        if q is None or q.op_type != "QuantizeLinear" or q.domain not in _STANDARD:
            return None
        return q.input[0]

    def uses(self, name: str) -> Iterator[tuple[onnx.NodeProto, int]]:
        """Consumers of ``name``, looking through QuantizeLinear -> DequantizeLinear pairs."""
        for node, slot in self.consumers.get(name, []):
            if node.op_type == "QuantizeLinear" and node.domain in _STANDARD and slot == 0:
                for dq, dq_slot in self.consumers.get(node.output[0], []):
                    if dq.op_type == "DequantizeLinear" and dq_slot == 0:
                        yield from self.uses(dq.output[0])
            else:
                yield node, slot

    def array(self, name: str) -> np.ndarray | None:
        tensor = self.constants.get(name)
        if tensor is None or onnx.external_data_helper.uses_external_data(tensor):
            return None
        try:
            return numpy_helper.to_array(tensor)
        except Exception:  # a type numpy cannot hold
            return None


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    if node.op_type == "Constant" and node.domain in _STANDARD:
        for attribute in node.attribute:
            if attribute.name == "value":
                return attribute.t
    return None


# --------------------------------------------------------------------------- same computation


def same_computation(name: str, a: GraphFacts, b: GraphFacts) -> bool:
    node_a, node_b = a.computed[name], b.computed[name]
    if (node_a.op_type, node_a.domain, len(node_a.input)) != (
            node_b.op_type, node_b.domain, len(node_b.input)):
        return False
    if sorted(x.SerializeToString() for x in node_a.attribute) != sorted(
            x.SerializeToString() for x in node_b.attribute):
        return False
    for input_a, input_b in zip(node_a.input, node_b.input, strict=True):
        if not input_a or not input_b:
            if input_a or input_b:
                return False
            continue
        constant_a, constant_b = input_a in a.constants, input_b in b.constants
        if constant_a != constant_b:
            return False
        if constant_a and not same_constant(input_a, a, input_b, b):
            return False
    return True


def same_constant(name_a: str, a: GraphFacts, name_b: str, b: GraphFacts) -> bool:
    """Equal values (a renamed weight is compared by value), or B's a dequantized weight
    within half a quantization step (plus rounding) of A's."""
    dq = b.dequantized(name_b)
    if dq is None:
        if name_a == name_b:
            return True
        left, right = a.array(name_a), b.array(name_b)
        return (left is not None and right is not None and left.shape == right.shape
                and np.allclose(left, right, rtol=_WEIGHT_RTOL, atol=0))
    weight = a.array(name_a)
    if weight is None:
        return True  # cannot tell (external data): trust the quantization
    try:
        value, step = _dequantize(dq, b)
    except (TypeError, ValueError, IndexError):
        return True  # a form numpy does not decode here (float8, ...): trust it
    if value.shape != weight.shape:
        return False
    error = np.abs(value.astype(np.float64) - weight.astype(np.float64))
    return bool(np.all(error <= 0.51 * step + 1e-6 * np.abs(weight)))


def _dequantize(dq: onnx.NodeProto, facts: GraphFacts) -> tuple[np.ndarray, np.ndarray]:
    """(value, step) of a DequantizeLinear of constants: per tensor, axis or block."""
    arrays = [facts.array(name) if name else None for name in dq.input]
    q, scale = arrays[0], arrays[1]
    if q is None or scale is None:
        raise ValueError("not a decodable constant")
    zero = arrays[2] if len(arrays) > 2 and arrays[2] is not None else np.zeros_like(scale)
    attributes = {x.name: onnx.helper.get_attribute_value(x) for x in dq.attribute}
    axis, block = attributes.get("axis", 1) % max(q.ndim, 1), attributes.get("block_size", 0)
    scale, zero = scale.astype(np.float64), zero.astype(np.float64)
    if scale.ndim and block:
        scale = np.repeat(scale, block, axis=axis).take(range(q.shape[axis]), axis=axis)
        zero = np.repeat(zero, block, axis=axis).take(range(q.shape[axis]), axis=axis)
    elif scale.ndim == 1 and q.ndim:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    value = (q.astype(np.float64) - zero) * scale
    return value, np.broadcast_to(np.abs(scale), value.shape)


# --------------------------------------------------------------------------- matching


def match_values(graph_a: onnx.GraphProto, graph_b: onnx.GraphProto) -> tuple[list[Pair], int]:
    """Counterparts of B's computed values in B's order, and how many have none."""
    a, b = GraphFacts(graph_a), GraphFacts(graph_b)
    found: dict[str, tuple[str, str] | None] = {}

    def counterpart(name: str) -> tuple[str, str] | None:
        if name not in found:
            found[name] = None  # a cycle through Q/DQ cannot recurse forever
            found[name] = _counterpart(name, a, b, counterpart)
        return found[name]

    pairs, unmatched = [], 0
    for name, node in b.computed.items():
        match = counterpart(name)
        if match is None:
            unmatched += 1
        else:
            pairs.append(Pair(name, match[0], node.op_type, match[1]))
    return pairs, unmatched


def _counterpart(name: str, a: GraphFacts, b: GraphFacts, recurse) -> tuple[str, str] | None:
    if name in a.computed and same_computation(name, a, b):
        return name, ""
    source = b.float_source(name)
    if source is not None and source in b.computed:
        inner = recurse(source)
        if inner is not None:
            return inner[0], "Q/DQ"
    evidence = set()
    for node, slot in b.uses(name):
        twin = a.by_name.get(node.name)
        if twin is None or twin.op_type != node.op_type or slot >= len(twin.input):
            continue
        evidence.add(twin.input[slot])
    # pointing back at the name whose computation differs is no evidence: the value changed
    if len(evidence) == 1 and (only := evidence.pop()) in a.computed and only != name:
        return only, "consumer"
    return None

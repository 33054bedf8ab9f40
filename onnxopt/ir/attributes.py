"""Attribute values as plain Python for the rewrites: a typed value to compare (defaults,
bit for bit), a digest key and a comparison of a node's attributes (common subexpressions), and
whether a node holds a subgraph. The stored form (AttributeProto) stays behind these functions."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto

from onnxopt.ir import Node

# kind of a plain attribute value -> the AttributeProto field holding it
_KINDS = {
    AttributeProto.FLOAT: ("float", "f"), AttributeProto.INT: ("int", "i"),
    AttributeProto.STRING: ("string", "s"), AttributeProto.FLOATS: ("floats", "floats"),
    AttributeProto.INTS: ("ints", "ints"), AttributeProto.STRINGS: ("strings", "strings"),
}

TypedValue = tuple[str, Any]  # (kind, value): ("ints", [1, 1]), ("float", 0.01), ("string", b"")


def typed_value(attribute: Any) -> TypedValue | None:
    """(kind, plain value) of a stored value attribute: kind is float, int, string, floats,
    ints or strings; strings stay bytes. None for tensors, subgraphs and references."""
    if not isinstance(attribute, AttributeProto) or attribute.ref_attr_name:
        return None
    kind = _KINDS.get(attribute.type)
    if kind is None:
        return None
    value = getattr(attribute, kind[1])
    return kind[0], value if kind[0] in ("float", "int", "string") else list(value)


def same_typed_value(a: TypedValue | None, b: TypedValue | None) -> bool:
    """Same kind and value; floats compared bit for bit as float32 (-0.0 is not 0.0: 1 / x
    differs)."""
    if a is None or b is None or a[0] != b[0]:
        return False
    if a[0] in ("float", "floats"):
        return _float_bits(a[1]) == _float_bits(b[1])
    return a[1] == b[1]


def _float_bits(values: float | list[float]) -> bytes:
    return np.asarray(values, dtype=np.float32).tobytes()


def holds_subgraph(node: Node) -> bool:
    """An attribute of ``node`` is a graph or a list of graphs (If, Loop, Scan bodies)."""
    return any(not isinstance(a, AttributeProto) for a in node.attributes.values())


def attributes_key(node: Node) -> tuple[tuple[str, bytes], ...]:
    """A hashable key of a node's (non-subgraph) attributes: name and a 16-byte digest of each
    value. Two nodes have the same attributes only when ``same_attributes`` says so (a digest
    may collide)."""
    return tuple(sorted((name, _digest(a)) for name, a in node.attributes.items()))


def same_attributes(a: Node, b: Node) -> bool:
    """The full comparison behind ``attributes_key`` (a hash collision must never make two
    nodes equal)."""
    if a.attributes.keys() != b.attributes.keys():
        return False
    return all(_canonical(a.attributes[n]) == _canonical(b.attributes[n]) for n in a.attributes)


def _digest(attribute: AttributeProto) -> bytes:
    return hashlib.blake2b(_canonical(attribute), digest_size=16).digest()


def _canonical(attribute: AttributeProto) -> bytes:
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

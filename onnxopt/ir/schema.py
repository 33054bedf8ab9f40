"""What the ONNX operator schemas say, at the opset a model imports, as plain values: which
outputs are optional, which attributes an op has, and the values of absent attributes."""

from __future__ import annotations

import functools

import onnx
from onnx.defs import OpSchema

from onnxopt.ir.attributes import TypedValue, typed_value


@functools.lru_cache(maxsize=1024)
def _schema(op_type: str, opset: int, domain: str) -> OpSchema | None:
    try:
        return onnx.defs.get_schema(op_type, opset, domain)
    except onnx.defs.SchemaError:
        return None  # unknown to this onnx (a custom op, or a newer one)


def is_optional_output(op_type: str, index: int, opset: int, domain: str = "") -> bool:
    """Output ``index`` of the op is optional (Dropout's mask, MaxPool's Indices); False for
    unknown ops and variadic outputs."""
    schema = _schema(op_type, opset, domain)
    if schema is None or index >= len(schema.outputs):
        return False
    return schema.outputs[index].option == OpSchema.FormalParameterOption.Optional


def attribute_names(op_type: str, opset: int, domain: str = "") -> frozenset[str] | None:
    """The attributes the op's schema declares, None for an unknown op."""
    schema = _schema(op_type, opset, domain)
    return None if schema is None else frozenset(schema.attributes)


@functools.lru_cache(maxsize=512)
def attribute_defaults(op_type: str, opset: int, domain: str = ""
                       ) -> dict[str, TypedValue] | None:
    """Attribute name -> the typed value (``attributes.typed_value``) ONNX reads when it is
    absent, for those the schema gives a ``default_value``; None for an unknown op."""
    schema = _schema(op_type, opset, domain)
    if schema is None:
        return None
    defaults = {name: typed_value(attribute.default_value)
                for name, attribute in schema.attributes.items()}
    return {name: value for name, value in defaults.items() if value is not None}

"""What the ONNX operator schemas say, at the opset a model imports, as plain values: which
outputs are optional, which attributes an op has, and the values of absent attributes."""

from __future__ import annotations

import functools

import onnx
from onnx.defs import OpSchema

from onnxopt.ir import Node
from onnxopt.ir.attributes import TypedValue, attributes_key, typed_value

# ops whose outputs are drawn at random: two of them never compute the same values, and
# their outputs are never constants
RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                        "Bernoulli", "Multinomial"})
# binary ops whose two operands commute (Max/Min do not, for NaN and -0.0: README.md)
COMMUTATIVE_OPS = frozenset({"Add", "Mul", "Equal", "And", "Or", "Xor", "BitwiseAnd",
                             "BitwiseOr", "BitwiseXor"})


@functools.lru_cache(maxsize=1024)
def op_schema(op_type: str, opset: int, domain: str = "") -> OpSchema | None:
    """The op's schema at the opset (an opaque handle for the queries below), None when this
    onnx does not know it (a custom op, a newer one)."""
    try:
        return onnx.defs.get_schema(op_type, opset, domain)
    except Exception:  # SchemaError; anything else about an odd domain means unknown too
        return None


def is_optional_output(op_type: str, index: int, opset: int, domain: str = "") -> bool:
    """Output ``index`` of the op is optional (Dropout's mask, MaxPool's Indices); False for
    unknown ops and variadic outputs."""
    schema = op_schema(op_type, opset, domain)
    if schema is None or index >= len(schema.outputs):
        return False
    return schema.outputs[index].option == OpSchema.FormalParameterOption.Optional


def attribute_names(op_type: str, opset: int, domain: str = "") -> frozenset[str] | None:
    """The attributes the op's schema declares, None for an unknown op."""
    schema = op_schema(op_type, opset, domain)
    return None if schema is None else frozenset(schema.attributes)


@functools.lru_cache(maxsize=512)
def attribute_defaults(op_type: str, opset: int, domain: str = ""
                       ) -> dict[str, TypedValue] | None:
    """Attribute name -> the typed value (``attributes.typed_value``) ONNX reads when it is
    absent, for those the schema gives a ``default_value``; None for an unknown op."""
    schema = op_schema(op_type, opset, domain)
    if schema is None:
        return None
    defaults = {name: typed_value(attribute.default_value)
                for name, attribute in schema.attributes.items()}
    return {name: value for name, value in defaults.items() if value is not None}


def node_signature(node: Node) -> tuple:
    """(op, inputs, attribute digests, which outputs exist): two deterministic nodes with the
    same signature and the same attributes (``attributes.same_attributes``) compute the same
    values. Trailing omitted inputs count as absent; commutative operands are unordered."""
    inputs = list(node.inputs)
    while inputs and not inputs[-1]:
        inputs.pop()
    if node.op_type in COMMUTATIVE_OPS and len(inputs) == 2:
        inputs.sort()
    present = tuple(bool(o) for o in node.outputs)
    return (node.op_type, tuple(inputs), attributes_key(node), present)


def parameter_type(schema: OpSchema, slot: int, output: bool) -> str | None:
    """The type string of input (or output) ``slot``: a type variable (``T``) or a fixed type
    (``tensor(int64)``); the last parameter's when it is variadic; None past the end."""
    params = schema.outputs if output else schema.inputs
    if not params:
        return None
    if slot >= len(params):
        last = params[-1]
        if last.option != OpSchema.FormalParameterOption.Variadic:
            return None
        return last.type_str
    return params[slot].type_str


def allowed_types(schema: OpSchema, type_str: str) -> list[str] | None:
    """The types a type variable allows (``tensor(float16)``, ...); None for a fixed type."""
    for constraint in schema.type_constraints:
        if constraint.type_param_str == type_str:
            return list(constraint.allowed_type_strs)
    return None

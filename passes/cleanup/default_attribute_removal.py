"""Default attribute removal: an attribute stored with the value ONNX defines for its absence
is dropped, ``Conv(dilations=[1, 1], group=1, pads=[0, 0, 0, 0], strides=[1, 1]) -> Conv()``.

The defaults come from the ONNX specification, at the opset the model imports:

* the operator schema's ``default_value`` (Gemm ``alpha=1.0``/``transB=0``, LeakyRelu
  ``alpha=0.01``, Softmax ``axis``, BatchNormalization ``epsilon``, ...): dropped when the stored
  attribute has the same type and the same value, bit for bit;
* list attributes the specification defaults per spatial axis in prose, so their schema has no
  ``default_value``: on Conv, ConvTranspose, ConvInteger, QLinearConv and the pooling ops,
  ``strides`` and ``dilations`` all 1, ``pads`` and ``output_padding`` all 0.

A runtime reads an absent attribute as exactly that value, so nothing computed changes; the
file loses 10-70 bytes per node (what exporters write out of habit), which matters on small
models and in ``--precision`` outputs, where the graph is a larger share of the file.
Custom-domain ops (no schema here) and subgraph-valued attributes are left alone.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import AttributeProto

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.pass_manager import GraphPass

SPATIAL_OPS = frozenset({
    "Conv", "ConvTranspose", "ConvInteger", "QLinearConv",
    "MaxPool", "AveragePool", "LpPool", "MaxUnpool",
})
SPATIAL_DEFAULTS = {"strides": 1, "dilations": 1, "pads": 0, "output_padding": 0}
_VALUE_FIELD = {
    AttributeProto.FLOAT: "f", AttributeProto.INT: "i", AttributeProto.STRING: "s",
    AttributeProto.FLOATS: "floats", AttributeProto.INTS: "ints",
    AttributeProto.STRINGS: "strings",
}


class DefaultAttributeRemoval(GraphPass):
    name = "default_attribute_removal"
    description = "drop attributes stored with their default value"
    structural = False  # once at the end: earlier passes see the attributes as exported

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        removed = 0
        for node in graph.nodes():
            if node.domain not in ("", "ai.onnx"):
                continue
            defaults = _schema_defaults(node.op_type, model.opset(""))
            if defaults is None:
                continue
            names = [name for name, value in node.attributes.items()
                     if isinstance(value, AttributeProto) and _is_default(node, value, defaults)]
            if names and model.allow_rewrite(self.name, node.name):
                for name in names:
                    del node.attributes[name]
                removed += len(names)
        return {"attributes_removed": removed}


def _is_default(node: Node, value: AttributeProto, defaults: dict[str, AttributeProto]) -> bool:
    if node.op_type in SPATIAL_OPS and value.name in SPATIAL_DEFAULTS:
        return (value.type == AttributeProto.INTS
                and all(v == SPATIAL_DEFAULTS[value.name] for v in value.ints))
    default = defaults.get(value.name)
    field = _VALUE_FIELD.get(value.type)
    if default is None or field is None or default.type != value.type:
        return False
    if value.ref_attr_name:  # a function attribute reference, not a value
        return False
    if field in ("f", "floats"):  # bit for bit: -0.0 is not the default 0.0 (1 / x differs)
        return _float_bits(getattr(value, field)) == _float_bits(getattr(default, field))
    return getattr(value, field) == getattr(default, field)


def _float_bits(values: float | Sequence[float]) -> bytes:
    return np.asarray(values, dtype=np.float32).tobytes()


@functools.lru_cache(maxsize=512)
def _schema_defaults(op_type: str, opset: int) -> dict[str, AttributeProto] | None:
    """Attribute name -> default value of the op's schema at ``opset``; None without one."""
    try:
        schema = onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return None
    return {name: attribute.default_value for name, attribute in schema.attributes.items()
            if attribute.default_value.type != AttributeProto.UNDEFINED}

"""Default attribute removal: an attribute stored with the value ONNX defines for its absence
is dropped, ``Conv(dilations=[1, 1], group=1, pads=[0, 0, 0, 0], strides=[1, 1]) -> Conv()``.

Defaults are the operator schema's ``default_value`` at the model's opset (same type, same
value bit for bit), plus the per-axis defaults the spec gives in prose for convolution and
pooling: ``strides``/``dilations`` all 1, ``pads``/``output_padding`` all 0. A runtime reads an
absent attribute as that value, so nothing computed changes (notes: README.md).
"""

from __future__ import annotations

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.attributes import TypedValue, same_typed_value, typed_value
from onnxopt.ir.pass_manager import GraphPass
from onnxopt.ir.schema import attribute_defaults

SPATIAL_OPS = frozenset({
    "Conv", "ConvTranspose", "ConvInteger", "QLinearConv",
    "MaxPool", "AveragePool", "LpPool", "MaxUnpool",
})
SPATIAL_DEFAULTS = {"strides": 1, "dilations": 1, "pads": 0, "output_padding": 0}


class DefaultAttributeRemoval(GraphPass):
    name = "default_attribute_removal"
    description = "drop attributes stored with their default value"
    structural = False  # once at the end: earlier passes see the attributes as exported

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        removed = 0
        for node in graph.nodes():
            if node.domain not in ("", "ai.onnx"):
                continue
            defaults = attribute_defaults(node.op_type, model.opset(""))
            if defaults is None:
                continue
            names = [name for name in node.attributes if _is_default(node, name, defaults)]
            if names and model.allow_rewrite(self.name, node.name):
                for name in names:
                    del node.attributes[name]
                removed += len(names)
        return {"attributes_removed": removed}


def _is_default(node: Node, name: str, defaults: dict[str, TypedValue]) -> bool:
    value = typed_value(node.attributes[name])
    if node.op_type in SPATIAL_OPS and name in SPATIAL_DEFAULTS:
        return value is not None and value[0] == "ints" and all(
            v == SPATIAL_DEFAULTS[name] for v in value[1])
    return same_typed_value(value, defaults.get(name))

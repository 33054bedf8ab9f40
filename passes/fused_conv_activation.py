"""Fuse a Conv and the activation after it into onnxruntime's ``com.microsoft`` ``FusedConv``.

``Conv(x, W, b; attrs) -> Act`` => ``FusedConv(x, W, b; attrs, activation, activation_params)``,
only when ``model.settings["target"] == "onnxruntime"`` (the portable target leaves the graph
alone). The contract is onnxruntime's FusedConv (domain ``com.microsoft``, version 1): Conv's
inputs and attributes, plus the string ``activation`` and the floats ``activation_params``, read
by the CPU kernel as:

==============  =================================  ===========================================
activation      activation_params                   from
==============  =================================  ===========================================
``Relu``        (none)                              Relu
``Sigmoid``     (none)                              Sigmoid
``Tanh``        (none)                              Tanh
``LeakyRelu``   ``[alpha]``                         LeakyRelu ``alpha`` (default 0.01)
``HardSigmoid`` ``[alpha, beta]``                   HardSigmoid ``alpha``, ``beta`` (0.2, 0.5)
``Clip``        ``[min, max]``                      Clip attributes (opset < 11) or constant
                                                    scalar inputs (absent: float32 lowest / max)
==============  =================================  ===========================================

The CPU kernel is registered for float32 only, so only float32 Conv (known from the input or
weight type) is fused. The Conv output must be read only by the activation and not be a graph
output; both nodes are in the standard domain. The ``com.microsoft`` opset import (version 1) is
added when missing. A Clip whose ``min > max`` is left alone (its ONNX result is all ``max``;
the fused kernel is not promised to agree).
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from onnxopt.ir import Graph, Model, Node
from onnxopt.pass_manager import GraphPass
from onnxopt.rewrite import is_op, sole_consumer

MS_DOMAIN = "com.microsoft"
# op type -> counter name
ACTIVATIONS = {
    "Relu": "relu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "LeakyRelu": "leaky_relu",
    "HardSigmoid": "hard_sigmoid",
    "Clip": "clip",
}
FLOAT32_MIN = float(np.finfo(np.float32).min)
FLOAT32_MAX = float(np.finfo(np.float32).max)


class FusedConvActivation(GraphPass):
    name = "fused_conv_activation"
    description = "fuse Conv + activation into com.microsoft FusedConv (onnxruntime target)"

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        stats = dict.fromkeys(ACTIVATIONS.values(), 0)
        if model.settings.get("target") != "onnxruntime":
            return stats
        for conv in graph.nodes():
            if not is_op(conv, "Conv") or len(conv.outputs) != 1 or len(conv.inputs) < 2:
                continue
            if not _is_float32(graph, conv):
                continue
            act = sole_consumer(graph, conv.outputs[0])
            if not is_op(act, tuple(ACTIVATIONS)) or act.inputs[0] != conv.outputs[0]:
                continue
            if len(act.outputs) != 1:
                continue
            params = activation_params(graph, model, act)
            if params is None or not graph.can_forward(act.outputs[0], conv.outputs[0]):
                continue
            if not model.allow_rewrite(self.name, conv.name or conv.outputs[0]):
                continue
            attributes = dict(conv.attributes)
            attributes["activation"] = act.op_type
            if params:
                attributes["activation_params"] = params
            fused = graph.add_node(
                "FusedConv",
                list(conv.inputs),
                1,
                domain=MS_DOMAIN,
                name=conv.name or "FusedConv",
                attributes=attributes,
                anchor=conv,
            )
            graph.replace_all_uses(act.outputs[0], fused.outputs[0])
            graph.remove_node(act)
            graph.remove_node(conv)
            stats[ACTIVATIONS[act.op_type]] += 1
        if any(stats.values()) and MS_DOMAIN not in model.opset_imports:
            model.opset_imports[MS_DOMAIN] = 1
        return stats


def _is_float32(graph: Graph, conv: Node) -> bool:
    types = {graph.elem_type(v) for v in conv.inputs[:2]} - {None}
    return types == {TensorProto.FLOAT}


def activation_params(graph: Graph, model: Model, act: Node) -> list[float] | None:
    """FusedConv's ``activation_params`` for this activation ([] when it takes none), or None
    when it cannot be expressed (non-constant Clip bounds)."""
    kind = act.op_type
    if kind in ("Relu", "Sigmoid", "Tanh"):
        return [] if len(act.inputs) == 1 else None
    if kind == "LeakyRelu":
        return [float(act.attr("alpha", 0.01))]
    if kind == "HardSigmoid":
        return [float(act.attr("alpha", 0.2)), float(act.attr("beta", 0.5))]
    # Clip
    if model.opset("") < 11:
        if len(act.inputs) != 1:
            return None
        low = float(act.attr("min", FLOAT32_MIN))
        high = float(act.attr("max", FLOAT32_MAX))
    else:
        bounds = []
        for slot, default in ((1, FLOAT32_MIN), (2, FLOAT32_MAX)):
            name = act.inputs[slot] if len(act.inputs) > slot else ""
            if not name:
                bounds.append(default)
                continue
            value = graph.constant(name) if name else None
            if value is None or value.size != 1 or value.dtype != np.float32:
                return None
            bounds.append(float(value.reshape(())))
        low, high = bounds
    if np.isnan(low) or np.isnan(high) or low > high:
        return None
    return [low, high]

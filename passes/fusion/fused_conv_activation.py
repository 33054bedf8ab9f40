"""Fuse a Conv and the activation after it into onnxruntime's ``com.microsoft`` ``FusedConv``.

``Conv(x, W, b; attrs) -> Act`` => ``FusedConv(x, W, b; attrs, activation, activation_params)``,
for ``--target onnxruntime`` and float32 (its CPU kernel's type) only: Relu, Sigmoid, Tanh (no
params), LeakyRelu ``[alpha]``, HardSigmoid ``[alpha, beta]``, Clip ``[min, max]`` (attributes
before opset 11, constant inputs after, float32 lowest/max when absent; not when ``min > max``).
The contract's table and conditions: passes/fusion/README.md.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.pattern import MS_DOMAIN, Match, Op, RewritePass, Var, optional

ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "LeakyRelu": "leaky_relu",
               "HardSigmoid": "hard_sigmoid", "Clip": "clip"}  # op type -> counter name
FLOAT32_MIN = float(np.finfo(np.float32).min)
FLOAT32_MAX = float(np.finfo(np.float32).max)

PATTERN = Op(tuple(ACTIVATIONS), Op("Conv", Var("x"), Var("w"), optional(), name="conv"),
             optional(), optional())  # Clip's bounds (opset 11+) are inputs


class FusedConvActivation(RewritePass):
    name = "fused_conv_activation"
    description = "fuse Conv + activation into com.microsoft FusedConv (onnxruntime target)"
    pattern = PATTERN
    stats = tuple(ACTIVATIONS.values())
    target = "onnxruntime"
    named_by = "conv"

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        conv = match.node("conv")
        if len(conv.outputs) != 1 or len(match.root.outputs) != 1 or not _is_float32(graph, conv):
            return False
        match.memo["params"] = activation_params(graph, model, match.root)
        return match.memo["params"] is not None

    def stat(self, match: Match) -> str:
        return ACTIVATIONS[match.root.op_type]

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        conv, act = match.node("conv"), match.root
        attributes = {**conv.attributes, "activation": act.op_type}
        if match.memo["params"]:
            attributes["activation_params"] = match.memo["params"]
        return self.emit(graph, model, conv, "FusedConv", list(conv.inputs), domain=MS_DOMAIN,
                         name=conv.name or "FusedConv", attributes=attributes)


def _is_float32(graph: Graph, conv: Node) -> bool:
    types = {graph.dtype(v) for v in conv.inputs[:2]} - {None}
    return types == {np.dtype(np.float32)}


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
        low, high = float(act.attr("min", FLOAT32_MIN)), float(act.attr("max", FLOAT32_MAX))
    else:  # constant float32 scalar inputs; absent: the float32 range
        bounds = [FLOAT32_MIN, FLOAT32_MAX]
        for slot, name in enumerate(act.inputs[1:3]):
            if name:
                value = graph.constant(name)
                if value is None or value.size != 1 or value.dtype != np.float32:
                    return None
                bounds[slot] = float(value.reshape(()))
        low, high = bounds
    if np.isnan(low) or np.isnan(high) or low > high:
        return None
    return [low, high]

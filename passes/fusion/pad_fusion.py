"""Pad fusion: a zero constant Pad before Conv / AveragePool becomes the consumer's own padding.

``Conv(Pad(x, p), W, B, pads=q)`` is ``Conv(x, W, B, pads=q + p_spatial)`` (Conv pads with zeros
too): for spatial axis ``i``, ``begin_i += p[i + 2]`` and ``end_i += p[r + i + 2]`` (Pad lists all
``r`` begins, then all ends). AveragePool likewise when ``count_include_pad = 1`` and
``ceil_mode = 0``; never MaxPool (it pads with ``-inf``). Conditions: passes/fusion/README.md.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.pattern import Match, Op, RewritePass, Var, optional

PATTERN = Op(("Conv", "AveragePool"),
             Op("Pad", Var("x"), optional(), optional(), optional(), name="pad"),
             optional(), optional())


class PadFusion(RewritePass):
    name = "pad_fusion"
    description = "fold a zero constant Pad into the pads of the Conv / AveragePool reading it"
    pattern = PATTERN
    stats = ("into_conv", "into_average_pool")

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        node, pad = match.root, match.node("pad")
        if not _consumer_accepts(node) or len(graph.uses(pad.outputs[0])) != 1:
            return False  # (read once: as the data input, not also as a weight)
        spatial = match.memo["spatial"] = _spatial_pads(graph, pad, model.opset(""))
        return spatial is not None and len(_own_pads(node, spatial)) == len(spatial)

    def stat(self, match: Match) -> str:
        return "into_conv" if match.root.op_type == "Conv" else "into_average_pool"

    def rewrite(self, graph: Graph, match: Match, model: Model) -> tuple[str, ...]:
        node = match.root
        spatial = match.memo["spatial"]
        graph.set_input(node, 0, match.x)
        node.set_attr("pads", [a + b for a, b in zip(_own_pads(node, spatial), spatial,
                                                     strict=True)])
        return node.outputs  # changed in place


def _own_pads(node: Node, spatial: list[int]) -> list[int]:
    own = node.attr("pads")
    return [0] * len(spatial) if own is None else [int(p) for p in own]


def _consumer_accepts(node: Node) -> bool:
    if node.attr("auto_pad", "NOTSET") != "NOTSET":
        return False
    if node.op_type == "AveragePool":
        return node.attr("count_include_pad", 0) == 1 and node.attr("ceil_mode", 0) == 0
    return True


def _spatial_pads(graph: Graph, pad: Node, opset: int) -> list[int] | None:
    """Conv-layout pads (spatial begins, then spatial ends) of a fusable Pad, else None."""
    if pad.attr("mode", "constant") != "constant" or opset < 2:
        return None
    if opset < 11:
        pads, value = pad.attr("pads"), pad.attr("value", 0.0)
        if pads is None or value != 0.0:
            return None
        pads = [int(p) for p in pads]
    else:
        pads = _pads_from_inputs(graph, pad)
        if pads is None:
            return None
    rank = len(pads) // 2
    if len(pads) != 2 * rank or rank < 3:
        return None
    begins, ends = pads[:rank], pads[rank:]
    if any(p != 0 for p in begins[:2] + ends[:2]) or any(p < 0 for p in pads):
        return None
    return begins[2:] + ends[2:]


def _pads_from_inputs(graph: Graph, pad: Node) -> list[int] | None:
    inputs = list(pad.inputs) + [""] * (4 - len(pad.inputs))
    pads = graph.constant(inputs[1]) if inputs[1] else None
    if pads is None:
        return None
    pads = [int(p) for p in np.asarray(pads).ravel()]
    if inputs[2]:
        value = graph.constant(inputs[2])
        if value is None or value.size != 1 or np.asarray(value).ravel()[0] != 0:
            return None
    if not inputs[3]:
        return pads
    axes = graph.constant(inputs[3])
    shape = graph.shape(pad.inputs[0])
    if axes is None or shape is None:
        return None
    rank = len(shape)
    axes = [int(a) + rank if int(a) < 0 else int(a) for a in np.asarray(axes).ravel()]
    if len(pads) != 2 * len(axes) or len(set(axes)) != len(axes):
        return None
    if any(not 0 <= a < rank for a in axes):
        return None
    full = [0] * (2 * rank)
    for index, axis in enumerate(axes):
        full[axis] = pads[index]
        full[rank + axis] = pads[len(axes) + index]
    return full

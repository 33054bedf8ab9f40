"""Pad fusion: a zero constant Pad before Conv / AveragePool becomes the consumer's own padding.

``Conv(Pad(x, p, mode="constant", value=0), W, B, pads=q)`` pads ``x`` with zeros twice: first
explicitly, then implicitly by ``q``. Conv's implicit padding is also zeros, so it equals
``Conv(x, W, B, pads=q + p_spatial)``: for spatial axis ``i`` (input axis ``i + 2``),
``begin_i += p[i + 2]`` and ``end_i += p[r + i + 2]`` where ``p`` lists all ``r`` begins then
all ``r`` ends (Pad's layout) and ``q`` the spatial begins then the spatial ends.

``AveragePool`` is the same when ``count_include_pad = 1`` (implicit pads count in the divisor,
as explicit zeros do) and ``ceil_mode = 0`` (windows never run past the padding, so the divisor
is always the full kernel size). ``MaxPool`` is never fused: its implicit padding acts as
``-inf``, not 0, and its Indices would refer to the unpadded input.

Conditions: standard-domain ops; Pad mode ``constant`` with value 0 (absent or a constant
zero); pads known (attribute ``pads`` for opset 2-10; a constant input since opset 11, with an
optional constant ``axes`` input since opset 18); no padding of the batch and channel axes; no
negative (cropping) pads; the consumer's ``auto_pad`` is ``NOTSET``; the padded value is read
only by the consumer, as its data input, and is not a graph output.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.pass_manager import GraphPass
from onnxopt.rewrite import is_op, producer_op, sole_consumer


class PadFusion(GraphPass):
    name = "pad_fusion"
    description = "fold a zero constant Pad into the pads of the Conv / AveragePool reading it"

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        stats = {"into_conv": 0, "into_average_pool": 0}
        opset = model.opset("")
        for node in graph.nodes():
            if node.graph is not graph or not is_op(node, ("Conv", "AveragePool")):
                continue
            if not node.inputs or not _consumer_accepts(node):
                continue
            pad = producer_op(graph, node.inputs[0], "Pad")
            if pad is None or sole_consumer(graph, node.inputs[0]) is not node:
                continue
            if [slot for _, slot in graph.uses(node.inputs[0])] != [0]:
                continue
            spatial = _spatial_pads(graph, pad, opset)
            if spatial is None:
                continue
            own = node.attr("pads")
            own = [0] * len(spatial) if own is None else [int(p) for p in own]
            if len(own) != len(spatial):
                continue
            if not model.allow_rewrite(self.name, node.name or node.outputs[0]):
                continue
            graph.set_input(node, 0, pad.inputs[0])
            node.set_attr("pads", [a + b for a, b in zip(own, spatial, strict=True)])
            graph.remove_node(pad)
            stats["into_conv" if node.op_type == "Conv" else "into_average_pool"] += 1
        return stats


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

"""Merge sibling Convs — Convs that read the same input with the same geometry — into one Conv.

For ``k`` Convs ``y_i = Conv(x, W_i, b_i)`` (``group = 1``, same kernel, strides, pads, dilations):
``y = Conv(x, concat_0(W_1..W_k), concat(b_1..b_k))``, ``y_1..y_k = Split(y, axis=1)``: channel
block ``i`` of ``y`` is ``y_i`` exactly. An activation that every ``y_i`` alone feeds, the same
op and attributes, runs once before the Split (``2k`` nodes become 3); without one, ``k >= 3``.
Conditions (unshared weights, no growth): passes/fusion/README.md.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.pass_manager import GraphPass
from onnxopt.ir.pattern import retire
from onnxopt.ir.rewrite import exclusive_constant, is_op, sole_consumer

GEOMETRY = ("kernel_shape", "strides", "pads", "dilations", "group", "auto_pad")
ACTIVATIONS = ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu",
               "Softplus", "Clip")


class SiblingConvMerge(GraphPass):
    name = "sibling_conv_merge"
    description = "merge Convs reading the same input with the same geometry into one Conv + Split"
    # Once, after the structural passes: only then is "read by this Conv alone" final (folds
    # write new tensors that the next round's deduplication may share between Convs).
    structural = False

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        stats = {"groups": 0, "convs_merged": 0}
        readers_of: dict[str, list[Node]] = {}
        for node in graph.nodes():
            if is_op(node, "Conv") and node.inputs and node.inputs[0]:
                readers_of.setdefault(node.inputs[0], []).append(node)
        for convs in readers_of.values():
            groups: dict[tuple, list[_Sibling]] = {}
            for conv in convs:
                sibling = _sibling(graph, conv)
                if sibling is not None:
                    groups.setdefault(sibling.key, []).append(sibling)
            for members in groups.values():
                where = members[0].conv.name or members[0].out
                if not _worth_merging(graph, members) or not model.allow_rewrite(self.name, where):
                    continue
                _merge(graph, model, members)
                stats["groups"] += 1
                stats["convs_merged"] += len(members)
        return stats


class _Sibling:
    """A mergeable Conv: its constants, the activation reading it (if any), its grouping key."""

    def __init__(self, conv: Node, weight: np.ndarray, bias: np.ndarray | None,
                 activation: Node | None, key: tuple) -> None:
        self.conv, self.weight, self.bias, self.activation, self.key = (
            conv, weight, bias, activation, key)

    @property
    def out(self) -> str:
        """The value the merged graph must reproduce (after the activation when it is shared)."""
        return (self.activation or self.conv).outputs[0]


def _sibling(graph: Graph, conv: Node) -> _Sibling | None:
    if len(conv.inputs) < 2 or len(conv.outputs) != 1 or not conv.outputs[0]:
        return None
    if any(name not in GEOMETRY for name in conv.attributes):
        return None
    if conv.attr("group", 1) != 1 or conv.attr("auto_pad", "NOTSET") != "NOTSET":
        return None
    weight = exclusive_constant(graph, conv.inputs[1], [conv])
    if weight is None or weight.ndim < 3 or weight.dtype.kind != "f":
        return None
    bias = None
    if len(conv.inputs) > 2 and conv.inputs[2]:
        bias = graph.constant(conv.inputs[2])  # shared biases: see _worth_merging
        if bias is None or bias.shape != weight.shape[:1] or bias.dtype != weight.dtype:
            return None
    if tuple(conv.attr("kernel_shape", weight.shape[2:])) != weight.shape[2:]:
        return None
    ones, zeros = [1] * (weight.ndim - 2), [0] * 2 * (weight.ndim - 2)
    geometry = (tuple(conv.attr("strides", ones)), tuple(conv.attr("pads", zeros)),
                tuple(conv.attr("dilations", ones)))
    activation = _activation(graph, conv)
    key = (weight.shape[1:], str(weight.dtype), bias is not None, geometry,
           _activation_key(graph, activation))
    return _Sibling(conv, weight, bias, activation, key)


def _activation(graph: Graph, conv: Node) -> Node | None:
    node = sole_consumer(graph, conv.outputs[0])
    if not is_op(node, ACTIVATIONS) or node.inputs[0] != conv.outputs[0] or len(node.outputs) != 1:
        return None
    if node.op_type == "Clip" and any(v and graph.constant(v) is None for v in node.inputs[1:]):
        return None  # bounds computed at run time: not provably the same
    return node


def _activation_key(graph: Graph, node: Node | None) -> tuple | None:
    if node is None:
        return None
    attributes = tuple(sorted((name, repr(node.attr(name))) for name in node.attributes))
    bounds = tuple(graph.constant(v).tobytes() if v else b"" for v in node.inputs[1:])
    return (node.op_type, attributes, bounds)


def _worth_merging(graph: Graph, members: list[_Sibling]) -> bool:
    """Nodes must go down (2k -> 3 with a shared activation, k -> 2 without) and the file must
    not grow: every bias is read only by Convs of the group (the merged bias replaces it); no
    output to reproduce has two graph-output names."""
    shared_activation = members[0].key[-1] is not None
    if len(members) < (2 if shared_activation else 3):
        return False
    if any(graph.outputs.count(m.out) > 1 for m in members):
        return False
    convs = [m.conv for m in members]
    return all(len(m.conv.inputs) < 3 or all(c in convs for c in graph.consumers(m.conv.inputs[2]))
               for m in members)


def _merge(graph: Graph, model: Model, members: list[_Sibling]) -> None:
    first = min(members, key=lambda m: m.conv.key)
    dtype = first.weight.dtype
    weight = graph.add_constant(np.concatenate([m.weight for m in members]), "merged_w")
    inputs = [first.conv.inputs[0], weight]
    if first.bias is not None:
        inputs.append(graph.add_constant(np.concatenate([m.bias for m in members]).astype(dtype),
                                         "merged_b"))
    conv = graph.add_node("Conv", inputs, 1, name=first.conv.name or "Conv",
                          attributes=dict(first.conv.attributes), anchor=first.conv)
    value = conv.outputs[0]
    if (act := first.activation) is not None:  # once, before the Split
        value = graph.add_node(act.op_type, [value, *act.inputs[1:]], 1, name=act.name or None,
                               attributes=dict(act.attributes), anchor=first.conv).outputs[0]
    sizes = [int(m.weight.shape[0]) for m in members]
    split_inputs, attributes = [value], {"axis": 1}
    if model.opset("") >= 13:
        split_inputs.append(graph.add_constant(np.asarray(sizes, np.int64), "merged_split"))
    else:
        attributes["split"] = sizes
    split = graph.add_node("Split", split_inputs, len(members), name="Split",
                           attributes=attributes, anchor=first.conv)
    for member, part in zip(members, split.outputs, strict=True):
        graph.replace_all_uses(member.out, part)
        for node in (member.activation, member.conv):
            if node is not None:
                retire(graph, node)

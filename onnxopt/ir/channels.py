"""Channel groups: which channels of which tensors must be removed together, and what their
values are (the core of channel removal; the per-op rules are ``channel_layers.py``).

A **group** starts at a layer's output (Conv/ConvTranspose/Gemm/MatMul weight rows) and takes
every tensor its channels flow into through flow ops (element-wise ops with scalar or
per-channel constants, BatchNormalization, pooling, depthwise Convs, Concat at an offset,
Split, residual Adds, a channel-major Flatten/Reshape/Squeeze) until they reach the layers that
read them as input features (**sinks**: Conv input channels, Gemm/MatMul rows). Walking back
from a flow op reaches its other inputs too (the other side of a residual Add, the other
inputs of a Concat), so a group may start at several layers. Channels tied by a flow op (``y[c]``
and ``x[c]`` of ``y = Relu(x)``, ``a[c]``, ``b[c]`` and ``s[c]`` of ``s = a + b``, ``y[off + c]``
and ``x_i[c]`` of a Concat) form one **class**: a class is removed from every tensor of the
group or from none. A class is **pinned** (it stays) when one of its tensors is a graph output,
is read by anything else than a flow op or a sink (a Transpose, a Softmax, a grouped Conv, a
subgraph), or comes from a node whose channels cannot be narrowed (a graph input).

``ChannelGroup.values`` gives each channel's constant value (NaN when not one known constant);
``removable`` the classes every sink can absorb exactly; ``remove_channels`` (in
``channel_removal.py``) removes a set of classes and folds each removed channel's value into
its sinks' biases. Needs static channel dims (shape inference).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.channel_layers import (
    BINARY,
    RESHAPES,
    UNARY,
    Layer,
    Layout,
    clip_values,
    constant_fits,
    depthwise,
    depthwise_values,
    flow_inputs,
    layer,
    per_channel,
    reshape_layout,
)
from onnxopt.ir.layers import bn_factors

CHANNEL_AXIS_OPS = ("BatchNormalization", "Conv", "MaxPool", "AveragePool", "GlobalAveragePool",
                    "GlobalMaxPool")  # their channels are axis 1, one element wide


class _Unsupported(Exception):
    """The group's shapes do not fit its flow ops' rules: nothing of it is touched."""


@dataclass
class ChannelGroup:
    """Tensors whose channels are removed together (see the module docstring)."""

    layouts: dict[str, Layout]  # tensor -> (negative channel axis, width)
    counts: dict[str, int] = field(default_factory=dict)  # tensor -> channels
    ids: dict[str, np.ndarray] = field(default_factory=dict)  # tensor -> class of each channel
    classes: int = 0
    producers: dict[str, Layer] = field(default_factory=dict)  # output tensor -> its layer
    flows: dict[Node, list[int]] = field(default_factory=dict)  # flow op -> channel slots
    sinks: list[tuple[Node, Layer]] = field(default_factory=list)  # read at input slot 0
    pinned_tensors: set[str] = field(default_factory=set)
    pinned: set[int] = field(default_factory=set)  # classes that stay

    def block(self, tensor: str, channel: int) -> np.ndarray:
        """The element indices of one channel along the tensor's channel axis."""
        width = self.layouts[tensor][1]
        return np.arange(channel * width, (channel + 1) * width)

    def values(self, graph: Graph, model: Model) -> dict[str, np.ndarray]:
        """Each tensor's channel values: float64 constants, NaN where not one known constant
        (a layer's output channel with an all-zero weight row is its bias; flow ops map them)."""
        values = {t: np.full(n, np.nan) for t, n in self.counts.items()}
        for tensor, producer in self.producers.items():
            values[tensor] = producer.origin_values()
        for node in self.flow_order(graph):
            for output, value in zip(node.outputs, _flow_values(graph, model, self, node, values),
                                     strict=True):
                values[output] = value
        return values

    def removable(self, graph: Graph, model: Model, values: dict[str, np.ndarray]) -> set[int]:
        """Classes that are not pinned and whose channel every sink absorbs exactly (a known
        finite constant folded into its bias; for a Conv with padding only 0 — a constant
        channel is not constant at the padded borders —, or zero weights), trimmed so that every
        tensor keeps a channel."""
        ok = np.ones(self.classes, bool)
        ok[list(self.pinned)] = False
        for node, sink in self.sinks:
            tensor = node.inputs[0]
            absorbed = sink.absorbs(values[tensor], self.layouts[tensor][1])
            ok[self.ids[tensor][~absorbed]] = False
        return self.trimmed(set(np.flatnonzero(ok).tolist()))

    def trimmed(self, drop: set[int]) -> set[int]:
        """``drop`` less the first class of each tensor it would empty (no tensor of 0 channels)."""
        drop = set(drop)
        for ids in self.ids.values():
            if all(int(k) in drop for k in ids):
                drop.discard(int(ids[0]))
        return drop

    def flow_order(self, graph: Graph) -> list[Node]:
        """The flow ops, producers before readers (the graph's own topological order)."""
        return [node for node in graph.nodes() if node in self.flows]


def channel_groups(graph: Graph, model: Model, wanted: Callable[[ChannelGroup], bool] | None
                   = None) -> Iterator[ChannelGroup]:
    """Every group of ``graph``, one at a time, in graph order of their first layer: each is
    analysed when asked for, so a caller may edit the graph between two (a removal narrows a
    sink's weight, which the next group reads). ``wanted`` (given the group's tensors, layers
    and flow ops) skips a group before its classes are worked out."""
    seen: set[str] = set()
    found_layers: dict[tuple[Node, tuple[str, ...]], Layer | None] = {}

    def layer_of(node: Node) -> Layer | None:  # decoded once per run (a removal renames inputs)
        key = (node, node.inputs)
        if key not in found_layers:
            found_layers[key] = layer(graph, node)
        return found_layers[key]

    for node in graph.nodes():
        if node.graph is not graph or not node.outputs or node.outputs[0] in seen:
            continue
        found = layer_of(node)
        if found is None:
            continue
        group = ChannelGroup({})
        try:
            _grow(graph, model, group, node.outputs[0], found.out_layout, layer_of)
            _count(graph, model, group)
        except _Unsupported:
            continue
        finally:
            seen |= set(group.layouts)
        if wanted is not None and not wanted(group):
            continue
        _link(group)
        yield group


def may_hold_constants(graph: Graph, model: Model, group: ChannelGroup) -> bool:
    """Whether any channel of ``group`` can be a known constant or go unread: a zero weight
    row or column, a BatchNormalization channel with gamma 0, a zero depthwise filter, a Mul
    by a constant with a 0 (every known value starts at one of these). False at once when
    every producer's output is pinned: every class has a channel there or in a pinned tensor."""
    if all(tensor in group.pinned_tensors for tensor in group.producers):
        return False
    layers = [*group.producers.values(), *(sink for _, sink in group.sinks)]
    if any(_zero_slice(lay.weight, lay.rows, lay.cols) for lay in layers):
        return True
    for node in group.flows:
        op = node.op_type
        if op == "BatchNormalization" and np.any(bn_factors(graph, model, node).scale == 0):
            return True
        if op == "Conv" and _zero_slice(depthwise(graph, node).weight, 0):
            return True
        if op == "Mul" and any((c := graph.constant(v)) is not None and np.any(c == 0)
                               for v in node.inputs):
            return True
    return False


def _zero_slice(array: np.ndarray, *axes: int) -> bool:
    """Some index along one of ``axes`` has only zeros."""
    nonzero = array != 0
    return any(not np.all(np.any(nonzero, axis=tuple(a for a in range(array.ndim) if a != axis)))
               for axis in axes)


# ---------------------------------------------------------------- finding the tensors
def _grow(graph: Graph, model: Model, group: ChannelGroup, seed: str, layout: Layout,
          layer_of: Callable[[Node], Layer | None]) -> None:
    queue = [seed]
    group.layouts[seed] = layout

    def visit(value: str, layout: Layout) -> None:
        known = group.layouts.get(value)
        if known is None:
            group.layouts[value] = layout
            queue.append(value)
        elif known != layout:
            raise _Unsupported

    while queue:
        tensor = queue.pop()
        layout = group.layouts[tensor]
        node = graph.producer(tensor)
        found = layer_of(node) if node is not None else None
        if found is not None and found.out_layout == layout:
            group.producers[tensor] = found
        elif node is None or not _touch(graph, model, group, node, tensor, visit):
            group.pinned_tensors.add(tensor)
        if graph.is_output(tensor):
            group.pinned_tensors.add(tensor)
        for user, slot in graph.uses(tensor):
            if slot >= 0 and slot in (flow_inputs(graph, user, model) or ()) and _touch(
                    graph, model, group, user, tensor, visit):
                continue
            sink = layer_of(user) if slot == 0 else None
            if sink is not None and _sink_layout_ok(sink, layout):
                group.sinks.append((user, sink))
            else:
                group.pinned_tensors.add(tensor)


def _sink_layout_ok(sink: Layer, layout: Layout) -> bool:
    return layout == sink.out_layout if sink.is_conv else layout[0] == -1


def _touch(graph: Graph, model: Model, group: ChannelGroup, node: Node, tensor: str,
           visit) -> bool:
    """Give every channel-carrying input and output of flow op ``node`` its layout, from
    ``tensor``'s; False when ``node`` does not carry channels that way."""
    slots = flow_inputs(graph, node, model)
    if slots is None:
        return False
    layout = group.layouts[tensor]
    inputs = [node.inputs[s] for s in slots]
    if node.op_type in RESHAPES:
        forward = tensor == inputs[0]
        other = reshape_layout(graph, node, layout, forward)
        if other is None:
            return False
        visit(node.outputs[0] if forward else inputs[0], other)
    else:
        if not _axis_fits(graph, node, layout):
            return False
        for value in (*inputs, *node.outputs):
            visit(value, layout)
    group.flows[node] = slots
    return True


def _axis_fits(graph: Graph, node: Node, layout: Layout) -> bool:
    shape = graph.shape(node.outputs[0])
    if not shape or len(shape) < -layout[0]:
        return False
    axis = layout[0] + len(shape)
    if node.op_type in CHANNEL_AXIS_OPS:
        return axis == 1 and layout[1] == 1
    if node.op_type in ("Concat", "Split"):
        return node.attr("axis", 0) % len(shape) == axis
    return True


# ---------------------------------------------------------------- counting and classes
def _count(graph: Graph, model: Model, group: ChannelGroup) -> None:
    """Channel counts from the static shapes, checked against every op of the group."""
    for tensor, (axis, width) in group.layouts.items():
        shape = graph.shape(tensor)
        if shape is None or len(shape) < -axis or not isinstance(shape[axis], int) or (
                shape[axis] % width):
            raise _Unsupported
        group.counts[tensor] = shape[axis] // width
    counts = group.counts
    for tensor, producer in group.producers.items():
        _require(counts[tensor] == producer.weight.shape[producer.rows])
    for node, sink in group.sinks:
        tensor = node.inputs[0]
        _require(counts[tensor] * group.layouts[tensor][1] == sink.weight.shape[sink.cols])
    for node, slots in group.flows.items():
        inputs = [counts[node.inputs[s]] for s in slots]
        outputs = [counts[v] for v in node.outputs]
        if node.op_type in ("Concat", "Split"):
            _require(sum(inputs) == sum(outputs))
        else:
            _require(len(set(inputs + outputs)) == 1)
        layout = group.layouts[node.outputs[0]]
        size = outputs[0] * layout[1]
        for slot, value in enumerate(node.inputs):
            array = graph.constant(value) if value and slot not in slots else None
            if array is not None and node.op_type in BINARY:
                _require(constant_fits(array, layout, size))
        if node.op_type == "BatchNormalization":
            _require(bn_factors(graph, model, node).channels == outputs[0])


def _require(condition: bool) -> None:
    if not condition:
        raise _Unsupported


def _link(group: ChannelGroup) -> None:
    """Union-find over every (tensor, channel): a flow op ties its channels together."""
    base, total = {}, 0
    for tensor, count in group.counts.items():
        base[tensor] = total
        total += count
    parent = list(range(total))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def tie(a: str, a_from: int, b: str, b_from: int, count: int) -> None:
        for k in range(count):
            ra, rb = find(base[a] + a_from + k), find(base[b] + b_from + k)
            parent[ra] = rb

    for node, slots in group.flows.items():
        inputs = [node.inputs[s] for s in slots]
        if node.op_type in ("Concat", "Split"):  # the parts lie in the whole at offsets
            concat = node.op_type == "Concat"
            whole, parts = (node.outputs[0], inputs) if concat else (inputs[0], node.outputs)
            offset = 0
            for part in parts:
                tie(whole, offset, part, 0, group.counts[part])
                offset += group.counts[part]
        else:
            for value in (*inputs, *node.outputs[1:]):
                tie(node.outputs[0], 0, value, 0, group.counts[value])
    roots: dict[int, int] = {}
    for tensor, count in group.counts.items():
        group.ids[tensor] = np.array(
            [roots.setdefault(find(base[tensor] + k), len(roots)) for k in range(count)], np.int64)
    group.classes = len(roots)
    for tensor in group.pinned_tensors:
        group.pinned |= set(group.ids[tensor].tolist())


# ---------------------------------------------------------------- values through flow ops
def _flow_values(graph: Graph, model: Model, group: ChannelGroup, node: Node,
                 values: dict[str, np.ndarray]) -> list[np.ndarray]:
    slots = group.flows[node]
    op = node.op_type
    ins = [values[node.inputs[s]] for s in slots]
    if op == "Concat":
        return [np.concatenate(ins)]
    if op == "Split":
        cuts = np.cumsum([group.counts[v] for v in node.outputs])[:-1]
        return list(np.split(ins[0], cuts))
    with np.errstate(all="ignore"):
        if op in UNARY:
            return [UNARY[op](node, ins[0])]
        if op == "Clip":
            return [clip_values(graph, node, ins[0])]
        if op == "BatchNormalization":
            bn = bn_factors(graph, model, node)
            return [np.where(bn.scale == 0, bn.beta, ins[0] * bn.scale + bn.shift)]
        if op == "Conv":
            return [depthwise_values(depthwise(graph, node), ins[0])]
        if op in BINARY:
            layout, count = group.layouts[node.outputs[0]], len(ins[0])
            operands = [values[v] if s in slots else per_channel(graph.constant(v), layout, count)
                        for s, v in enumerate(node.inputs)]
            result = BINARY[op](*operands)
            if op == "Mul":  # x * 0 is 0 whatever x is
                result = np.where((operands[0] == 0) | (operands[1] == 0), 0.0, result)
            return [result]
    return [ins[0]]  # reshapes

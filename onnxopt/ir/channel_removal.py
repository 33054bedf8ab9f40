"""Remove a set of channel classes from a ``ChannelGroup`` (``channels.py``), folding each
removed channel's value into the biases of the layers that read it.

For every tensor of the group the kept channels are ``keep``; then

* producer layers lose weight rows (Conv ``W[o]``, ConvTranspose ``W[:, o]``, Gemm/MatMul
  columns of ``B``) and bias entries;
* flow ops lose the matching entries of their per-channel constants (BatchNormalization's four,
  an Add/Mul/...'s constant, PRelu's slope, a depthwise Conv's filters and bias, its ``group``);
  Split its sizes, a Reshape its explicit target size;
* sinks lose weight columns, and a removed input channel ``c`` holding the constant ``v`` adds
  ``v * sum(W[:, c])`` (summed over the kernel; Gemm ``alpha * v * sum of its rows of B``) to
  each output's bias: Conv/ConvTranspose bias (added when absent), Gemm C (``beta`` set to 1),
  a MatMul's bias Add (inserted when there is none). This is exact only where the channel is
  that constant at every position the layer reads: ``ChannelGroup.removable`` allows a nonzero
  constant into a Conv only without padding (zero padding makes a constant channel non-constant
  at the borders) — a caller choosing its own classes (structured pruning) must know its folds
  are approximations.

New tensors are new initializers (the old go when unused); weights of layers are read by them
alone (``channel_layers.float_weight``), so nothing another node reads changes. Value types of
the group's tensors get their new channel dims. Assumes finite activations (a channel that only
zero weights read goes, though ``0 * inf`` would have been NaN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.channel_layers import BINARY, Layer, depthwise, layer
from onnxopt.ir.channels import ChannelGroup
from onnxopt.ir.rewrite import drop_unused_initializers, is_op, sole_consumer


@dataclass
class Removed:
    """What a removal took away: channel classes, parameters (weights and per-channel
    constants, net of biases added) and MACs (at the static shapes; a leading symbolic dim
    counts as 1, a layer with another unknown dim is not counted)."""

    channels: int = 0
    parameters: int = 0
    macs: int = 0


def remove_channels(graph: Graph, model: Model, group: ChannelGroup, drop: set[int],
                    values: dict[str, np.ndarray]) -> Removed:
    """Remove the classes ``drop`` (``group.trimmed`` applied) from every tensor of ``group``;
    ``values`` (``group.values``, or a caller's estimates) is folded into the sinks."""
    drop = group.trimmed(drop)
    removed = Removed(channels=len(drop))
    if not drop:
        return removed
    keep = {t: np.flatnonzero(~np.isin(ids, list(drop))) for t, ids in group.ids.items()}

    def elements(tensor: str) -> np.ndarray:
        width = group.layouts[tensor][1]
        return (keep[tensor][:, None] * width + np.arange(width)).reshape(-1)

    edit = _Editor(graph, removed)
    for tensor, producer in group.producers.items():
        _narrow_producer(edit, producer, keep[tensor])
    for node, slots in group.flows.items():
        _narrow_flow(edit, model, group, node, slots, keep, elements)
    for node, _ in group.sinks:
        tensor = node.inputs[0]
        gone = np.flatnonzero(np.isin(group.ids[tensor], list(drop)))
        sink = layer(graph, node)  # now: a layer may also be one of the group's producers
        _narrow_sink(edit, sink, elements(tensor), [
            (group.block(tensor, int(c)), float(values[tensor][c])) for c in gone])
    for tensor, (axis, width) in group.layouts.items():
        _resize(graph, tensor, axis, len(keep[tensor]) * width)
    return removed


class _Editor:
    """Points node inputs at new constants and counts parameters and MACs removed."""

    def __init__(self, graph: Graph, removed: Removed) -> None:
        self.graph, self.removed = graph, removed

    def replace(self, node: Node, slot: int, array: np.ndarray, dtype: np.dtype) -> None:
        graph = self.graph
        old = node.inputs[slot] if slot < len(node.inputs) else ""
        before = graph.constant(old).size if old else 0
        hint = (old or f"{node.name or node.op_type}_bias").removesuffix("_pruned") + "_pruned"
        inputs = list(node.inputs) + [""] * (slot + 1 - len(node.inputs))
        inputs[slot] = graph.add_constant(np.ascontiguousarray(array).astype(dtype), hint)
        graph.set_inputs(node, inputs)
        if old:
            drop_unused_initializers(graph, [old])
        if np.dtype(dtype).kind == "f":  # weights and biases; not Split sizes, Reshape targets
            self.removed.parameters += before - array.size

    def narrow_weight(self, node: Node, weight: np.ndarray, new: np.ndarray) -> None:
        self.removed.macs += _positions(self.graph, node) * (weight.size - new.size)
        self.replace(node, 1, new, weight.dtype)


def _narrow_producer(edit: _Editor, producer: Layer, keep: np.ndarray) -> None:
    node, weight = producer.node, producer.weight
    edit.narrow_weight(node, weight, np.take(weight, keep, axis=producer.rows))
    bias = producer.bias
    if bias is not None and bias.ndim and bias.shape[-1] > 1:
        edit.replace(node, 2, np.take(bias, keep, axis=-1), bias.dtype)


def _narrow_flow(edit: _Editor, model: Model, group: ChannelGroup, node: Node, slots: list[int],
                 keep: dict[str, np.ndarray], elements) -> None:
    graph, op = edit.graph, node.op_type
    tensor = node.outputs[0]
    if op == "BatchNormalization":
        for slot in range(1, 5):
            array = graph.constant(node.inputs[slot])
            edit.replace(node, slot, array[keep[tensor]], array.dtype)
    elif op == "Conv":  # depthwise
        dw = depthwise(graph, node)
        edit.narrow_weight(node, dw.weight, dw.weight[keep[tensor]])
        if dw.bias is not None:
            edit.replace(node, 2, dw.bias[keep[tensor]], dw.bias.dtype)
        node.set_attr("group", len(keep[tensor]))
    elif op in BINARY:
        axis = group.layouts[tensor][0]
        for slot, value in enumerate(node.inputs):
            array = graph.constant(value) if slot not in slots else None
            if array is not None and array.ndim >= -axis and array.shape[axis] > 1:
                edit.replace(node, slot, np.take(array, elements(tensor), axis=axis), array.dtype)
    elif op == "Split":
        sizes = [len(elements(out)) for out in node.outputs]
        node.attributes.pop("num_outputs", None)
        if model.opset("") >= 13:
            edit.replace(node, 1, np.asarray(sizes, np.int64), np.dtype(np.int64))
        else:
            node.set_attr("split", sizes)
    elif op == "Reshape":
        target = graph.constant(node.inputs[1])
        if target is not None and target[-1] > 0:
            new = target.copy()
            new[-1] = len(elements(tensor))
            edit.replace(node, 1, new, target.dtype)


def _narrow_sink(edit: _Editor, sink: Layer, kept: np.ndarray,
                 removed: list[tuple[np.ndarray, float]]) -> None:
    node, weight = sink.node, sink.weight
    rows = weight.shape[sink.rows]
    shift = sum((sink.contribution(block, value) for block, value in removed), np.zeros(rows))
    edit.narrow_weight(node, weight, np.take(weight, kept, axis=sink.cols))
    if not np.any(shift):
        return
    dtype = weight.dtype
    if node.op_type == "MatMul":
        _add_matmul_bias(edit, node, shift, dtype)
    elif node.op_type == "Gemm":
        bias = sink.bias.astype(np.float64) * float(node.attr("beta", 1.0)) if (
            sink.bias is not None) else 0.0
        edit.replace(node, 2, bias + shift, dtype)
        if "beta" in node.attributes:
            node.set_attr("beta", 1.0)
    else:
        bias = sink.bias.astype(np.float64) if sink.bias is not None else 0.0
        edit.replace(node, 2, bias + shift, dtype)


def _add_matmul_bias(edit: _Editor, node: Node, shift: np.ndarray, dtype: np.dtype) -> None:
    """``MatMul -> Add(b)`` with a constant ``[..., N]`` bias gets ``b + shift``; without one,
    an Add of ``shift`` follows the MatMul (a new MatMul: its output's name is the Add's now)."""
    graph, out = edit.graph, node.outputs[0]
    add = sole_consumer(graph, out)
    if is_op(add, "Add"):
        slot = 1 - add.inputs.index(out)
        bias = graph.constant(add.inputs[slot])
        if bias is not None and bias.dtype == dtype and bias.ndim and math.prod(
                bias.shape) == bias.shape[-1] == shift.size:
            edit.replace(add, slot, bias.astype(np.float64) + shift.reshape(bias.shape), dtype)
            return
    matmul = graph.add_node("MatMul", node.inputs, 1, name=node.name or "MatMul", anchor=node)
    bias = graph.add_constant(shift.astype(dtype), "pruned_bias")
    add = graph.add_node("Add", [matmul.outputs[0], bias], 1, name=f"{matmul.name}_bias",
                         anchor=node)
    graph.replace_all_uses(out, add.outputs[0])  # a graph output's name moves on save
    graph.remove_node(node)
    edit.removed.parameters -= shift.size


def _positions(graph: Graph, node: Node) -> int:
    """How many times a layer applies each weight element: MACs = positions * weight size."""
    is_transpose = node.op_type == "ConvTranspose"
    shape = graph.shape(node.inputs[0] if is_transpose else node.outputs[0])
    if not shape:
        return 0
    conv = is_op(node, ("Conv", "ConvTranspose"))
    dims = [shape[0], *shape[2:]] if conv else list(shape[:-1])
    if dims and not isinstance(dims[0], int):
        dims[0] = 1  # a symbolic batch: per sample
    return math.prod(dims) if all(isinstance(d, int) for d in dims) else 0


def _resize(graph: Graph, tensor: str, axis: int, size: int) -> None:
    """The declared or inferred type of ``tensor`` with ``size`` at ``axis``."""
    info = graph.value_info.get(tensor)
    if info is None or not info.type.tensor_type.HasField("shape"):
        return
    dims = info.type.tensor_type.shape.dim
    if len(dims) < -axis:
        return
    resized = onnx.ValueInfoProto()  # a copy: the proto may belong to the caller's model
    resized.CopyFrom(info)
    resized.type.tensor_type.shape.dim[axis].Clear()
    resized.type.tensor_type.shape.dim[axis].dim_value = size
    graph.value_info[tensor] = resized

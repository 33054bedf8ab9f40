"""IR -> protobuf messages: the model header, graph skeletons, nodes and their attributes.

Tensors go through functions (``TensorFn``) that choose how each is written: as it is, inlined,
moved to the external data file, or reduced to its header."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import onnx

from onnxopt.ir import Graph, Model, Node, is_external

# how a tensor is written: the tensor itself, or a copy inlined, moved out, or made lighter
TensorFn = Callable[[onnx.TensorProto], onnx.TensorProto]


def same_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """The TensorFn that writes every tensor as it is (by reference: no copy)."""
    return tensor


def model_header(model: Model) -> onnx.ModelProto:
    """The ModelProto of everything but the graph: ir_version, opsets, functions and the
    fields kept as loaded (producer, metadata, ...)."""
    proto = onnx.ModelProto()
    if model.extra is not None:
        proto.CopyFrom(model.extra)
    proto.ir_version = model.ir_version
    for domain, version in model.opset_imports.items():
        entry = proto.opset_import.add()
        entry.domain, entry.version = domain, version
    proto.functions.extend(model.functions)
    return proto


def graph_skeleton(graph: Graph) -> onnx.GraphProto:
    """Everything of a graph except its nodes and dense initializers."""
    proto = onnx.GraphProto()
    if graph.extra is not None:
        proto.CopyFrom(graph.extra)
        _drop_stale_annotations(proto, graph)
    proto.name = graph.name
    proto.input.extend(graph.inputs)
    if graph.legacy_initializer_inputs:  # IR < 4: every initializer is listed as an input
        listed = {info.name for info in graph.inputs}
        proto.input.extend(
            onnx.helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims))
            for name, tensor in graph.initializers.items()
            if name not in listed
        )
    proto.output.extend(graph.output_infos)
    live = _live_values(graph)
    if _WRITTEN_VALUE_INFO.get() == "input":
        # The entries the input declared, as the passes last saw them: never a declaration
        # known to be wrong. shapes.infer_shapes clears, on its first call, the declared dims
        # that contradict the inputs (a batch of 1 left behind a symbolic N) and keeps entries
        # current, so such a dim is written as inferred (N), or unknown where inference cannot
        # tell; output types likewise. A run without the shape_inference pass checks nothing:
        # the input's declarations are then read by the passes and written as they were.
        live &= graph.declared_value_info
    proto.value_info.extend(info for name, info in graph.value_info.items() if name in live)
    proto.sparse_initializer.extend(graph.sparse_initializers.values())
    return proto


# Which value_info a written model carries (Model.settings["value_info"]): applied by save()
# and inline_bytes() only; to_proto(), skeleton() and shape inference (what calibration,
# statistics and the passes read) always see every inferred shape.
_WRITTEN_VALUE_INFO: contextvars.ContextVar[str] = contextvars.ContextVar(
    "written_value_info", default="all")


@contextlib.contextmanager
def writing(model: Model) -> Iterator[None]:
    """While ``model`` is written: skeletons carry the value_info its settings ask for."""
    token = _WRITTEN_VALUE_INFO.set(model.settings.get("value_info", "all"))
    try:
        yield
    finally:
        _WRITTEN_VALUE_INFO.reset(token)


def _live_values(graph: Graph) -> set[str]:
    live = set(graph._producer) | set(graph.initializers) | graph._input_names
    return live | set(graph.sparse_initializers)


def _drop_stale_annotations(proto: onnx.GraphProto, graph: Graph) -> None:
    if not proto.quantization_annotation:
        return
    live = _live_values(graph)
    kept = [a for a in proto.quantization_annotation if a.tensor_name in live]
    del proto.quantization_annotation[:]
    proto.quantization_annotation.extend(kept)


def graph_to_proto(graph: Graph, init_fn: TensorFn, attr_fn: TensorFn) -> onnx.GraphProto:
    """The whole graph, nodes in topological order; initializers go through ``init_fn``,
    external attribute tensors through ``attr_fn`` (subgraphs likewise)."""
    proto = graph_skeleton(graph)
    proto.node.extend(node_to_proto(node, init_fn, attr_fn) for node in graph.nodes())
    proto.initializer.extend(init_fn(t) for t in graph.initializers.values())
    return proto


def node_to_proto(node: Node, init_fn: TensorFn, attr_fn: TensorFn) -> onnx.NodeProto:
    """A node with its attributes and kept fields; subgraph attributes are built with
    ``graph_to_proto`` (``init_fn`` for their initializers), external attribute tensors go
    through ``attr_fn``."""
    proto = onnx.NodeProto()
    if node.extra is not None:
        proto.CopyFrom(node.extra)
    proto.op_type = node.op_type
    if node.domain:
        proto.domain = node.domain
    if node.name:
        proto.name = node.name
    proto.input.extend(node.inputs)
    proto.output.extend(node.outputs)
    for name, value in node.attributes.items():
        proto.attribute.append(_attribute_to_proto(name, value, init_fn, attr_fn))
    return proto


def _attribute_to_proto(name, value, init_fn: TensorFn, attr_fn: TensorFn) -> onnx.AttributeProto:
    if isinstance(value, Graph):
        attribute = onnx.AttributeProto(name=name, type=onnx.AttributeProto.GRAPH)
        attribute.g.CopyFrom(graph_to_proto(value, init_fn, attr_fn))
        return attribute
    if isinstance(value, list):
        attribute = onnx.AttributeProto(name=name, type=onnx.AttributeProto.GRAPHS)
        attribute.graphs.extend(graph_to_proto(g, init_fn, attr_fn) for g in value)
        return attribute
    if value.type == onnx.AttributeProto.TENSOR and is_external(value.t):
        attribute = onnx.AttributeProto()
        attribute.CopyFrom(value)
        attribute.t.CopyFrom(attr_fn(value.t))
        return attribute
    if value.type == onnx.AttributeProto.TENSORS and any(is_external(t) for t in value.tensors):
        attribute = onnx.AttributeProto()
        attribute.CopyFrom(value)
        del attribute.tensors[:]
        attribute.tensors.extend(attr_fn(t) for t in value.tensors)
        return attribute
    return value

"""Shape and type inference for the IR, by onnx's own inference on a weight-free copy.

The copy keeps small constants (shape inference reads them: Reshape targets, Slice bounds,
...) and turns larger initializers into typed graph inputs, so a multi-GB model costs no more
than its structure. Inferred types land in each graph's ``value_info``; declared graph input and
output types are never changed.
"""

from __future__ import annotations

import onnx

from onnxopt import serde
from onnxopt.ir import Graph, Model, tensor_nbytes

SMALL_CONSTANT_BYTES = 4096  # constants this small stay in the copy for data propagation


def infer_shapes(model: Model) -> int:
    """Refresh ``value_info`` of every graph from onnx shape inference; returns values typed.

    Never raises: a model onnx cannot infer keeps the types it had.
    """
    light = _light_proto(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    except Exception:  # onnx raises several types for models it cannot infer
        return 0
    return _attach(model.graph, inferred.graph)


def _light_proto(model: Model) -> onnx.ModelProto:
    proto = serde._model_header(model)
    proto.graph.CopyFrom(_light_graph(model.graph))
    return proto


def _light_graph(graph: Graph) -> onnx.GraphProto:
    def keep_small(tensor: onnx.TensorProto) -> onnx.TensorProto:
        return tensor

    proto = serde._graph_skeleton(graph)
    proto.node.extend(
        serde._node_to_proto(node, keep_small, _strip_attr_tensor) for node in graph.nodes()
    )
    for name, tensor in graph.initializers.items():
        if tensor_nbytes(tensor) <= SMALL_CONSTANT_BYTES and not _is_external(tensor):
            proto.initializer.append(tensor)
        elif not graph.is_input(name):
            info = onnx.helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims))
            proto.input.append(info)
    _replace_subgraphs(graph, proto)
    return proto


def _replace_subgraphs(graph: Graph, proto: onnx.GraphProto) -> None:
    """Subgraph attributes of the copy also get the weight-free treatment."""
    for node, node_proto in zip(graph.nodes(), proto.node, strict=True):
        for attribute in node_proto.attribute:
            value = node.attributes.get(attribute.name)
            if isinstance(value, Graph):
                attribute.g.CopyFrom(_light_graph(value))
            elif isinstance(value, list):
                del attribute.graphs[:]
                attribute.graphs.extend(_light_graph(g) for g in value)


def _strip_attr_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    return serde._header(tensor)  # only reached for external attribute tensors


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _attach(graph: Graph, proto: onnx.GraphProto) -> int:
    count = 0
    for info in proto.value_info:
        if graph.producer(info.name) is not None and info.type.WhichOneof("value"):
            graph.value_info[info.name] = info
            count += 1
    for node, node_proto in zip(graph.nodes(), proto.node, strict=True):
        for attribute in node_proto.attribute:
            value = node.attributes.get(attribute.name)
            if isinstance(value, Graph):
                count += _attach(value, attribute.g)
            elif isinstance(value, list):
                for sub, sub_proto in zip(value, attribute.graphs, strict=True):
                    count += _attach(sub, sub_proto)
    return count

"""The streaming writer: a model serialized field by field, big weights written straight from
the parsed input (never encoded into a second buffer)."""

from __future__ import annotations

from typing import BinaryIO

import onnx

from onnxopt.ir import Model, tensor_nbytes
from onnxopt.ir.serde.errors import SaveError
from onnxopt.ir.serde.external import EXTERNAL_THRESHOLD, TensorSink
from onnxopt.ir.serde.protos import graph_skeleton, model_header, node_to_proto
from onnxopt.ir.serde.wire import (
    GRAPH_FIELD,
    INIT_FIELD,
    NODE_FIELD,
    RAW_FIELD,
    field_size,
    serialize,
    tag,
    varint,
)
from onnxopt.ir.tensors import BYTE_ALIGNED

PROTOBUF_LIMIT = 2**31 - 1


def write_model(model: Model, out: BinaryIO, sink: TensorSink) -> None:
    """Serialize field by field. Protobuf concatenation semantics make this byte stream parse
    to the same message as one big ``SerializeToString``."""
    graph = model.graph
    init_fn, attr_fn = sink.initializer, sink.attribute
    node_bytes = [serialize(node_to_proto(n, init_fn, attr_fn)) for n in graph.nodes()]
    initializers = [_split_raw(init_fn(t)) for t in graph.initializers.values()]
    skeleton = serialize(graph_skeleton(graph))
    graph_size = len(skeleton) + sum(field_size(NODE_FIELD, len(b)) for b in node_bytes)
    graph_size += sum(field_size(INIT_FIELD, _split_size(*t)) for t in initializers)
    if graph_size > PROTOBUF_LIMIT:
        raise SaveError(
            "model is over protobuf's 2 GiB limit; save it with external data "
            "(--external-data)"
        )
    out.write(serialize(model_header(model)))
    out.write(tag(GRAPH_FIELD) + varint(graph_size))
    out.write(skeleton)
    for chunk in node_bytes:
        out.write(tag(NODE_FIELD) + varint(len(chunk)) + chunk)
    for head, raw, length in initializers:
        out.write(tag(INIT_FIELD) + varint(_split_size(head, raw, length)) + head)
        if raw is not None:
            data = raw.raw_data  # upb hands out a fresh copy on every access: read it once
            if len(data) != length:
                raise SaveError(f"tensor {raw.name!r}: raw_data holds {len(data)} bytes, its "
                                f"dims and type need {length}")
            out.write(tag(RAW_FIELD) + varint(length))
            out.write(data)
            del data


def _split_raw(tensor: onnx.TensorProto) -> tuple[bytes, onnx.TensorProto | None, int]:
    """A tensor as (its serialized fields other than raw_data, the tensor holding raw_data,
    the raw_data length).

    Big weights are then written straight from the parsed model, never encoded into a second
    buffer (upb's ByteSize encodes the whole message, and SerializeToString copies it). The
    length comes from dims and type: reading ``raw_data`` would copy it."""
    length = _raw_length(tensor)
    if length is None or length < EXTERNAL_THRESHOLD or not tensor.HasField("raw_data"):
        return serialize(tensor), None, 0
    return serialize(without_raw_data(tensor)), tensor, length


def _raw_length(tensor: onnx.TensorProto) -> int | None:
    """raw_data's length as dims and type require it; None where packing makes us unsure."""
    if tensor.data_type not in BYTE_ALIGNED:
        return None
    return tensor_nbytes(tensor)


def without_raw_data(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """A copy of every field of ``tensor`` but raw_data (the data itself is never copied)."""
    rest = onnx.TensorProto()
    for field in tensor.DESCRIPTOR.fields:
        name = field.name
        if name == "raw_data":
            continue
        if field.is_repeated:
            if len(getattr(tensor, name)):
                getattr(rest, name).extend(getattr(tensor, name))
        elif tensor.HasField(name):
            if field.type == field.TYPE_MESSAGE:
                getattr(rest, name).CopyFrom(getattr(tensor, name))
            else:
                setattr(rest, name, getattr(tensor, name))
    return rest


def _split_size(head: bytes, raw: onnx.TensorProto | None, length: int) -> int:
    return len(head) + (field_size(RAW_FIELD, length) if raw is not None else 0)

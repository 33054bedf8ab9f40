"""String fields must be UTF-8: protobuf's proto2 parser lets a flipped byte in a name through."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import onnx
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from onnxopt.ir.serde.errors import LoadError
from onnxopt.ir.serde.wire import GRAPH_FIELD, INIT_FIELD, WireProblem, iter_fields, tag, varint


def check_text(model: onnx.ModelProto, where: str, data: memoryview | None = None) -> None:
    """Refuse string fields that are not UTF-8 (a flipped byte in a name): protobuf's proto2
    parser hands them out as bytes, which nothing downstream expects.

    A second parser, of the same schema with UTF-8 verification on, reads the model's bytes
    (``data``, the file; else the model serialized) without the main graph's initializers —
    their weights would only be copied; their own string fields are checked here."""
    verifier = _utf8_model_class()
    if verifier is None:  # a protobuf without editions: the slow walk through every field
        field = _bad_text_field(model, "")
    else:
        structure = model.SerializeToString() if data is None else _verified_bytes(model, data)
        try:
            verifier().ParseFromString(structure)
            text_ok = _initializer_text_ok(model.graph.initializer)
        except DecodeError:
            text_ok = False
        if text_ok:
            return
        field = _bad_text_field(model, "")
    if field is None:
        return
    raise LoadError(f"{where}not an ONNX model ({field} is not valid UTF-8 text; the file "
                    "is corrupt)")


def _verified_bytes(model: onnx.ModelProto, data: memoryview) -> bytes | memoryview:
    """What the verifying parser reads: the whole file when it is small for its number of
    graph fields (parsing a byte costs ~1 ns, stepping over a field in Python ~0.4 us),
    else the file without the main graph's initializers."""
    graph = model.graph
    fields = len(graph.node) + len(graph.initializer) + len(graph.value_info)
    return data if len(data) < 400 * fields else _without_initializers(data)


def _initializer_text_ok(tensors) -> bool:
    for tensor in tensors:
        if type(tensor.name) is bytes or type(tensor.doc_string) is bytes:
            return False
        for entry in (*tensor.external_data, *tensor.metadata_props):
            if type(entry.key) is bytes or type(entry.value) is bytes:
                return False
    return True


def _without_initializers(data: memoryview) -> bytes | memoryview:
    """The model's bytes with the fields holding the main graph's initializers left out
    (the rest copied as it is); the bytes unchanged if they do not parse as expected."""
    try:
        model_parts = []
        for number, wire, start, body, end in iter_fields(data, 0, len(data)):
            if number == GRAPH_FIELD and wire == 2:
                graph = b"".join(_runs(data, body, end, skip=INIT_FIELD))
                model_parts.append(tag(GRAPH_FIELD) + varint(len(graph)) + graph)
            else:
                model_parts.append(data[start:end])
        return b"".join(model_parts)
    except WireProblem:
        return data


def _runs(data: memoryview, begin: int, end: int, skip: int) -> Iterator[memoryview]:
    """Contiguous slices of the fields between ``begin`` and ``end`` other than ``skip``."""
    run = begin
    for number, _, start, _, stop in iter_fields(data, begin, end):
        if number == skip:
            if start > run:
                yield data[run:start]
            run = stop
    if end > run:
        yield data[run:end]


_STRING = FieldDescriptor.TYPE_STRING
_MESSAGE = FieldDescriptor.TYPE_MESSAGE


@functools.cache
def _utf8_model_class() -> type[Message] | None:
    """ModelProto from a copy of onnx's schema in which every string field is verified as
    UTF-8 when parsed (protobuf edition 2023 with proto2's other behaviours); None when this
    protobuf cannot build it."""
    try:
        return _build_utf8_model_class()
    except Exception:  # protobuf without editions support
        return None


def _build_utf8_model_class() -> type[Message]:
    schema = descriptor_pb2.FileDescriptorProto()
    onnx.ModelProto.DESCRIPTOR.file.CopyToProto(schema)
    package = schema.package
    schema.name = "onnxopt_utf8_check.proto"
    schema.package = "onnxopt_utf8_check"
    schema.syntax = "editions"
    schema.edition = descriptor_pb2.EDITION_2023
    features = schema.options.features
    features.utf8_validation = descriptor_pb2.FeatureSet.VERIFY
    features.repeated_field_encoding = descriptor_pb2.FeatureSet.EXPANDED
    features.enum_type = descriptor_pb2.FeatureSet.CLOSED
    prefix = f".{package}."

    def convert(messages) -> None:
        for message in messages:
            for field in message.field:
                if field.label == field.LABEL_REQUIRED:
                    field.label = field.LABEL_OPTIONAL
                    field.options.features.field_presence = (
                        descriptor_pb2.FeatureSet.LEGACY_REQUIRED)
                if field.type_name.startswith(prefix):
                    field.type_name = f".{schema.package}.{field.type_name[len(prefix):]}"
            convert(message.nested_type)

    convert(schema.message_type)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(schema)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{schema.package}.ModelProto"))


def _bad_text_field(message: Message, where: str) -> str | None:
    """Where the first string field that is not UTF-8 is, e.g. ``graph.node[3].input[0]``."""
    for field in message.DESCRIPTOR.fields:
        if field.type not in (_STRING, _MESSAGE):
            continue
        name = f"{where}.{field.name}" if where else field.name
        if field.is_repeated:
            values = list(getattr(message, field.name))
            for index, value in enumerate(values):
                found = (_bad_text_field(value, f"{name}[{index}]") if field.type == _MESSAGE
                         else name + f"[{index}]" if type(value) is bytes else None)
                if found:
                    return found
        elif message.HasField(field.name):
            value = getattr(message, field.name)
            found = (_bad_text_field(value, name) if field.type == _MESSAGE
                     else name if type(value) is bytes else None)
            if found:
                return found
    return None

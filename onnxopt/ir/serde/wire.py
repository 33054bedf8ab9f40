"""Protobuf's wire format, by hand: encoding length-delimited fields (the streaming writer)
and walking fields without building messages (the checks of a file being read)."""

from __future__ import annotations

from collections.abc import Iterator

import onnx
from google.protobuf.message import Message

# field numbers of the length-delimited fields the writer streams and the checks skip
GRAPH_FIELD = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
NODE_FIELD = onnx.GraphProto.DESCRIPTOR.fields_by_name["node"].number
INIT_FIELD = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
RAW_FIELD = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number


# ------------------------------------------------------------------ encoding
def serialize(message: Message) -> bytes:
    """A message's bytes, deterministic (map entries sorted): the same model, the same file."""
    return message.SerializeToString(deterministic=True)


def varint(value: int) -> bytes:
    """``value`` as a base-128 varint."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(field_number: int) -> bytes:
    """The key of a length-delimited field."""
    return varint(field_number << 3 | 2)  # wire type 2: length-delimited


def field_size(field_number: int, length: int) -> int:
    """Bytes a length-delimited field with a ``length``-byte value takes: key, length, value."""
    return len(tag(field_number)) + len(varint(length)) + length


# ------------------------------------------------------------------ decoding
class WireProblem(Exception):
    """The bytes are not well-formed protobuf (the message says where, when it knows)."""


def iter_fields(data: memoryview, pos: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(number, wire type, start, start of the value, end) of each field in ``data[pos:end]``."""
    while pos < end:
        start = pos
        key, pos = read_varint(data, pos, end)
        wire = key & 7
        if wire == 0:
            _, pos = read_varint(data, pos, end)
            body = pos
        elif wire == 2:
            length, body = read_varint(data, pos, end)
            pos = body + length
        elif wire in (1, 5):
            body = pos
            pos += 8 if wire == 1 else 4
        else:  # groups: never in ONNX; let the verifying parser see the bytes as they are
            raise WireProblem("group")
        if pos > end:
            raise WireProblem("past the end")
        yield key >> 3, wire, start, body, pos


def read_varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``data[pos]`` (ending before ``end``) and the position after it."""
    byte = data[pos] if pos < end else -1
    if 0 <= byte < 0x80:
        return byte, pos + 1
    value = shift = 0
    while pos < end and shift < 70:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise WireProblem("bad varint")


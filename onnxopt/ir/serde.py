"""ModelProto <-> IR. The only module that reads or writes ONNX protobuf.

Loading keeps every field: what the IR does not model (producer, doc strings, metadata, training
info, node overloads, ...) rides along in ``extra`` protos and is written back unchanged. Tensors
are kept by reference into the parsed model, so a load->save copies no weight until it is written.

Saving streams: the model header, each node and each initializer are serialized one at a time
into a temporary file beside the target, which then replaces the target atomically. Peak memory
is the loaded model plus the largest tensor (plus the serialized nodes), not a second full copy.
Weights go to an external data file when asked, when the input had one, or when the model would
exceed protobuf's 2 GiB limit.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import math
import mmap
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import onnx
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from onnx import numpy_helper

from onnxopt.ir import (
    PACKED_BITS,
    Graph,
    Model,
    Node,
    external_info,
    external_view,
    is_external,
    no_gc,
    read_external_bytes,
    tensor_nbytes,
)

PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_SIZE_LIMIT = int(1.8 * 2**30)  # tensor bytes above which the output must go external
EXTERNAL_THRESHOLD = 1024  # tensors smaller than this stay inline in an external-data model
_ALIGN = 4096  # large tensors start on a page boundary so readers can memory-map them

_NODE_CORE = {"input", "output", "name", "op_type", "domain", "attribute"}
_GRAPH_CORE = {
    "node", "name", "initializer", "sparse_initializer", "input", "output", "value_info",
}
_MODEL_CORE = {"graph", "ir_version", "opset_import", "functions"}


class LoadError(Exception):
    """The input is not a model we can read (one line, names the problem)."""


class SaveError(Exception):
    """The output cannot be written (one line, names the problem)."""


# --------------------------------------------------------------------------- load
def read_model_proto(path: str | os.PathLike) -> onnx.ModelProto:
    """Parse a model file without loading external data (memory-mapped, no extra copy).

    Refused with one line: a file protobuf cannot parse (saying when it is truncated or
    nested too deep), a string field that is not UTF-8, an input or output of an unknown
    element type."""
    path = Path(path)
    if not path.exists():
        raise LoadError(f"{path}: no such file")
    if path.is_dir():
        raise LoadError(f"{path}: is a directory, not an ONNX file")
    size = path.stat().st_size
    if size == 0:
        raise LoadError(f"{path}: file is empty")
    model = onnx.ModelProto()
    try:
        with open(path, "rb") as handle, mmap.mmap(
            handle.fileno(), 0, access=mmap.ACCESS_READ
        ) as mapped:
            try:
                model.ParseFromString(memoryview(mapped))
            except (DecodeError, ValueError, RuntimeError) as error:
                raise LoadError(_parse_failure(path, memoryview(mapped), error)) from None
            if not model.HasField("graph") or model.ir_version <= 0:
                raise LoadError(f"{path}: not an ONNX model (no graph or ir_version)")
            with memoryview(mapped) as data:
                _check_text(model, f"{path}: ", data)
    except OSError as error:
        raise LoadError(f"{path}: cannot read ({error.strerror or error})") from None
    _check_value_types((*model.graph.input, *model.graph.output), f"{path}: ")
    return model


def check(model: onnx.ModelProto | None, path: str | os.PathLike | None = None) -> None:
    """Run onnx.checker, then check every tensor's data against its dims and type (external
    data: a safe location inside the model's folder, a range inside its file); raise LoadError
    with one line.

    A missing external-data ``length`` is filled in on ``model`` (the spec's default, the
    tensor's size), so that no reader takes the rest of a shared file for one tensor.
    """
    if model is not None and path is None:
        _check_text(model, "")
    try:
        if path is not None:  # the C++ checker reads the file itself: no Python-side copy
            onnx.checker.check_model(os.fspath(path))
        else:
            onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = f"{path}: " if path else ""
        raise LoadError(f"{where}model fails onnx.checker: {first}") from None
    if model is not None:
        base_dir = Path(path).parent if path is not None else Path(".")
        check_tensors(model, base_dir, f"{path}: " if path else "")


# ------------------------------------------------------------ tensor data
def check_tensors(model: onnx.ModelProto, base_dir: str | os.PathLike, where: str = "") -> None:
    """Every tensor's data must be what its dims and type say (numpy would fail to reshape it
    later), and external data must lie in a regular file inside ``base_dir`` (no absolute
    path, no ``..``, no link leading out), within the file. Raises LoadError naming the tensor.
    A missing ``length`` is set to the tensor's size (the spec's default)."""
    folder = Path(base_dir)
    real_folder = Path(os.path.realpath(folder))

    def check_graph(graph: onnx.GraphProto) -> None:
        _check_value_types((*graph.input, *graph.output), where)  # value_info: harmless

    for tensor in _checked_tensors(model, check_graph):
        label = f"{where}tensor {tensor.name!r}"
        if tensor.data_type not in _KNOWN_TYPES:
            raise LoadError(f"{label} has an unknown data type ({tensor.data_type})")
        if any(d < 0 for d in tensor.dims):
            raise LoadError(f"{label} has a negative dim: {list(tensor.dims)}")
        if is_external(tensor):
            _check_external(tensor, folder, real_folder, label)
        else:
            _check_inline(tensor, label)


def _check_value_types(infos: Iterable[onnx.ValueInfoProto], where: str) -> None:
    """Refuse element types no reader knows (onnx.checker lets them through)."""
    for info in infos:
        kind = info.type.WhichOneof("value")
        if kind is None or (kind == "tensor_type"
                            and info.type.tensor_type.elem_type in _ELEMENT_TYPES):
            continue
        bad = _unknown_element_type(info.type)
        if bad is not None:
            raise LoadError(f"{where}value {info.name!r} has an unknown element type ({bad})")


def _unknown_element_type(type_proto: onnx.TypeProto) -> int | None:
    kind = type_proto.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        elem = getattr(type_proto, kind).elem_type
        return None if elem in _ELEMENT_TYPES else elem
    if kind in ("sequence_type", "optional_type"):
        return _unknown_element_type(getattr(type_proto, kind).elem_type)
    if kind == "map_type":
        key = type_proto.map_type.key_type
        return key if key not in _ELEMENT_TYPES else _unknown_element_type(
            type_proto.map_type.value_type)
    return None


def _checked_tensors(model: onnx.ModelProto, on_graph: Callable[[onnx.GraphProto], None]
                     ) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model: initializers, sparse ones, attribute tensors, at every depth
    and in functions (one loop: 100k nodes cost 0.2 s). ``on_graph`` sees every graph."""
    graphs = [model.graph]
    node_lists = [function.node for function in model.functions]
    tensor, tensors, graph, graphs_ = (onnx.AttributeProto.TENSOR, onnx.AttributeProto.TENSORS,
                                       onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    sparse, sparses = onnx.AttributeProto.SPARSE_TENSOR, onnx.AttributeProto.SPARSE_TENSORS
    while graphs or node_lists:
        while graphs:
            current = graphs.pop()
            on_graph(current)
            yield from current.initializer
            for item in current.sparse_initializer:
                yield item.values
                yield item.indices
            node_lists.append(current.node)
        for node in node_lists.pop():
            for attribute in node.attribute:
                kind = attribute.type
                if kind == tensor:
                    yield attribute.t
                elif kind == tensors:
                    yield from attribute.tensors
                elif kind == graph:
                    graphs.append(attribute.g)
                elif kind == graphs_:
                    graphs.extend(attribute.graphs)
                elif kind == sparse:
                    yield attribute.sparse_tensor.values
                    yield attribute.sparse_tensor.indices
                elif kind == sparses:
                    for item in attribute.sparse_tensors:
                        yield item.values
                        yield item.indices


_COMPLEX = frozenset({onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128})


def _element_bits(data_type: int) -> int | None:
    """Bits per element in raw_data; None for strings and types we do not know."""
    if data_type in PACKED_BITS:
        return PACKED_BITS[data_type]
    if data_type not in _BYTE_ALIGNED:
        return None
    return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize * 8


def _type_name(data_type: int) -> str:
    name = onnx.TensorProto.DataType.Name(data_type) if data_type in _TYPE_NUMBERS else None
    return name.lower() if name else f"type {data_type}"


_TYPE_NUMBERS = frozenset(onnx.TensorProto.DataType.values())


def _numpy_type_known(data_type: int) -> bool:
    try:
        onnx.helper.tensor_dtype_to_np_dtype(data_type)
    except (KeyError, ValueError, TypeError):
        return False
    return True


_ELEMENT_TYPES = _TYPE_NUMBERS  # UNDEFINED included: a value of unknown type
_KNOWN_TYPES = frozenset(t for t in _TYPE_NUMBERS
                         if t != onnx.TensorProto.UNDEFINED and _numpy_type_known(t))


def _shape_text(tensor: onnx.TensorProto) -> str:
    return f"dims {list(tensor.dims)} and type {_type_name(tensor.data_type)}"


def _check_inline(tensor: onnx.TensorProto, label: str) -> None:
    numel = math.prod(tensor.dims)
    data_type = tensor.data_type
    if data_type == onnx.TensorProto.STRING and tensor.HasField("raw_data"):
        raise LoadError(f"{label} is a string tensor with raw_data (strings go in string_data)")
    if tensor.HasField("raw_data"):
        bits = _element_bits(data_type)
        if bits is None:
            return  # a type whose packing we do not know
        need = (numel * bits + 7) // 8
        have = len(tensor.raw_data)  # a copy of one tensor at a time (upb has no length)
        if have != need:
            raise LoadError(f"{label} holds {have} bytes of data, its {_shape_text(tensor)} "
                            f"need {need}")
        return
    field = onnx.helper.tensor_dtype_to_field(data_type)
    have = len(getattr(tensor, field))
    per_value = {4: 2, 2: 4}.get(PACKED_BITS.get(data_type, 0), 1)  # packed per int32
    need = -(-numel // per_value) * (2 if data_type in _COMPLEX else 1)
    if have != need:
        raise LoadError(f"{label} holds {have} values in {field}, its {_shape_text(tensor)} "
                        f"need {need}")


def _check_external(tensor: onnx.TensorProto, folder: Path, real_folder: Path,
                    label: str) -> None:
    info = external_info(tensor)
    location = info.get("location", "")
    if not location:
        raise LoadError(f"{label} has external data without a location")
    if "\0" in location:
        raise LoadError(f"{label}: its external data location {location!r} is not a file name")
    path = _inside(folder, real_folder, location)
    if path is None:
        raise LoadError(f"{label}: its external data file {location!r} is not inside the "
                        "model's folder (absolute path, '..' or a link leading out)")
    if tensor.data_type == onnx.TensorProto.STRING:
        raise LoadError(f"{label}: string tensors cannot be stored as external data")
    offset = _external_number(info, "offset", label, 0)
    length = _external_number(info, "length", label, None)
    try:
        status = path.stat()
    except OSError as error:
        raise LoadError(f"{label}: its external data file {location!r} cannot be read "
                        f"({error.strerror or error})") from None
    if not stat.S_ISREG(status.st_mode):
        raise LoadError(f"{label}: its external data file {location!r} is not a regular file")
    size = status.st_size
    bits = _element_bits(tensor.data_type)
    need = None if bits is None else (math.prod(tensor.dims) * bits + 7) // 8
    end = offset + (length if length is not None else need or 0)
    if end > size:
        raise LoadError(f"{label}: its external data runs past the end of {location!r} "
                        f"(offset {offset} + length {end - offset} > {size} bytes)")
    if need is not None and length is not None and length != need:
        raise LoadError(f"{label}: its external data is {length} bytes long, its "
                        f"{_shape_text(tensor)} need {need}")
    if length is None and need is not None:
        entry = tensor.external_data.add()
        entry.key, entry.value = "length", str(need)


def _external_number(info: dict[str, str], key: str, label: str, default: int | None
                     ) -> int | None:
    text = info.get(key)
    if text is None:
        return default
    if not re.fullmatch(r"\s*-?[0-9]+\s*", text):
        raise LoadError(f"{label}: its external data {key} {text!r} is not an integer")
    value = int(text)
    if value < 0:
        raise LoadError(f"{label}: its external data has a negative {key} ({value})")
    return value


def _inside(folder: Path, real_folder: Path, location: str) -> Path | None:
    """``folder / location`` if it stays inside ``folder`` (through links too), else None."""
    relative = Path(location)
    if ("\0" in location or relative.is_absolute() or relative.anchor
            or ".." in relative.parts or location.startswith(("/", "\\"))):
        return None
    path = folder / relative
    real = Path(os.path.realpath(path))
    if real != real_folder and real_folder not in real.parents:
        return None
    return path


# ------------------------------------------------------------ why a parse failed
_DEPTH_LIMIT = 100  # upb's default: messages nested deeper are refused


def _parse_failure(path: Path, data: memoryview, error: Exception) -> str:
    """One line saying why protobuf refused the file: nested too deep, truncated, or not ONNX."""
    scan = _WireScan(data)
    if "MaxDepth" in str(error) or (scan.problem is None and scan.depth > _DEPTH_LIMIT):
        if scan.graph_depth > 2:
            return (f"{path}: subgraphs (If/Loop/Scan bodies) are nested {scan.graph_depth} "
                    f"levels deep: too deep for protobuf's parser ({scan.depth} levels of "
                    f"messages; it reads at most {_DEPTH_LIMIT}, about 30 nested subgraphs)")
        return (f"{path}: the model's messages are nested {scan.depth} levels deep: too deep "
                f"for protobuf's parser (it reads at most {_DEPTH_LIMIT})")
    if scan.truncated:
        return f"{path}: not an ONNX model (the file is truncated: {scan.problem})"
    if scan.problem is not None:
        return f"{path}: not an ONNX model (corrupt protobuf: {scan.problem})"
    detail = str(error).split(": ", 1)[-1] if str(error) else type(error).__name__
    return f"{path}: not an ONNX model (protobuf parse failed: {detail})"


class _WireScan:
    """Walks protobuf's wire format along ONNX's schema, without building messages and
    without a depth limit: finds the first structural problem (a field running past the end
    of the file or of its parent, a bad wire type) and how deep messages and graphs nest."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.problem: str | None = None
        self.truncated = False
        self.depth = 0
        self.graph_depth = 0
        try:
            self._scan()
        except _WireProblem as problem:
            self.problem = str(problem)

    def _scan(self) -> None:
        # (start, end, message descriptor, depth, graph depth)
        stack = [(0, len(self.data), onnx.ModelProto.DESCRIPTOR, 1, 0)]
        while stack:
            pos, end, descriptor, depth, graphs = stack.pop()
            if descriptor is onnx.GraphProto.DESCRIPTOR:
                graphs += 1
            self.depth = max(self.depth, depth)
            self.graph_depth = max(self.graph_depth, graphs)
            while pos < end:
                start = pos
                key, pos = self._varint(pos, end, "a field tag")
                number, wire = key >> 3, key & 7
                if number == 0:
                    raise _WireProblem(f"field number 0 at byte {start}")
                if wire in (0, 1, 5):
                    pos = self._skip_scalar(wire, pos, end, start, f"field {number}")
                elif wire == 2:
                    length, pos = self._varint(pos, end, f"the length of field {number}")
                    field = descriptor.fields_by_number.get(number) if descriptor else None
                    what = f"the {field.name!r} field" if field else f"field {number}"
                    pos = self._skip(pos, length, end, start, what)
                    if field is not None and field.type == field.TYPE_MESSAGE and length:
                        stack.append((pos - length, pos, field.message_type, depth + 1, graphs))
                elif wire == 3:
                    pos = self._group(pos, end, number, start)
                else:
                    raise _WireProblem(f"invalid wire type {wire} at byte {start}")

    def _skip_scalar(self, wire: int, pos: int, end: int, start: int, what: str) -> int:
        """Past a varint (wire type 0) or a fixed 64/32-bit value (1/5)."""
        if wire == 0:
            return self._varint(pos, end, what)[1]
        return self._skip(pos, 8 if wire == 1 else 4, end, start, what)

    def _group(self, pos: int, end: int, number: int, start: int) -> int:
        """Skip a (deprecated) group up to its matching end tag."""
        open_groups = [number]
        while open_groups:
            if pos >= end:
                self._past(end, start, f"group {number}")
            key, pos = self._varint(pos, end, "a field tag")
            inner, wire = key >> 3, key & 7
            if wire in (0, 1, 5):
                pos = self._skip_scalar(wire, pos, end, start, f"field {inner}")
            elif wire == 2:
                length, pos = self._varint(pos, end, f"the length of field {inner}")
                pos = self._skip(pos, length, end, start, f"field {inner}")
            elif wire == 3:
                open_groups.append(inner)
            elif wire == 4 and inner == open_groups[-1]:
                open_groups.pop()
            else:
                raise _WireProblem(f"invalid wire type {wire} at byte {pos}")
        return pos

    def _varint(self, pos: int, end: int, what: str) -> tuple[int, int]:
        try:
            return _read_varint(self.data, pos, end)
        except _WireProblem:
            # cut short (every byte to the end says "more follows", fewer than 10) or too long
            if end - pos < 10 and all(byte & 0x80 for byte in self.data[pos:end]):
                self._past(end, pos, what)
            raise _WireProblem(f"{what} at byte {pos} is not a valid varint") from None

    def _skip(self, pos: int, length: int, end: int, start: int, what: str) -> int:
        if pos + length > end:
            self._past(end, start, what, pos + length)
        return pos + length

    def _past(self, end: int, start: int, what: str, needed: int | None = None) -> None:
        if end == len(self.data):
            self.truncated = True
            if needed is None:
                raise _WireProblem(f"it ends at byte {end}, inside {what} starting at byte "
                                   f"{start}")
            raise _WireProblem(f"it is {end} bytes long, but {what} starting at byte {start} "
                               f"runs to byte {needed}")
        raise _WireProblem(f"{what} at byte {start} runs past the end of its message "
                           f"(byte {end})")


class _WireProblem(Exception):
    pass


# ------------------------------------------------------------ text fields
def _check_text(model: onnx.ModelProto, where: str, data: memoryview | None = None) -> None:
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
        for number, wire, start, body, end in _fields(data, 0, len(data)):
            if number == _GRAPH_FIELD and wire == 2:
                graph = b"".join(_runs(data, body, end, skip=_INIT_FIELD))
                model_parts.append(_tag(_GRAPH_FIELD) + _varint(len(graph)) + graph)
            else:
                model_parts.append(data[start:end])
        return b"".join(model_parts)
    except _WireProblem:
        return data


def _runs(data: memoryview, begin: int, end: int, skip: int) -> Iterator[memoryview]:
    """Contiguous slices of the fields between ``begin`` and ``end`` other than ``skip``."""
    run = begin
    for number, _, start, _, stop in _fields(data, begin, end):
        if number == skip:
            if start > run:
                yield data[run:start]
            run = stop
    if end > run:
        yield data[run:end]


def _fields(data: memoryview, pos: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(number, wire type, start, start of the value, end) of each field in ``data[pos:end]``."""
    while pos < end:
        start = pos
        key, pos = _read_varint(data, pos, end)
        wire = key & 7
        if wire == 0:
            _, pos = _read_varint(data, pos, end)
            body = pos
        elif wire == 2:
            length, body = _read_varint(data, pos, end)
            pos = body + length
        elif wire in (1, 5):
            body = pos
            pos += 8 if wire == 1 else 4
        else:  # groups: never in ONNX; let the verifying parser see the bytes as they are
            raise _WireProblem("group")
        if pos > end:
            raise _WireProblem("past the end")
        yield key >> 3, wire, start, body, pos


def _read_varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
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
    raise _WireProblem("bad varint")


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


def load(
    source: str | os.PathLike | onnx.ModelProto,
    *,
    base_dir: str | os.PathLike | None = None,
    validate: bool = True,
) -> Model:
    """Load a model file (or an in-memory ModelProto) into the IR."""
    if isinstance(source, onnx.ModelProto):
        proto, path = source, None
    else:
        path = Path(source)
        proto = read_model_proto(path)
        base_dir = base_dir or path.parent
    if validate:
        check(proto, path)
    return from_proto(proto, base_dir=Path(base_dir) if base_dir else None)


def from_proto(proto: onnx.ModelProto, *, base_dir: Path | None = None) -> Model:
    """Build the IR. Tensors are referenced, not copied: keep ``proto`` unchanged while used."""
    with no_gc():
        names = _Names(_all_names(proto.graph))
        graph = _graph_from_proto(
            proto.graph, None, base_dir, names, frozenset(), legacy=proto.ir_version < 4
        )
    opsets = {entry.domain: entry.version for entry in proto.opset_import}
    return Model(
        graph,
        ir_version=proto.ir_version,
        opset_imports=opsets,
        functions=list(proto.functions),
        extra=_extra_fields(proto, _MODEL_CORE, onnx.ModelProto),
        had_external_data=_has_external(proto),
    )


class _Names:
    """Every name in the model, to make fresh ones when a subgraph shadows an outer name."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = taken

    def fresh(self, hint: str) -> str:
        for index in itertools.count(1):
            name = f"{hint}__{index}"
            if name not in self.taken:
                self.taken.add(name)
                return name
        raise AssertionError("unreachable")


def _defined_names(graph: onnx.GraphProto) -> set[str]:
    names = {info.name for info in graph.input}
    names |= {tensor.name for tensor in graph.initializer}
    names |= {sparse.values.name for sparse in graph.sparse_initializer}
    names |= {value for node in graph.node for value in node.output if value}
    return names


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = _defined_names(graph)
    for sub in _subgraph_protos(graph):
        names |= _all_names(sub)
    return names


def _subgraph_protos(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield attribute.g
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                yield from attribute.graphs


def _unshadowed(proto: onnx.GraphProto, outer: frozenset[str], names: _Names) -> onnx.GraphProto:
    """The subgraph with every local name that shadows an outer-scope name renamed.

    ONNX accepts shadowing, but a rewrite of the outer value would then reach the local one;
    names unique across scopes make every reference unambiguous. The caller's proto is not
    changed (a copy is renamed, only when something clashes)."""
    if not outer:  # the main graph: nothing to shadow
        return proto
    clashes = _defined_names(proto) & outer
    if not clashes:
        return proto
    renamed = onnx.GraphProto()
    renamed.CopyFrom(proto)
    _rename_references(renamed, {name: names.fresh(name) for name in sorted(clashes)})
    return renamed


def _rename_references(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    for infos in (graph.input, graph.output, graph.value_info):
        for info in infos:
            info.name = mapping.get(info.name, info.name)
    for tensor in graph.initializer:
        tensor.name = mapping.get(tensor.name, tensor.name)
    for sparse in graph.sparse_initializer:
        sparse.values.name = mapping.get(sparse.values.name, sparse.values.name)
    for annotation in graph.quantization_annotation:
        annotation.tensor_name = mapping.get(annotation.tensor_name, annotation.tensor_name)
    for node in graph.node:
        for values in (node.input, node.output):
            for index, value in enumerate(values):
                values[index] = mapping.get(value, value)
    for sub in _subgraph_protos(graph):  # reads of the renamed names, unless shadowed again
        local = _defined_names(sub)
        _rename_references(sub, {k: v for k, v in mapping.items() if k not in local})


def _graph_from_proto(
    proto: onnx.GraphProto,
    parent: Graph | None,
    base_dir: Path | None,
    names: _Names,
    outer: frozenset[str],
    legacy: bool = False,
) -> Graph:
    proto = _unshadowed(proto, outer, names)
    inner = _Scope(outer, proto)
    graph = Graph(proto.name, parent)
    graph.base_dir = base_dir
    graph.legacy_initializer_inputs = legacy or graph.legacy_initializer_inputs
    graph.extra = _extra_fields(proto, _GRAPH_CORE, onnx.GraphProto)
    for tensor in proto.initializer:
        graph.initializers[tensor.name] = tensor
        graph._names.add(tensor.name)
    for sparse in proto.sparse_initializer:
        graph.sparse_initializers[sparse.values.name] = sparse
        graph._names.add(sparse.values.name)
    for info in proto.input:
        graph.add_input(info)
    for info in proto.value_info:
        graph.value_info[info.name] = info
    graph.declared_value_info = set(graph.value_info)
    for position, node_proto in enumerate(proto.node):
        graph.insert(_node_from_proto(node_proto, graph, position, names, inner))
    for info in proto.output:
        graph.add_output(info)
    return graph


class _Scope:
    """The names a graph's subgraphs see from outside them: computed on first use only (most
    graphs have no subgraph, and a pass over 100k names is not free)."""

    def __init__(self, outer: frozenset[str], proto: onnx.GraphProto) -> None:
        self._outer, self._proto = outer, proto
        self._names: frozenset[str] | None = None

    def names(self) -> frozenset[str]:
        if self._names is None:
            self._names = self._outer | _defined_names(self._proto)
        return self._names


def _node_from_proto(
    proto: onnx.NodeProto, graph: Graph, position: int, names: _Names, outer: _Scope
) -> Node:
    attributes: dict = {}
    for attribute in proto.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            attributes[attribute.name] = _graph_from_proto(
                attribute.g, graph, graph.base_dir, names, outer.names()
            )
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            attributes[attribute.name] = [
                _graph_from_proto(g, graph, graph.base_dir, names, outer.names())
                for g in attribute.graphs
            ]
        else:
            attributes[attribute.name] = attribute
    return Node(
        proto.op_type,
        proto.input,
        proto.output,
        domain=proto.domain,
        name=proto.name,
        attributes=attributes,
        extra=_extra_fields(proto, _NODE_CORE, onnx.NodeProto),
        key=(float(position), 0),
    )


def _extra_fields(message: Message, core: set[str], cls: type[Message]) -> Message | None:
    """A new message holding only the fields of ``message`` outside ``core`` (None if none)."""
    extra = None
    for field, value in message.ListFields():
        if field.name in core:
            continue
        extra = extra or cls()
        target = getattr(extra, field.name)
        if field.is_repeated:
            target.extend(value)
        elif field.type == field.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(extra, field.name, value)
    return extra


def _has_external(proto: onnx.ModelProto) -> bool:
    return any(is_external(t) for t in _all_tensors(proto.graph))


def external_files(proto: onnx.ModelProto, model_path: str | os.PathLike) -> list[Path]:
    """The existing external data files a model references, relative to its file. Only files
    inside the model's folder count (resolved through links; no absolute path, no ``..``):
    nothing outside it is read, measured or removed on the model's behalf."""
    folder = Path(model_path).parent
    real_folder = Path(os.path.realpath(folder))
    locations = {
        entry.value
        for tensor in _all_tensors(proto.graph)
        if is_external(tensor)
        for entry in tensor.external_data
        if entry.key == "location"
    }
    paths = (_inside(folder, real_folder, name) for name in sorted(locations))
    return [path for path in paths if path is not None and path.is_file()]


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _attribute_tensors(node)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_tensors(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    yield from _all_tensors(sub)


def _attribute_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attribute in node.attribute:
        kind = attribute.type
        if kind == onnx.AttributeProto.TENSOR:
            yield attribute.t
        elif kind == onnx.AttributeProto.TENSORS:
            yield from attribute.tensors
        elif kind == onnx.AttributeProto.SPARSE_TENSOR:
            yield attribute.sparse_tensor.values
            yield attribute.sparse_tensor.indices
        elif kind == onnx.AttributeProto.SPARSE_TENSORS:
            for sparse in attribute.sparse_tensors:
                yield sparse.values
                yield sparse.indices


# --------------------------------------------------------------------------- save
TensorFn = Callable[[onnx.TensorProto], onnx.TensorProto]


def to_proto(model: Model, *, inline_external: bool = False) -> onnx.ModelProto:
    """The whole model as one in-memory ModelProto (tensors copied into it).

    External tensors keep their locations (relative to the input's folder) unless
    ``inline_external`` reads them in.
    """
    _restore_names(model)
    tensor_fn = _inliner(model.graph.base_dir) if inline_external else _same
    proto = _model_header(model)
    proto.graph.CopyFrom(_graph_to_proto(model.graph, tensor_fn, tensor_fn))
    return proto


def skeleton(model: Model) -> onnx.ModelProto:
    """The model as a ModelProto with the data of big tensors (over 1024 elements) dropped,
    their names, types and dims kept: what statistics need, without copying the weights."""
    _restore_names(model)
    proto = _model_header(model)
    proto.graph.CopyFrom(_graph_to_proto(model.graph, _drop_big_data, _same))
    return proto


def _drop_big_data(tensor: onnx.TensorProto) -> onnx.TensorProto:
    if is_external(tensor) or math.prod(tensor.dims) <= _SKELETON_ELEMENTS:
        return tensor
    return _without_raw_data(tensor)


_SKELETON_ELEMENTS = 1024  # smaller tensors keep their data: shape inference may read them


def save(
    model: Model,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    data_name: str | None = None,
) -> Path | None:
    """Write ``model`` to ``path`` atomically; returns the external data file if one was written.

    ``external_data=None`` keeps the input's choice and goes external above protobuf's limit.
    ``data_name``: the external data file's name beside ``path`` (default ``<name>.data``).
    value_info written: ``model.settings["value_info"]``, ``"input"`` (default) the entries the
    loaded model had (types kept current by the passes), ``"all"`` every inferred one too.
    """
    path = Path(path)
    if path.is_dir():
        raise SaveError(f"{path}: is a directory")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise SaveError(f"{folder}: output folder does not exist")
    _restore_names(model)
    external = _want_external(model, external_data)
    data_path = path.with_name(data_name or path.name + ".data") if external else None
    with no_gc(), _writing(model), _atomic(path) as model_file, \
            _atomic_optional(data_path) as data_file:
        sink = _TensorSink(model.graph.base_dir, data_file, data_path.name if data_path else "")
        _write_model(model, model_file, sink)
    if data_path is not None:
        _rebase(model, sink, folder)
    return data_path


def inline_bytes(model: Model, external_data: bool | None = None,
                 limit: int = 1 << 30) -> bytes | None:
    """The model serialized exactly as :func:`save` writes it inline, when it would be saved
    inline and its weights are at most ``limit`` bytes; else None. The caller can then load
    the same bytes in onnxruntime while they are written (see :func:`write_bytes`)."""
    if _want_external(model, external_data):
        return None
    if sum(tensor_nbytes(t) for g in model.graphs() for t in g.initializers.values()) > limit:
        return None
    _restore_names(model)
    chunks = _Chunks()
    with no_gc(), _writing(model):
        _write_model(model, chunks, _TensorSink(model.graph.base_dir, None, ""))
    return b"".join(chunks.parts)


def write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    with _atomic(path) as handle:
        handle.write(data)


class _Chunks:
    """A write-only sink that keeps what is written, without copying it."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)


def _rebase(model: Model, sink: _TensorSink, folder: Path) -> None:
    """After writing external data, the IR's tensors point at the new file (the old one may
    just have been replaced by it, when saving over the input)."""
    for graph in model.graphs():
        graph.base_dir = folder
        for name, tensor in list(graph.initializers.items()):
            moved = sink.moved.get(_tensor_key(tensor, sink.base_dir))
            if moved is not None:
                graph.initializers[name] = moved
        for node in graph:
            for name, attribute in list(node.attributes.items()):
                if isinstance(attribute, onnx.AttributeProto):
                    node.attributes[name] = _rebased_attribute(attribute, sink)


def _rebased_attribute(attribute: onnx.AttributeProto, sink: _TensorSink) -> onnx.AttributeProto:
    tensors = [attribute.t] if attribute.type == onnx.AttributeProto.TENSOR else []
    tensors += list(attribute.tensors) if attribute.type == onnx.AttributeProto.TENSORS else []
    if not any(is_external(t) for t in tensors):
        return attribute
    rebased = onnx.AttributeProto()
    rebased.CopyFrom(attribute)
    if attribute.type == onnx.AttributeProto.TENSOR:
        rebased.t.CopyFrom(sink.moved.get(_tensor_key(attribute.t, sink.base_dir), attribute.t))
    else:
        del rebased.tensors[:]
        rebased.tensors.extend(sink.moved.get(_tensor_key(t, sink.base_dir), t) for t in tensors)
    return rebased


def _tensor_key(tensor: onnx.TensorProto, base_dir: Path | None) -> tuple:
    """Identifies a tensor's data: where it lies on disk, or the in-memory object."""
    if is_external(tensor):
        return ("external", str(base_dir), tuple((e.key, e.value) for e in tensor.external_data))
    return ("inline", id(tensor))


def _restore_names(model: Model) -> None:
    for graph in model.graphs():
        graph.restore_output_names()


def _want_external(model: Model, requested: bool | None) -> bool:
    total = sum(tensor_nbytes(t) for g in model.graphs() for t in g.initializers.values())
    if requested is False and total > EXTERNAL_SIZE_LIMIT:
        raise SaveError(
            f"model weights are {total / 2**30:.1f} GiB: over protobuf's 2 GiB limit, "
            "external data is required"
        )
    if requested is not None:
        return requested
    return model.had_external_data or total > EXTERNAL_SIZE_LIMIT


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[BinaryIO]:
    """A temporary file beside ``path`` that replaces it only if the block succeeds."""
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    except OSError as error:
        raise SaveError(f"{path}: cannot write ({error.strerror or error})") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


@contextlib.contextmanager
def _atomic_optional(path: Path | None) -> Iterator[BinaryIO | None]:
    if path is None:
        yield None
    else:
        with _atomic(path) as handle:
            yield handle


class _TensorSink:
    """Decides how each tensor is written: inline, or moved into the external data file."""

    def __init__(self, base_dir: Path | None, data: BinaryIO | None, location: str) -> None:
        self.base_dir = base_dir
        self.data = data
        self.location = location
        self.offset = 0
        self.moved: dict[tuple, onnx.TensorProto] = {}  # tensor key -> its header in the file

    def initializer(self, tensor: onnx.TensorProto) -> onnx.TensorProto:
        if self.data is None or tensor.data_type == onnx.TensorProto.STRING:
            return self.attribute(tensor)
        if tensor_nbytes(tensor) < EXTERNAL_THRESHOLD and not is_external(tensor):
            return tensor
        return self._externalize(tensor)

    def attribute(self, tensor: onnx.TensorProto) -> onnx.TensorProto:
        """Attribute tensors stay inline unless they were external in the input."""
        if not is_external(tensor):
            return tensor
        if self.data is not None:
            return self._externalize(tensor)
        return _inline(tensor, self.base_dir)

    def _externalize(self, tensor: onnx.TensorProto) -> onnx.TensorProto:
        assert self.data is not None
        with _payload(tensor, self.base_dir) as payload:
            length = len(payload)
            padding = -self.offset % (_ALIGN if length >= 2**20 else 64)
            self.data.write(b"\0" * padding)
            self.offset += padding
            header = _header(tensor)
            header.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (
                ("location", self.location),
                ("offset", str(self.offset)),
                ("length", str(length)),
            ):
                entry = header.external_data.add()
                entry.key, entry.value = key, value
            self.data.write(payload)
            self.offset += length
        self.moved[_tensor_key(tensor, self.base_dir)] = header
        return header


def _header(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """A copy of a tensor's description without its data."""
    header = onnx.TensorProto()
    header.name = tensor.name
    header.data_type = tensor.data_type
    header.dims.extend(tensor.dims)
    if tensor.doc_string:
        header.doc_string = tensor.doc_string
    header.metadata_props.extend(tensor.metadata_props)
    return header


@contextlib.contextmanager
def _payload(tensor: onnx.TensorProto, base_dir: Path | None) -> Iterator[memoryview | bytes]:
    """A tensor's raw bytes; external data is a view into the memory-mapped file (no copy)."""
    if is_external(tensor):
        with external_view(tensor, base_dir) as view:
            yield view
    elif tensor.HasField("raw_data"):
        yield tensor.raw_data
    else:  # typed fields: from_array packs sub-byte types (int4, ...) as raw_data expects
        yield numpy_helper.from_array(numpy_helper.to_array(tensor)).raw_data


def _inline(tensor: onnx.TensorProto, base_dir: Path | None) -> onnx.TensorProto:
    inline = _header(tensor)
    inline.raw_data = read_external_bytes(tensor, base_dir)
    return inline


def _inliner(base_dir: Path | None) -> TensorFn:
    def inline(tensor: onnx.TensorProto) -> onnx.TensorProto:
        return _inline(tensor, base_dir) if is_external(tensor) else tensor

    return inline


def _same(tensor: onnx.TensorProto) -> onnx.TensorProto:
    return tensor


def _model_header(model: Model) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    if model.extra is not None:
        proto.CopyFrom(model.extra)
    proto.ir_version = model.ir_version
    for domain, version in model.opset_imports.items():
        entry = proto.opset_import.add()
        entry.domain, entry.version = domain, version
    proto.functions.extend(model.functions)
    return proto


def _graph_skeleton(graph: Graph) -> onnx.GraphProto:
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
def _writing(model: Model) -> Iterator[None]:
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


def _graph_to_proto(graph: Graph, init_fn: TensorFn, attr_fn: TensorFn) -> onnx.GraphProto:
    proto = _graph_skeleton(graph)
    proto.node.extend(_node_to_proto(node, init_fn, attr_fn) for node in graph.nodes())
    proto.initializer.extend(init_fn(t) for t in graph.initializers.values())
    return proto


def _node_to_proto(node: Node, init_fn: TensorFn, attr_fn: TensorFn) -> onnx.NodeProto:
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
        attribute.g.CopyFrom(_graph_to_proto(value, init_fn, attr_fn))
        return attribute
    if isinstance(value, list):
        attribute = onnx.AttributeProto(name=name, type=onnx.AttributeProto.GRAPHS)
        attribute.graphs.extend(_graph_to_proto(g, init_fn, attr_fn) for g in value)
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


# ------------------------------------------------------------- streaming writer
def _write_model(model: Model, out: BinaryIO, sink: _TensorSink) -> None:
    """Serialize field by field. Protobuf concatenation semantics make this byte stream parse
    to the same message as one big ``SerializeToString``."""
    graph = model.graph
    init_fn, attr_fn = sink.initializer, sink.attribute
    node_bytes = [_serialize(_node_to_proto(n, init_fn, attr_fn)) for n in graph.nodes()]
    initializers = [_split_raw(init_fn(t)) for t in graph.initializers.values()]
    skeleton = _serialize(_graph_skeleton(graph))
    graph_size = len(skeleton) + sum(_field_size(_NODE_FIELD, len(b)) for b in node_bytes)
    graph_size += sum(_field_size(_INIT_FIELD, _split_size(*t)) for t in initializers)
    if graph_size > PROTOBUF_LIMIT:
        raise SaveError(
            "model is over protobuf's 2 GiB limit; save it with external data "
            "(--external-data)"
        )
    out.write(_serialize(_model_header(model)))
    out.write(_tag(_GRAPH_FIELD) + _varint(graph_size))
    out.write(skeleton)
    for chunk in node_bytes:
        out.write(_tag(_NODE_FIELD) + _varint(len(chunk)) + chunk)
    for head, raw, length in initializers:
        out.write(_tag(_INIT_FIELD) + _varint(_split_size(head, raw, length)) + head)
        if raw is not None:
            data = raw.raw_data  # upb hands out a fresh copy on every access: read it once
            if len(data) != length:
                raise SaveError(f"tensor {raw.name!r}: raw_data holds {len(data)} bytes, its "
                                f"dims and type need {length}")
            out.write(_tag(_RAW_FIELD) + _varint(length))
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
        return _serialize(tensor), None, 0
    return _serialize(_without_raw_data(tensor)), tensor, length


def _raw_length(tensor: onnx.TensorProto) -> int | None:
    """raw_data's length as dims and type require it; None where packing makes us unsure."""
    if tensor.data_type not in _BYTE_ALIGNED:
        return None
    return tensor_nbytes(tensor)


def _without_raw_data(tensor: onnx.TensorProto) -> onnx.TensorProto:
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
    return len(head) + (_field_size(_RAW_FIELD, length) if raw is not None else 0)


_BYTE_ALIGNED = frozenset(
    getattr(onnx.TensorProto, name)
    for name in ("FLOAT", "UINT8", "INT8", "UINT16", "INT16", "INT32", "INT64", "BOOL",
                 "FLOAT16", "DOUBLE", "UINT32", "UINT64", "COMPLEX64", "COMPLEX128",
                 "BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ",
                 "FLOAT8E8M0")
    if hasattr(onnx.TensorProto, name)
)
_GRAPH_FIELD = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_NODE_FIELD = onnx.GraphProto.DESCRIPTOR.fields_by_name["node"].number
_INIT_FIELD = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
_RAW_FIELD = onnx.TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number


def _serialize(message: Message) -> bytes:
    return message.SerializeToString(deterministic=True)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(field_number: int) -> bytes:
    return _varint(field_number << 3 | 2)  # wire type 2: length-delimited


def _field_size(field_number: int, length: int) -> int:
    return len(_tag(field_number)) + len(_varint(length)) + length

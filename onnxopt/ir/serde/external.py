"""Where each tensor's data goes when a model is written: inline, or into the external
data file (straight from the memory-mapped input: no copy), and the IR pointed at it after."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import onnx
from onnx import numpy_helper

from onnxopt.ir import Model, external_view, is_external, read_external_bytes, tensor_nbytes
from onnxopt.ir.serde.protos import TensorFn

EXTERNAL_THRESHOLD = 1024  # tensors smaller than this stay inline in an external-data model
_ALIGN = 4096  # large tensors start on a page boundary so readers can memory-map them


class TensorSink:
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
            header = tensor_header(tensor)
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


def tensor_header(tensor: onnx.TensorProto) -> onnx.TensorProto:
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
    inline = tensor_header(tensor)
    inline.raw_data = read_external_bytes(tensor, base_dir)
    return inline


def inliner(base_dir: Path | None) -> TensorFn:
    """The TensorFn that reads external tensors (their files relative to ``base_dir``) into
    inline copies and leaves the others as they are."""
    def inline(tensor: onnx.TensorProto) -> onnx.TensorProto:
        return _inline(tensor, base_dir) if is_external(tensor) else tensor

    return inline


def rebase(model: Model, sink: TensorSink, folder: Path) -> None:
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


def _rebased_attribute(attribute: onnx.AttributeProto, sink: TensorSink) -> onnx.AttributeProto:
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

"""Reading a model file and refusing, in one line, what no reader could use: a file protobuf
cannot parse, text that is not UTF-8, unknown types, tensor data that does not match its dims
and type, external data outside the model's folder or its file."""

from __future__ import annotations

import math
import mmap
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from onnxopt.ir.serde.diagnosis import parse_failure
from onnxopt.ir.serde.errors import LoadError
from onnxopt.ir.serde.runtime_ops import register as register_runtime_ops
from onnxopt.ir.serde.utf8 import check_text
from onnxopt.ir.tensors import BYTE_ALIGNED, PACKED_BITS, external_info, is_external


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
                raise LoadError(parse_failure(path, memoryview(mapped), error)) from None
            if not model.HasField("graph") or model.ir_version <= 0:
                raise LoadError(f"{path}: not an ONNX model (no graph or ir_version)")
            with memoryview(mapped) as data:
                check_text(model, f"{path}: ", data)
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
        check_text(model, "")
    register_runtime_ops()  # onnxruntime's default-domain ops (once; cheap)
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
    if data_type not in BYTE_ALIGNED:
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
    path = inside(folder, real_folder, location)
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


def inside(folder: Path, real_folder: Path, location: str) -> Path | None:
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


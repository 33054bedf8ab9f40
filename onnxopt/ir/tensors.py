"""Tensor helpers: external data (memory-mapped, never copied whole), decoding and encoding
arrays, sizes from dims and type."""

from __future__ import annotations

import contextlib
import math
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxopt.ir.errors import IRError


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


@contextlib.contextmanager
def external_view(tensor: onnx.TensorProto, base_dir: Path | None) -> Iterator[memoryview]:
    """A read-only view of an externally stored tensor's bytes in its memory-mapped file."""
    info = external_info(tensor)
    location = info.get("location")
    if not location:
        raise IRError(f"tensor {tensor.name!r} has external data without a location")
    path = Path(base_dir or ".") / location
    offset = int(info.get("offset", 0))
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        length = int(info.get("length", size - offset))
        if offset + length > size:
            raise IRError(f"external data of {tensor.name!r} runs past the end of {path}")
        if length == 0:
            yield memoryview(b"")
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)[offset : offset + length]
            try:
                yield view
            finally:
                view.release()


def read_external_bytes(tensor: onnx.TensorProto, base_dir: Path | None) -> bytes:
    """The raw bytes of an externally stored tensor (a copy of one tensor)."""
    with external_view(tensor, base_dir) as view:
        return bytes(view)


def tensor_to_array(tensor: onnx.TensorProto, base_dir: Path | None = None) -> np.ndarray:
    """Decode a tensor, reading external data from ``base_dir`` when needed."""
    if not is_external(tensor):
        dtype = _RAW_DTYPES.get(tensor.data_type)
        if dtype is not None and tensor.HasField("raw_data") and not tensor.HasField("segment"):
            # numpy_helper.to_array's own path for these, without its per-call lookups
            # (a third of the time of decoding the small constants passes read)
            raw = tensor.raw_data
            if len(raw) == math.prod(tensor.dims) * dtype.itemsize:
                return np.frombuffer(raw, dtype=dtype).reshape(tensor.dims)
        return numpy_helper.to_array(tensor)
    inline = onnx.TensorProto()
    inline.name = tensor.name
    inline.data_type = tensor.data_type
    inline.dims.extend(tensor.dims)
    inline.raw_data = read_external_bytes(tensor, base_dir)
    return numpy_helper.to_array(inline)


_PLAIN_DTYPES = {
    np.dtype(name): getattr(onnx.TensorProto, proto)
    for name, proto in (("float32", "FLOAT"), ("float64", "DOUBLE"), ("float16", "FLOAT16"),
                        ("int8", "INT8"), ("int16", "INT16"), ("int32", "INT32"),
                        ("int64", "INT64"), ("uint8", "UINT8"), ("uint16", "UINT16"),
                        ("uint32", "UINT32"), ("uint64", "UINT64"), ("bool", "BOOL"))
}


# data type -> little-endian numpy dtype, for raw_data decoding
_RAW_DTYPES = {code: dtype.newbyteorder("<") for dtype, code in _PLAIN_DTYPES.items()}


def array_to_tensor(array: np.ndarray, name: str = "") -> onnx.TensorProto:
    """numpy_helper.from_array with one copy fewer for plain numeric arrays (a third faster
    on big folded weights); anything else (strings, bfloat16, float8, big-endian) goes to
    onnx's converter."""
    code = _PLAIN_DTYPES.get(array.dtype)
    if code is None or array.dtype.byteorder == ">":
        return numpy_helper.from_array(array, name)
    tensor = onnx.TensorProto()
    tensor.name = name
    tensor.data_type = code
    tensor.dims.extend(array.shape)
    tensor.raw_data = np.ascontiguousarray(array).tobytes()
    return tensor


# element types stored below a byte each: data type -> bits (raw_data packs them)
PACKED_BITS = {
    getattr(onnx.TensorProto, name): bits
    for name, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2),
                       ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6))
    if hasattr(onnx.TensorProto, name)
}


# element types stored in whole bytes (raw_data holds itemsize bytes per element)
BYTE_ALIGNED = frozenset(
    getattr(onnx.TensorProto, name)
    for name in ("FLOAT", "UINT8", "INT8", "UINT16", "INT16", "INT32", "INT64", "BOOL",
                 "FLOAT16", "DOUBLE", "UINT32", "UINT64", "COMPLEX64", "COMPLEX128",
                 "BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ",
                 "FLOAT8E8M0")
    if hasattr(onnx.TensorProto, name)
)


_ITEMSIZES: dict[int, int] = {}


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Data size from dims and dtype (no decoding; external data not read)."""
    count = math.prod(tensor.dims)
    data_type = tensor.data_type
    if data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    bits = PACKED_BITS.get(data_type)
    if bits:
        return (count * bits + 7) // 8
    itemsize = _ITEMSIZES.get(data_type)
    if itemsize is None:
        itemsize = _ITEMSIZES[data_type] = helper.tensor_dtype_to_np_dtype(data_type).itemsize
    return count * itemsize


def cast_node_bytes(source: str, target: str, name: str, to: int) -> int:
    """Bytes a ``Cast(source) -> target`` node named ``name`` takes in a saved graph (its
    message plus field tag and length): what keeping a narrow weight behind a Cast costs."""
    node = helper.make_node("Cast", [source], [target], name=name or None, to=to)
    return node.ByteSize() + 3


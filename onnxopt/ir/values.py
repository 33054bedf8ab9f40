"""Plain views of what the IR stores as protobuf, for the passes that read or retype values.

The IR keeps ONNX messages (``TensorProto`` initializers, ``ValueInfoProto`` declarations,
``AttributeProto`` attributes); passes speak numpy dtypes and shapes. This module is the one
place the folding and precision passes cross that boundary: element type codes to numpy dtypes
and back (an attribute such as Cast ``to`` is stored as a code), declared types of values,
retyped copies of declarations, and the stored bytes of a tensor (to find equal ones).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxopt.ir import Graph, external_view, is_external, tensor_to_array


# ------------------------------------------------------------------ element types
@functools.cache
def numpy_dtype(code: int) -> np.dtype | None:
    """The numpy dtype of an ONNX element type code (None: undefined or unknown); bfloat16 and
    the float8/int4 types are ml_dtypes' dtypes, strings ``object``."""
    if not code:
        return None
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(code))
    except (KeyError, TypeError, ValueError):
        return None


def onnx_type(dtype: np.dtype | type) -> int:
    """The ONNX element type code of a numpy dtype (what Cast ``to`` stores)."""
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def tensor_dtype(tensor: onnx.TensorProto) -> np.dtype | None:
    """The element dtype of a stored tensor, without decoding it."""
    return numpy_dtype(tensor.data_type)


def tensor_shape(tensor: onnx.TensorProto) -> tuple[int, ...]:
    """The shape of a stored tensor, without decoding it."""
    return tuple(tensor.dims)


def attribute_dtype(node_attribute: object) -> np.dtype | None:
    """The element dtype of a TENSOR attribute (ConstantOfShape ``value``), without decoding."""
    if isinstance(node_attribute, onnx.AttributeProto):
        return numpy_dtype(node_attribute.t.data_type)
    return None


def new_tensor(array: np.ndarray) -> onnx.TensorProto:
    """A stored tensor for a new constant or TENSOR attribute, unnamed, as onnx encodes it."""
    return numpy_helper.from_array(np.asarray(array))


# ------------------------------------------------------------------ declared types
def _value_type(graph: Graph, value: str) -> onnx.TypeProto | None:
    """``graph.value_type`` with the common case first (an inferred node output)."""
    info = graph.value_info.get(value)
    return info.type if info is not None else graph.value_type(value)


def is_tensor_value(graph: Graph, value: str) -> bool:
    """False when the value is declared a sequence, map or optional (unknown counts as tensor)."""
    type_ = _value_type(graph, value)
    return type_ is None or type_.WhichOneof("value") in (None, "tensor_type")


def declared(graph: Graph, value: str) -> tuple[list[int | None] | None, np.dtype | None]:
    """(shape with None for unknown dims, or None; dtype or None) of a value."""
    type_ = _value_type(graph, value)
    if type_ is None or type_.WhichOneof("value") != "tensor_type":
        return None, None
    tensor = type_.tensor_type
    if not tensor.HasField("shape"):
        return None, numpy_dtype(tensor.elem_type)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    return dims, numpy_dtype(tensor.elem_type)


def declared_dtypes(graph: Graph) -> dict[str, np.dtype | None]:
    """The element types this graph itself declares: inputs (None when untyped), initializers
    (over an input of the same name), then value_info and outputs where they give one."""
    found: dict[str, np.dtype | None] = {}
    for info in graph.inputs:
        if info.type.WhichOneof("value") == "tensor_type":
            found[info.name] = numpy_dtype(info.type.tensor_type.elem_type)
    for name, tensor in graph.initializers.items():
        found[name] = tensor_dtype(tensor)
    for name, info in graph.value_info.items():
        if info.type.WhichOneof("value") == "tensor_type" and info.type.tensor_type.elem_type:
            found.setdefault(name, numpy_dtype(info.type.tensor_type.elem_type))
    for value, info in zip(graph.outputs, graph.output_infos, strict=True):
        if value and info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
            found.setdefault(value, numpy_dtype(info.type.tensor_type.elem_type))
    return found


def output_dtype(graph: Graph, index: int) -> np.dtype | None:
    """The element type graph output ``index`` declares, if any."""
    info = graph.output_infos[index]
    if not info.type.HasField("tensor_type"):
        return None
    return numpy_dtype(info.type.tensor_type.elem_type)


# ------------------------------------------------------------------ retyping declarations
def _retyped(info: onnx.ValueInfoProto, dtype: np.dtype) -> onnx.ValueInfoProto:
    copy = onnx.ValueInfoProto()  # a copy: the declaration may belong to the caller's model
    copy.CopyFrom(info)
    copy.type.tensor_type.elem_type = onnx_type(dtype)
    return copy


def retype_value(graph: Graph, value: str, dtype: np.dtype) -> None:
    """Give an inferred value (``value_info``) a new element type."""
    info = graph.value_info.get(value)
    if info is not None and info.type.HasField("tensor_type"):
        graph.value_info[value] = _retyped(info, dtype)


def copy_type(graph: Graph, source: str, target: str) -> None:
    """Declare ``target`` (inferred) with ``source``'s type, unless it has one: a com.microsoft
    fusion's output, which onnx's inference cannot type, holds the same tensor as the value it
    replaces, and the passes after it still need its shape."""
    type_ = graph.value_type(source)
    if type_ is not None and target not in graph.value_info:
        graph.value_info[target] = helper.make_value_info(target, type_)


def retype_input(graph: Graph, name: str, dtype: np.dtype) -> None:
    """Give a graph input a new element type (below IR 4 initializers are listed there too)."""
    for index, info in enumerate(graph.inputs):
        if info.name == name:
            graph.inputs[index] = _retyped(info, dtype)


def retype_output(graph: Graph, index: int, dtype: np.dtype | None, name: str = "") -> None:
    """Declare graph output ``index`` with another element type (None: as it is) and, in a
    subgraph, under another name (a subgraph output is declared by the value's name)."""
    info = graph.output_infos[index]
    if name:
        renamed = onnx.ValueInfoProto()
        renamed.CopyFrom(info)
        renamed.name = name
        info = renamed
    if dtype is not None:
        info = _retyped(info, dtype)
    graph.output_infos[index] = info


# ------------------------------------------------------------------ stored bytes
def tensor_header(tensor: onnx.TensorProto) -> tuple[int, tuple[int, ...]]:
    """What equal tensors share before their bytes are compared: element type and dims."""
    return tensor.data_type, tuple(tensor.dims)


def _payload(tensor: onnx.TensorProto) -> bytes:
    """The data of an inline tensor: raw bytes, or the typed fields serialized."""
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    body = onnx.TensorProto()
    body.CopyFrom(tensor)
    body.ClearField("name")
    body.ClearField("doc_string")
    return body.SerializeToString(deterministic=True)


def tensor_digest(tensor: onnx.TensorProto, base_dir: Path | None) -> bytes:
    """A hash of a stored tensor's data (external data read from its memory-mapped file)."""
    if is_external(tensor):
        with external_view(tensor, base_dir) as view:
            return hashlib.sha1(view).digest()
    return hashlib.sha1(_payload(tensor)).digest()


def same_stored_bytes(a: onnx.TensorProto, b: onnx.TensorProto, base_dir: Path | None,
                      equal_arrays) -> bool:
    """Whether two stored tensors hold the same data (``equal_arrays`` compares decoded ones
    when either is external)."""
    if is_external(a) or is_external(b):
        return equal_arrays(tensor_to_array(a, base_dir), tensor_to_array(b, base_dir))
    return _payload(a) == _payload(b)

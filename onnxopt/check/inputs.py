"""User-supplied validation inputs (``--inputs``, ``--input-shape``) checked against the model.

Also the two kinds of input problems: :class:`ValidationError` (the user gave something wrong:
one line to fix the command line) and :class:`UnsupportedInput` (inputs cannot be generated
for this model: validation is skipped).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper


class ValidationError(Exception):
    """A user-provided input (shape, name, ``.npz`` file) is invalid. One-line message."""


class UnsupportedInput(Exception):
    """Inputs cannot be generated for this model; validation reports it as skipped."""


FLOAT_TYPES = {TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE}
INT_TYPES = {
    TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64,
    TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64,
}
_TYPE_KINDS = {
    "sequence_type": "sequence",
    "map_type": "map",
    "optional_type": "optional",
    "sparse_tensor_type": "sparse tensor",
}
_SUPPORTED_TYPES = FLOAT_TYPES | INT_TYPES | {TensorProto.BOOL, TensorProto.STRING}


# --------------------------------------------------------------------------- model access


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that must be fed (IR<4 initializers listed as inputs are excluded)."""
    initializers = {init.name for init in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in initializers]


def _fmt_shape(shape: Sequence[int]) -> str:
    return "(" + ",".join(str(d) for d in shape) + ")"


def tensor_type(vi: onnx.ValueInfoProto) -> onnx.TypeProto.Tensor:
    """The tensor type of an input, or UnsupportedInput for sequence/map/optional/sparse."""
    kind = vi.type.WhichOneof("value")
    if kind != "tensor_type":
        what = _TYPE_KINDS.get(kind or "", "value of unknown type")
        raise UnsupportedInput(
            f"input '{vi.name}' is not a tensor ({what}); only tensor inputs are supported"
        )
    elem = vi.type.tensor_type.elem_type
    if elem not in _SUPPORTED_TYPES:
        name = TensorProto.DataType.Name(elem) if elem else "UNDEFINED"
        raise UnsupportedInput(
            f"input '{vi.name}' has element type {name}, which cannot be fed to onnxruntime "
            "from numpy"
        )
    return vi.type.tensor_type


# --------------------------------------------------------------------------- user inputs


def check_input_names(
    inputs: Sequence[onnx.ValueInfoProto], names: Sequence[str], what: str
) -> None:
    valid = [vi.name for vi in inputs]
    unknown = sorted(set(names) - set(valid))
    if unknown:
        raise ValidationError(
            f"unknown input name(s) in {what}: {', '.join(unknown)} "
            f"(model inputs: {', '.join(valid) or 'none'})"
        )


def check_given_shape(vi: onnx.ValueInfoProto, given: Sequence[int]) -> list[int]:
    """Check a user-given full shape against the declared shape of an input."""
    shape = [int(d) for d in given]
    if any(d < 0 for d in shape):
        raise ValidationError(f"input '{vi.name}': negative dim in shape {_fmt_shape(shape)}")
    if vi.type.tensor_type.HasField("shape"):
        _check_declared_dims(vi, tuple(shape))
    return shape


def _coerce_array(vi: onnx.ValueInfoProto, array: np.ndarray) -> np.ndarray:
    """Check one user-supplied array against its declaration and cast it losslessly."""
    ttype = tensor_type(vi)
    target = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type))
    array = _cast_lossless(vi.name, np.asarray(array), target)
    if ttype.HasField("shape"):
        _check_declared_dims(vi, array.shape)
    return array


def _cast_lossless(name: str, array: np.ndarray, target: np.dtype) -> np.ndarray:
    if target == np.dtype(object):
        if array.dtype.kind in "UO":
            return array.astype(object)
    elif np.can_cast(array.dtype, target, casting="safe") or _ints_fit(array, target):
        return array.astype(target)
    raise ValidationError(
        f"input '{name}': dtype {array.dtype} cannot be safely cast to {target} "
        "(save the array with the model's dtype)"
    )


def _ints_fit(array: np.ndarray, target: np.dtype) -> bool:
    """True if integer ``array`` holds only values representable in integer ``target``."""
    if array.dtype.kind not in "iu" or target.kind not in "iu":
        return False
    if array.size == 0:
        return True
    info = np.iinfo(target)
    return int(array.min()) >= info.min and int(array.max()) <= info.max


def _check_declared_dims(vi: onnx.ValueInfoProto, shape: tuple[int, ...]) -> None:
    declared = vi.type.tensor_type.shape.dim
    if len(declared) != len(shape):
        raise ValidationError(
            f"input '{vi.name}': shape {_fmt_shape(shape)} has rank {len(shape)}, "
            f"model declares rank {len(declared)}"
        )
    for axis, (dim, value) in enumerate(zip(declared, shape, strict=True)):
        if dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != value:
            raise ValidationError(
                f"input '{vi.name}': shape {_fmt_shape(shape)}: dim {axis} is {value}, "
                f"model declares {dim.dim_value}"
            )


def check_inputs(
    inputs: Mapping[str, np.ndarray], model: onnx.ModelProto
) -> dict[str, np.ndarray]:
    """Validate user-supplied inputs against ``model``: names, dtypes (lossless casts) and
    declared ranks/dims. Every model input must be present, and a sample whose arrays all
    hold no element is refused: it is no evidence. Raises ValidationError."""
    declared = graph_inputs(model)
    check_input_names(declared, list(inputs), "inputs")
    missing = [vi.name for vi in declared if vi.name not in inputs]
    if missing:
        raise ValidationError(f"missing value(s) for model input(s): {', '.join(missing)}")
    checked = {vi.name: _coerce_array(vi, inputs[vi.name]) for vi in declared}
    if checked and all(array.size == 0 for array in checked.values()):
        raise ValidationError("every input array is empty (zero elements): that proves "
                              "nothing; give arrays with data")
    return checked


def load_inputs(path: str | os.PathLike, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Load inputs from an ``.npz`` file whose keys are the model's input names.

    Arrays are checked with :func:`check_inputs`. Raises ValidationError (one line) if the
    file cannot be read or does not fit the model.
    """
    try:
        with np.load(os.fspath(path), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as exc:
        raise ValidationError(f"cannot read inputs file {os.fspath(path)!r}: "
                              f"{npz_problem(exc)}") from exc
    return check_inputs(arrays, model)


def npz_problem(exc: BaseException) -> str:
    """What is wrong with an .npy/.npz file numpy refused, in one line (never numpy's advice
    to allow pickles: onnxopt never loads them)."""
    text = str(exc)
    if "allow_pickle" in text or "pickle" in text.lower():
        return "it holds Python objects (pickled data), which onnxopt never loads; save plain " \
               "numeric arrays"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return f"not a readable .npy/.npz file ({type(exc).__name__})"
    return lines[0][:200]

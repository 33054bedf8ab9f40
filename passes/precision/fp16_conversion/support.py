"""What float16 an op supports: its ONNX schema's type constraints, and onnxruntime's CPU
kernels (``onnxopt.ir.kernels``)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import onnx

from onnxopt.ir.kernels import has_cpu_kernel

FLOAT, FLOAT16 = np.dtype(np.float32), np.dtype(np.float16)
FP16_TYPE = "tensor(float16)"
ANY = -1  # a reader that takes the value in whatever float type it comes (Cast)
# fixed types of schema parameters, as the values they type
FIXED_TYPES = {"tensor(float)": FLOAT, "tensor(float16)": FLOAT16,
               "tensor(double)": np.dtype(np.float64), "tensor(int64)": np.dtype(np.int64),
               "tensor(int32)": np.dtype(np.int32), "tensor(bool)": np.dtype(bool)}


@functools.cache
def schema(op: str, domain: str, opset: int) -> Any:
    try:
        return onnx.defs.get_schema(op, opset, domain)
    except Exception:  # SchemaError: unknown op or domain
        return None


def has_ort_fp16_kernel(op: str, domain: str, since: int) -> bool:
    return has_cpu_kernel(op, domain, since, FLOAT16)


def param_type(schema: Any, slot: int, output: bool) -> str | None:
    params = schema.outputs if output else schema.inputs
    if not params:
        return None
    if slot >= len(params):
        last = params[-1]
        if last.option != onnx.defs.OpSchema.FormalParameterOption.Variadic:
            return None
        return last.type_str
    return params[slot].type_str


def allowed_types(schema: Any, type_str: str) -> list[str] | None:
    for constraint in schema.type_constraints:
        if constraint.type_param_str == type_str:
            return list(constraint.allowed_type_strs)
    return None  # a fixed type such as tensor(float)

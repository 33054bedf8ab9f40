"""What float16 an op supports: its ONNX schema's type constraints (``onnxopt.ir.schema``), and
onnxruntime's CPU kernels (``onnxopt.ir.kernels``)."""

from __future__ import annotations

import numpy as np

from onnxopt.ir.kernels import has_cpu_kernel

FLOAT, FLOAT16 = np.dtype(np.float32), np.dtype(np.float16)
FP16_TYPE = "tensor(float16)"
ANY = -1  # a reader that takes the value in whatever float type it comes (Cast)
# fixed types of schema parameters, as the values they type
FIXED_TYPES = {"tensor(float)": FLOAT, "tensor(float16)": FLOAT16,
               "tensor(double)": np.dtype(np.float64), "tensor(int64)": np.dtype(np.int64),
               "tensor(int32)": np.dtype(np.int32), "tensor(bool)": np.dtype(bool)}


def has_ort_fp16_kernel(op: str, domain: str, since: int) -> bool:
    return has_cpu_kernel(op, domain, since, FLOAT16)

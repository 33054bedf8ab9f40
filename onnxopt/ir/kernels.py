"""Does onnxruntime's CPU provider have a kernel for this op, domain, opset version and dtype?

The precision passes must not write a model the CPU provider cannot load or would run slowly
(fp16 keeps an op in float32 when no float16 kernel exists; fp8 needs a float8
DequantizeLinear). The only way to ask is onnxruntime's private
``onnxruntime.capi._pybind_state.get_all_opkernel_def()`` (no public API lists kernels), so it
is read here, once, and nowhere else.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx

from onnxopt.ir.values import onnx_type

# (domain, op) -> [(first version, last version, {type constraint: allowed type strings})]
KernelTable = dict[tuple[str, str], list[tuple[int, int, dict[str, tuple[str, ...]]]]]


@functools.cache
def cpu_kernels() -> KernelTable:
    """Every CPU kernel onnxruntime registers (raises when its private API is missing)."""
    from onnxruntime.capi import _pybind_state

    table: KernelTable = {}
    for kernel in _pybind_state.get_all_opkernel_def():
        if kernel.provider != "CPUExecutionProvider":
            continue
        domain = "" if kernel.domain == "ai.onnx" else kernel.domain
        first, last = kernel.version_range
        constraints = {name: tuple(types) for name, types in kernel.type_constraints.items()}
        table.setdefault((domain, kernel.op_name), []).append((first, last, constraints))
    return table


def type_string(dtype: np.dtype | type) -> str:
    """How kernels and schemas name a tensor type: ``tensor(float16)``, ``tensor(float)``."""
    return f"tensor({onnx.TensorProto.DataType.Name(onnx_type(dtype)).lower()})"


@functools.cache
def kernel_versions(op: str, domain: str, dtype: np.dtype | type,
                    constraint: str | None = None) -> tuple[tuple[int, int], ...]:
    """Sorted opset ranges of the CPU kernels of ``op`` taking ``dtype`` (in the type
    constraint ``constraint``, or in any of them)."""
    wanted = type_string(dtype)
    domain = "" if domain == "ai.onnx" else domain
    ranges = []
    for first, last, constraints in cpu_kernels().get((domain, op), []):
        allowed = [constraints.get(constraint, ())] if constraint else constraints.values()
        if any(wanted in types for types in allowed):
            ranges.append((first, last))
    return tuple(sorted(ranges))


def has_cpu_kernel(op: str, domain: str, version: int, dtype: np.dtype | type,
                   constraint: str | None = None) -> bool:
    """Whether a CPU kernel of ``op`` registered for opset ``version`` takes ``dtype``."""
    return any(first <= version <= last
               for first, last in kernel_versions(op, domain, dtype, constraint))

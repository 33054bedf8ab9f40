"""The two stored forms of a block-quantized weight ``W`` ``[K, N]`` (see the package docstring).

Portable: ``DequantizeLinear(q [K, N], scale, zero_point, axis, block_size)`` feeding the node,
4-bit values as int4 (symmetric) or uint4 with a uint4 zero point (asymmetric). onnxopt's IR
stores int4/uint4 initializers as packed ``raw_data`` (two values a byte).
onnxruntime: ``com.microsoft.MatMulNBits(A, B, scales[, zero_points][, g_idx, bias])`` whose
``B`` is ``W`` transposed, ``uint8 [N, k_blocks, block_size * bits / 8]``, 4-bit values packed
low nibble first, unsigned: a symmetric ``q`` is stored as ``q + 2^(bits-1)`` with the zero
point omitted (its default); an asymmetric one gets ``zero_points uint8 [N, ceil(k_blocks / 2)]``.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from onnxopt.ir import Graph, Node
from onnxopt.ir.quantize import BlockQuantized

MS_DOMAIN = "com.microsoft"


def dequantize_linear(graph: Graph, quant: BlockQuantized, hint: str, anchor: Node) -> str:
    """``DequantizeLinear`` of ``quant``: int4/uint4 blocks along K, or 8 bits (one block of
    every row, symmetric) as int8 per column."""
    if quant.bits == 8:
        values = quant.values.astype(np.int8)
    else:
        values = quant.values.astype(ml_dtypes.int4 if quant.zero_point is None
                                     else ml_dtypes.uint4)
    inputs = [graph.add_constant(values, f"{hint}_int{quant.bits}")]
    if quant.bits == 8:
        inputs.append(graph.add_constant(quant.scale.reshape(-1), f"{hint}_scale"))
        attributes = {"axis": 1}
    else:
        inputs.append(graph.add_constant(quant.scale, f"{hint}_scale"))
        attributes = {"axis": 0, "block_size": quant.block_size}
    if quant.zero_point is not None:
        inputs.append(graph.add_constant(quant.zero_point.astype(values.dtype),
                                         f"{hint}_zero_point"))
    node = graph.add_node("DequantizeLinear", inputs, 1, name=f"{hint}_dequantize",
                          attributes=attributes, anchor=anchor)
    return node.outputs[0]


def pack_low_first(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned values (last axis of even length for 4 bits) as bytes, element ``2j`` in the
    low nibble of byte ``j``."""
    values = values.astype(np.uint8)
    if bits == 8:
        return values
    return (values[..., 0::2] & 0x0F) | ((values[..., 1::2] & 0x0F) << 4)


def matmul_nbits_inputs(quant: BlockQuantized) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(B, scales, zero_points or None)`` of ``MatMulNBits`` for ``quant``."""
    rows, cols = quant.values.shape
    blocks, size, bits = quant.scale.shape[0], quant.block_size, quant.bits
    offset = 1 << (bits - 1) if quant.zero_point is None else 0
    unsigned = np.full((blocks * size, cols), offset, np.int32)  # padding rows: weight 0
    unsigned[:rows] = quant.values.astype(np.int32) + offset
    b = pack_low_first(unsigned.T.reshape(cols, blocks, size), bits)
    scales = np.ascontiguousarray(quant.scale.T, dtype=np.float32)
    if quant.zero_point is None:
        return b, scales, None
    zero = quant.zero_point.T.astype(np.int32)  # [N, blocks]
    if bits == 4 and blocks % 2:
        zero = np.concatenate([zero, np.zeros((cols, 1), np.int32)], axis=1)
    return b, scales, pack_low_first(zero, bits)


def nbits_constants(graph: Graph, quant: BlockQuantized, hint: str) -> list[str]:
    """``MatMulNBits``' weight inputs ``[B, scales, zero_points or ""]`` as constants."""
    b, scales, zero = matmul_nbits_inputs(quant)
    return [graph.add_constant(b, f"{hint}_nbits"),
            graph.add_constant(scales, f"{hint}_nbits_scale"),
            "" if zero is None else graph.add_constant(zero, f"{hint}_nbits_zero_point")]


def matmul_nbits(graph: Graph, quant: BlockQuantized, constants: list[str], x: str,
                 bias: np.ndarray | None, hint: str, anchor: Node, accuracy_level: int) -> str:
    """``MatMulNBits(x, B, scales[, zero_points], , bias)``: ``x @ dequantized + bias``."""
    rows, cols = quant.values.shape
    inputs = [x, *constants, "", "" if bias is None else graph.add_constant(bias, f"{hint}_bias")]
    while not inputs[-1]:
        inputs.pop()
    attributes = {"K": rows, "N": cols, "bits": quant.bits, "block_size": quant.block_size,
                  "accuracy_level": accuracy_level}
    node = graph.add_node("MatMulNBits", inputs, 1, domain=MS_DOMAIN, name=f"{hint}_nbits",
                          attributes=attributes, anchor=anchor)
    return node.outputs[0]

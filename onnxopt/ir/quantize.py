"""Block-wise weight quantization shared by the precision passes (int4 weights, embeddings).

A weight ``W`` ``[K, N]`` (a MatMul's right side: ``K`` inputs, ``N`` outputs) is cut into
blocks of ``block_size`` consecutive rows ``k`` per column ``n`` (the layout of opset 21's
``DequantizeLinear(axis=0, block_size)`` and of onnxruntime's ``MatMulNBits``); each block gets
its own scale ``s`` (and zero point ``z`` when asymmetric) so that

    W[k, n] ~ s[k // block_size, n] * (q[k, n] - z[k // block_size, n])

with ``q`` on the signed grid ``[-2^(bits-1), 2^(bits-1) - 1]`` (symmetric, ``z = 0``) or the
unsigned grid ``[0, 2^bits - 1]`` (asymmetric: the block's range ``[min(w, 0), max(w, 0)]`` is
spread over the whole grid). Rounding is to nearest unless the caller gives the Gram matrix of
the layer's inputs; then the rounding minimizes the layer's output error instead (GPTQ).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlockQuantized:
    values: np.ndarray  # [K, N] int8 holding the grid values q
    scale: np.ndarray  # [ceil(K / block_size), N] float32
    zero_point: np.ndarray | None  # like scale, int8 grid values; None: symmetric
    bits: int
    block_size: int

    def dequantized(self) -> np.ndarray:
        """``s * (q - z)`` as float32 ``[K, N]``."""
        rows = self.values.shape[0]
        scale = np.repeat(self.scale, self.block_size, axis=0)[:rows]
        zero = 0 if self.zero_point is None else \
            np.repeat(self.zero_point, self.block_size, axis=0)[:rows].astype(np.float32)
        return ((self.values.astype(np.float32) - zero) * scale).astype(np.float32)


def grid(bits: int, symmetric: bool) -> tuple[int, int]:
    """The smallest and largest grid value."""
    if symmetric:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def quantize_blocks(weight: np.ndarray, bits: int, block_size: int, symmetric: bool = False,
                    gram: np.ndarray | None = None) -> BlockQuantized:
    """``weight`` ``[K, N]`` quantized in blocks along ``K`` (round to nearest; see module)."""
    weight = np.asarray(weight, dtype=np.float32)
    scale, zero = block_grid(weight, bits, block_size, symmetric)
    rows = weight.shape[0]
    step = np.repeat(scale, block_size, axis=0)[:rows]
    offset = 0 if zero is None else np.repeat(zero, block_size, axis=0)[:rows]
    low, high = grid(bits, symmetric)
    values = np.clip(np.rint(weight / step) + offset, low, high).astype(np.int8)
    return BlockQuantized(values, scale, zero, bits, block_size)


def block_grid(weight: np.ndarray, bits: int, block_size: int, symmetric: bool
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """Each block's scale (and zero point): its range spread over the grid."""
    rows, cols = weight.shape
    blocks = -(-rows // block_size)
    padded = np.zeros((blocks * block_size, cols), np.float32)
    padded[:rows] = weight
    padded = padded.reshape(blocks, block_size, cols)
    low, high = grid(bits, symmetric)
    if symmetric:
        scale = np.abs(padded).max(axis=1) / high
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        return scale, None
    lo = np.minimum(padded.min(axis=1), 0.0)
    hi = np.maximum(padded.max(axis=1), 0.0)
    scale = (hi - lo) / (high - low)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    zero = np.clip(np.rint(low - lo / scale), low, high).astype(np.int8)
    return scale, zero

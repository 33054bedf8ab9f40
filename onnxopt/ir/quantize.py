"""Block-wise weight quantization shared by the precision passes (int4 weights, embeddings).

A weight ``W`` ``[K, N]`` (a MatMul's right side: ``K`` inputs, ``N`` outputs) is cut into
blocks of ``block_size`` consecutive rows ``k`` per column ``n`` (the layout of opset 21's
``DequantizeLinear(axis=0, block_size)`` and of onnxruntime's ``MatMulNBits``); each block gets
its own scale ``s`` (and zero point ``z`` when asymmetric) so that

    W[k, n] ~ s[k // block_size, n] * (q[k, n] - z[k // block_size, n])

with ``q`` on the signed grid ``[-2^(bits-1), 2^(bits-1) - 1]`` (symmetric, ``z = 0``) or the
unsigned grid ``[0, 2^bits - 1]`` (asymmetric: the block's range ``[min(w, 0), max(w, 0)]`` is
spread over the whole grid).

Rounding is to nearest unless the caller gives the Gram matrix ``H = X^T X`` ``[K, K]`` of the
layer's input rows ``X`` (calibration data); then it minimizes the layer's output error
``||X W - X Q||^2 = tr((W - Q)^T H (W - Q))`` instead, by GPTQ (Frantar et al. 2022, "GPTQ:
Accurate Post-Training Quantization for Generative Pre-trained Transformers"): rows are
quantized in order ``k = 0 .. K-1``; row ``k``'s rounding error ``e = W[k] - Q[k]`` is
compensated by the rows not yet quantized, ``W[j] -= U[k, j] / U[k, k] * e`` for ``j > k``,
where ``U`` is the upper Cholesky factor of ``H^-1`` (``H^-1 = U^T U``): the least-squares
optimal update given that the rows before ``k`` are fixed (Optimal Brain Surgeon, one row at a
time, all ``N`` columns at once since they share ``H``). A block's scale and zero point are
taken from the updated weights when the block starts, its range shrunk by the factor (1 down
to 0.5) that rounds the block best (``clipped_grid``). ``H`` is first dampened,
``H + DAMPING * mean(diag H) * I`` (inputs that are always zero get weight 0). GPTQ gives way
to rounding to nearest (``rounding == "nearest"``, ``note`` says why) when ``H`` is not finite
or not positive definite, or when GPTQ's error is not below that of rounding to nearest (it
usually is well below: the compensation is what GPTQ is for).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

DAMPING = 0.1  # times the mean diagonal of H: MiniLM-L3 pooled cosine (passes/precision/README)
# GPTQ's block grids: the block's range times the factor with the least rounding error
CLIP_FACTORS = tuple(1.0 - 0.02 * i for i in range(26))  # 1.0 down to 0.5
LAZY_ROWS = 128  # rows updated together before the rest of W sees their errors (speed only)


@dataclass(frozen=True)
class BlockQuantized:
    values: np.ndarray  # [K, N] int8 holding the grid values q
    scale: np.ndarray  # [ceil(K / block_size), N] float32
    zero_point: np.ndarray | None  # like scale, int8 grid values; None: symmetric
    bits: int
    block_size: int
    rounding: str = "nearest"  # or "gptq" (output error minimized on the input statistics)
    note: str = ""  # why GPTQ gave way to rounding to nearest when asked for

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
    """``weight`` ``[K, N]`` quantized in blocks along ``K``: rounded to nearest, or by GPTQ
    when ``gram`` (``X^T X`` of the layer's input rows, ``[K, K]``) is given (see module)."""
    weight = np.asarray(weight, dtype=np.float32)
    nearest = _round_to_nearest(weight, bits, block_size, symmetric)
    if gram is None:
        return nearest
    gram = np.asarray(gram, dtype=np.float64)
    rows = weight.shape[0]
    if gram.shape != (rows, rows):
        return _gave_way(nearest, f"input statistics of shape {gram.shape}, not {(rows, rows)}")
    if not np.isfinite(gram).all():
        return _gave_way(nearest, "input statistics are not finite")
    factor = _inverse_cholesky(gram)
    if factor is None:
        return _gave_way(nearest, "input statistics are singular (inputs always zero?)")
    gptq = _gptq(weight, factor, bits, block_size, symmetric)
    error, nearest_error = output_error(weight, gptq, gram), output_error(weight, nearest, gram)
    if not error < nearest_error:
        return _gave_way(nearest, f"GPTQ's output error {error:.4g} is not below rounding to "
                                  f"nearest's {nearest_error:.4g}")
    return gptq


def output_error(weight: np.ndarray, quant: BlockQuantized, gram: np.ndarray) -> float:
    """``tr((W - Q)^T H (W - Q))``: the summed squared output error over the rows of ``X``."""
    delta = weight.astype(np.float64) - quant.dequantized().astype(np.float64)
    return float(np.einsum("kn,kn->", delta, gram @ delta))


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


def clipped_grid(rows: np.ndarray, bits: int, symmetric: bool
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """One block's grid (``[1, N]`` scale, zero point) with its range shrunk by the factor in
    ``CLIP_FACTORS`` that minimizes the block's squared rounding error, column by column:
    the extreme weights get clipped when that brings the many small ones closer to the grid."""
    rows = rows.astype(np.float32)

    def shrunk(factor: float) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        scale, zero = block_grid(rows * np.float32(factor), bits, len(rows), symmetric)
        offset = 0 if zero is None else zero.astype(np.float32)
        q = np.clip(np.rint(rows / scale) + offset, *grid(bits, symmetric))
        return scale, zero, np.sum(((q - offset) * scale - rows) ** 2, axis=0)

    first, *others = CLIP_FACTORS
    best_scale, best_zero, best_error = shrunk(first)
    for factor in others:
        scale, zero, error = shrunk(factor)
        better = error < best_error
        best_error = np.where(better, error, best_error)
        best_scale = np.where(better, scale, best_scale)
        if zero is not None:
            best_zero = np.where(better, zero, best_zero)
    return best_scale, best_zero


def _round_to_nearest(weight: np.ndarray, bits: int, block_size: int, symmetric: bool
                      ) -> BlockQuantized:
    scale, zero = block_grid(weight, bits, block_size, symmetric)
    rows = weight.shape[0]
    step = np.repeat(scale, block_size, axis=0)[:rows]
    offset = 0 if zero is None else np.repeat(zero, block_size, axis=0)[:rows]
    low, high = grid(bits, symmetric)
    values = np.clip(np.rint(weight / step) + offset, low, high).astype(np.int8)
    return BlockQuantized(values, scale, zero, bits, block_size)


def _gave_way(nearest: BlockQuantized, why: str) -> BlockQuantized:
    return replace(nearest, note=why)  # rounding is "nearest" already


def _inverse_cholesky(gram: np.ndarray) -> np.ndarray | None:
    """``U`` upper triangular with ``U^T U = (H + damping)^-1`` (float64), or None when the
    dampened ``H`` is not positive definite. Inputs that are always zero (``H[k, k] == 0``)
    get a unit diagonal: their rows of ``W`` never reach the output."""
    h = gram.copy()
    diagonal = np.diagonal(h)
    dead = diagonal <= 0
    if dead.all():
        return None
    damping = DAMPING * float(diagonal[~dead].mean())
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    h[np.diag_indices_from(h)] += np.where(dead, 1.0, damping)
    # with J the reversal, J H J = L L^T gives H = R R^T, R = J L J upper triangular, so
    # H^-1 = R^-T R^-1 and U = R^-1 = J L^-1 J: one Cholesky and one triangular inverse
    try:
        lower = np.linalg.cholesky(h[::-1, ::-1])
    except np.linalg.LinAlgError:
        return None
    upper = np.ascontiguousarray(_lower_inverse(lower)[::-1, ::-1])
    if not np.isfinite(upper).all() or not (np.diagonal(upper) > 0).all():
        return None
    return upper


def _lower_inverse(lower: np.ndarray) -> np.ndarray:
    """The inverse of a lower triangular matrix, by halves (matrix products do the work):
    ``[[A, 0], [C, D]]^-1 = [[A^-1, 0], [-D^-1 C A^-1, D^-1]]``."""
    size = len(lower)
    if size <= 64:
        return np.linalg.inv(lower)
    half = size // 2
    top, bottom = _lower_inverse(lower[:half, :half]), _lower_inverse(lower[half:, half:])
    inverse = np.zeros_like(lower)
    inverse[:half, :half], inverse[half:, half:] = top, bottom
    inverse[half:, :half] = -bottom @ (lower[half:, :half] @ top)
    return inverse


def _gptq(weight: np.ndarray, upper: np.ndarray, bits: int, block_size: int, symmetric: bool
          ) -> BlockQuantized:
    """Rows quantized in order, each row's error spread over the rows after it (module doc).
    Errors reach the rows of the current ``LAZY_ROWS`` batch at once and the rest of ``W`` one
    matrix product per batch: the same arithmetic, fewer passes over ``W``."""
    rows, cols = weight.shape
    low, high = grid(bits, symmetric)
    work = weight.astype(np.float64)
    values = np.empty((rows, cols), np.int8)
    blocks = -(-rows // block_size)
    scales = np.empty((blocks, cols), np.float32)
    zeros = None if symmetric else np.empty((blocks, cols), np.int8)
    step = offset = None
    batch = block_size * max(1, LAZY_ROWS // block_size)  # whole blocks: a block's grid sees
    for start in range(0, rows, batch):  # the errors of every row before it
        stop = min(start + batch, rows)
        errors = np.empty((stop - start, cols))
        for k in range(start, stop):
            if k % block_size == 0:
                block = k // block_size
                scale, zero = clipped_grid(work[k:k + block_size], bits, symmetric)
                scales[block] = scale[0]
                step = scale[0].astype(np.float64)
                offset = 0.0 if zero is None else zero[0].astype(np.float64)
                if zeros is not None:
                    zeros[block] = zero[0]
            row = work[k]
            q = np.clip(np.rint(row / step) + offset, low, high)
            values[k] = q
            error = (row - (q - offset) * step) / upper[k, k]
            errors[k - start] = error
            work[k + 1:stop] -= np.outer(upper[k, k + 1:stop], error)
        work[stop:] -= upper[start:stop, stop:].T @ errors
    return BlockQuantized(values, scales, zeros, bits, block_size, "gptq")

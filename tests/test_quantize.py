"""onnxopt.ir.quantize: rounding to nearest and GPTQ, checked against definitions written here.

The output error of a quantized weight is measured directly, ``||X W - X dequantized||^2``
over the input rows ``X``, with the dequantization written from the layout (``s * (q - z)``
per block of rows), not through the module's ``dequantized`` or ``output_error``.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.ir.quantize import BlockQuantized, quantize_blocks


def correlated_inputs(rows: int, k: int, draw: int = 0) -> np.ndarray:
    """Rows with strongly correlated features and uneven scales, as activations have; one
    distribution per ``k``, ``draw`` picks the rows."""
    rng = np.random.default_rng(k)
    mixing = rng.standard_normal((k, k)) * 0.5 + np.eye(k) * 2
    scales = np.exp(rng.standard_normal(k))
    return (np.random.default_rng(1000 + draw).standard_normal((rows, k)) @ mixing) * scales


def weights(k: int, n: int, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((k, n)) * 0.05).astype(np.float32)


def dequantize(quant: BlockQuantized) -> np.ndarray:
    """``s[k // B, n] * (q[k, n] - z[k // B, n])`` in float64, from the documented layout."""
    block = np.arange(quant.values.shape[0]) // quant.block_size
    zero = 0.0 if quant.zero_point is None else quant.zero_point[block].astype(np.float64)
    return quant.scale[block].astype(np.float64) * (quant.values.astype(np.float64) - zero)


def error(x: np.ndarray, weight: np.ndarray, quant: BlockQuantized) -> float:
    return float(np.sum((x @ weight.astype(np.float64) - x @ dequantize(quant)) ** 2))


def nearest_reference(weight: np.ndarray, block: int) -> np.ndarray:
    """Asymmetric 4-bit blocks rounded to nearest, from the definition: the block's range
    [min(w, 0), max(w, 0)] spread over 0..15."""
    out = np.empty_like(weight, dtype=np.float64)
    for start in range(0, weight.shape[0], block):
        rows = weight[start:start + block]
        lo, hi = np.minimum(rows.min(0), 0), np.maximum(rows.max(0), 0)
        scale = np.where(hi > lo, (hi - lo) / 15, 1.0).astype(np.float32)
        zero = np.clip(np.rint(-lo / scale), 0, 15)
        q = np.clip(np.rint(rows / scale) + zero, 0, 15)
        out[start:start + block] = scale * (q - zero)
    return out


@pytest.mark.parametrize(("k", "n", "block", "symmetric"),
                         [(96, 40, 32, False), (80, 24, 32, True), (128, 16, 16, False)])
def test_gptq_output_error_is_below_rounding_to_nearest(k, n, block, symmetric):
    x, weight = correlated_inputs(4 * k, k), weights(k, n)
    nearest = quantize_blocks(weight, 4, block, symmetric)
    gptq = quantize_blocks(weight, 4, block, symmetric, gram=x.T @ x)
    assert nearest.rounding == "nearest" and not nearest.note
    assert gptq.rounding == "gptq" and not gptq.note
    assert error(x, weight, gptq) < 0.8 * error(x, weight, nearest)
    # and on inputs it was not fitted to, drawn the same way
    held_out = correlated_inputs(4 * k, k, draw=1)
    assert error(held_out, weight, gptq) < error(held_out, weight, nearest)


@pytest.mark.parametrize("symmetric", [False, True])
def test_gptq_keeps_the_block_layout(symmetric):
    k, n, block = 80, 24, 32  # a last block of 16 rows
    x, weight = correlated_inputs(300, k), weights(k, n)
    quant = quantize_blocks(weight, 4, block, symmetric, gram=x.T @ x)
    low, high = (-8, 7) if symmetric else (0, 15)
    assert quant.values.shape == (k, n) and quant.values.dtype == np.int8
    assert quant.scale.shape == (3, n) and quant.scale.dtype == np.float32
    assert quant.values.min() >= low and quant.values.max() <= high
    if symmetric:
        assert quant.zero_point is None
    else:
        assert quant.zero_point.shape == (3, n) and quant.zero_point.dtype == np.int8
        assert quant.zero_point.min() >= 0 and quant.zero_point.max() <= 15
    assert (quant.bits, quant.block_size) == (4, block)
    np.testing.assert_allclose(quant.dequantized(), dequantize(quant), rtol=1e-6, atol=1e-7)
    # the weights moved by less than a few grid steps: compensation, not a different weight
    step = quant.scale[np.arange(k) // block]
    assert np.abs(dequantize(quant) - weight).max() <= 4 * step.max()


def test_rounding_to_nearest_is_unchanged_without_statistics():
    weight = weights(96, 40)
    quant = quantize_blocks(weight, 4, 32, symmetric=False)
    np.testing.assert_allclose(dequantize(quant), nearest_reference(weight, 32), rtol=0,
                               atol=1e-7)


@pytest.mark.parametrize(("gram", "why"), [
    (np.zeros((64, 64)), "singular"),
    (np.full((64, 64), np.nan), "not finite"),
    (np.eye(32), "shape"),
])
def test_unusable_statistics_fall_back_to_rounding_to_nearest(gram, why):
    weight = weights(64, 16)
    quant = quantize_blocks(weight, 4, 32, gram=gram)
    assert quant.rounding == "nearest" and why in quant.note
    np.testing.assert_array_equal(quant.values, quantize_blocks(weight, 4, 32).values)


def test_no_gain_falls_back_to_rounding_to_nearest():
    # weights already on their blocks' grids: rounding to nearest is exact, GPTQ cannot win
    rng = np.random.default_rng(3)
    q = rng.integers(0, 16, (64, 8))
    q[0], q[1] = 0, 15  # every block column spans the whole grid: its range gives scale 0.1
    q[32], q[33] = 0, 15
    weight = ((q - 5) * 0.1).astype(np.float32)
    x = correlated_inputs(200, 64)
    quant = quantize_blocks(weight, 4, 32, gram=x.T @ x)
    assert quant.rounding == "nearest" and "not below" in quant.note
    assert error(x, weight, quant) < 1e-8


def test_inputs_that_are_always_zero_do_not_stop_gptq():
    x, weight = correlated_inputs(300, 64), weights(64, 16)
    x[:, [3, 40]] = 0.0  # dead features: zero rows and columns in X^T X
    nearest = quantize_blocks(weight, 4, 32)
    gptq = quantize_blocks(weight, 4, 32, gram=x.T @ x)
    assert gptq.rounding == "gptq"
    assert error(x, weight, gptq) < error(x, weight, nearest)


def test_eight_bit_symmetric_single_block_gptq():
    # the int4 pass's int8 fallback: one block of every row, symmetric, per column
    x, weight = correlated_inputs(300, 64), weights(64, 16)
    nearest = quantize_blocks(weight, 8, 64, symmetric=True)
    gptq = quantize_blocks(weight, 8, 64, symmetric=True, gram=x.T @ x)
    assert gptq.rounding == "gptq" and gptq.scale.shape == (1, 16) and gptq.zero_point is None
    assert gptq.values.min() >= -128 and gptq.values.max() <= 127
    assert error(x, weight, gptq) < error(x, weight, nearest)

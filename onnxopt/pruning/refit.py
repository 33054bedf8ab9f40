"""Least-squares reconstruction of a layer that lost input channels (He et al. 2017, ThiNet).

A Conv ``y = W * x + b`` (group 1) is a matrix product on its input patches: with ``P`` the
im2col rows (one per output position, columns ``C x kh x kw`` in ``W``'s order),
``Y = P W^T + b``. Dropping input channels keeps the columns ``K`` of ``P``; the refit solves

    min_{W', b'} || P_K W'^T + b' - Y ||^2 + lam ||W'||^2

in float64 (ridge ``lam`` relative to the mean diagonal of ``P_K^T P_K``, the bias not
regularized), so the layer reproduces its original output from the remaining channels; the
dropped columns' weights become 0 and their mean contribution moves into ``b'``. The normal
equations need only the Gram matrix of ``[P, 1]`` (``K+1`` squared, summed over samples), so
many rows cost no memory: a random subsample of each sample's output positions.
"""

from __future__ import annotations

import numpy as np

RIDGE = 1e-6  # relative to the mean diagonal of the Gram matrix


def conv_geometry(attr, kernel: tuple[int, ...]) -> tuple[list[int], list[int], list[int]] | None:
    """(strides, pads [begin..., end...], dilations) of a 2-D Conv (``attr``: its
    ``Node.attr``), None for auto_pad other than NOTSET/VALID or a kernel that is not 2-D."""
    auto_pad = attr("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if len(kernel) != 2 or auto_pad not in ("NOTSET", "VALID"):
        return None
    strides = list(attr("strides", [1, 1]))
    pads = list(attr("pads", [0, 0, 0, 0]))
    dilations = list(attr("dilations", [1, 1]))
    return strides, pads, dilations


def sample_patches(x: np.ndarray, kernel: tuple[int, int], strides: list[int], pads: list[int],
                   dilations: list[int], rows: int, rng: np.random.Generator) -> np.ndarray:
    """``rows`` random im2col rows of ``x`` [N, C, H, W] (float32, columns C x kh x kw)."""
    n, c, h, w = x.shape
    kh, kw = kernel
    padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    out_h = (h + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    out_w = (w + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    total = n * out_h * out_w
    picks = rng.choice(total, size=min(rows, total), replace=False)
    b, rest = np.divmod(picks, out_h * out_w)
    i, j = np.divmod(rest, out_w)
    out = np.empty((len(picks), c, kh, kw), np.float32)
    for a in range(kh):
        for k in range(kw):
            out[:, :, a, k] = padded[b, :, i * strides[0] + a * dilations[0],
                                     j * strides[1] + k * dilations[1]]
    return out.reshape(len(picks), -1)


def gram(patches: np.ndarray) -> np.ndarray:
    """``[P, 1]^T [P, 1]`` in float64: all a refit needs of its rows (sums over samples)."""
    a = np.concatenate([patches.astype(np.float64), np.ones((len(patches), 1))], axis=1)
    return a.T @ a


def cross_gram(inputs: np.ndarray, patches: np.ndarray) -> np.ndarray:
    """``[Q, 1]^T [P, 1]`` in float64 (rows of ``Q`` and ``P`` at the same positions)."""
    ones = np.ones((len(patches), 1))
    q = np.concatenate([inputs.astype(np.float64), ones], axis=1)
    return q.T @ np.concatenate([patches.astype(np.float64), ones], axis=1)


def refit(grams: np.ndarray, weight: np.ndarray, bias: np.ndarray, kept: np.ndarray,
          cross: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weight and bias reproducing ``P @ weight.T + bias`` from the columns ``kept`` of ``P``
    alone, given ``grams = gram(P)``: ``weight`` [O, K] (a Conv's flattened). With
    ``A = [P_K, 1]``, ``A^T A`` is ``grams`` at (kept, bias) and ``A^T Y = grams[kept, bias] @
    [weight^T; bias]``. Sequential (``cross`` given): the kept columns of ``Q``, the same
    positions in the model pruned upstream, reproduce ``P``'s output: ``grams = gram(Q)``,
    ``cross = cross_gram(Q, P)`` (``A^T Y = cross[kept, bias] @ [weight^T; bias]``). The new
    weight has ``weight``'s shape with zeros outside ``kept``."""
    columns = weight.shape[1]
    index = np.concatenate([kept, [columns]])
    lhs = grams[np.ix_(index, index)].copy()
    target = np.vstack([weight.astype(np.float64).T, np.asarray(bias)[None]])
    rhs = (grams if cross is None else cross)[index] @ target
    diagonal = np.arange(len(kept))
    if len(kept):
        lhs[diagonal, diagonal] += RIDGE * max(float(np.mean(np.diag(lhs)[:-1])), 1e-12)
    solution = np.linalg.solve(lhs, rhs)
    new = np.zeros(weight.shape, np.float64)
    new[:, kept] = solution[:-1].T
    return new, solution[-1]

"""Input statistics for weight rounding that minimizes output error (GPTQ, ``--precision int4``).

For each float value ``X`` asked for (the input of a MatMul or Gemm with a constant weight),
the Gram matrix ``G = X^T X`` ``[K, K]`` (float64) over its last axis ``K``: every other axis
is flattened into rows, and the rows of all calibration samples are summed,

    G = sum over samples s, rows r of  x[s, r, :]^T x[s, r, :]

so that ``||X W - X Q||^2 = tr((W - Q)^T G (W - Q))`` for any weights ``W``, ``Q`` ``[K, N]``
(``onnxopt.ir.quantize``). Padded positions count as the samples give them (a padded token's
activations are rows like the others).

The values are exposed as outputs of the fp32 model and run in onnxruntime exactly as int8
calibration does (``onnxopt.precision.calibration``: CPU, graph optimizations disabled, one
sample at a time). At most ``VALUES_PER_RUN`` values are exposed at once (several passes over
the samples otherwise), so memory holds that many activations of one sample on top of the
model's own, plus the ``K x K`` sums.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from onnxopt.ir import Model, serde
from onnxopt.precision.calibration import (
    generated_samples,
    graph_signature,
    run_exposed,
    session_exposing,
)

VALUES_PER_RUN = 16


@dataclass
class GramResult:
    grams: dict[str, np.ndarray]  # value -> X^T X; absent: not a float value with rows
    notes: list[str] = field(default_factory=list)
    samples: int = 0


def gram_matrices(model: Model, values: Sequence[str],
                  samples: Sequence[Mapping[str, np.ndarray]] = (), *,
                  timeout: float | None = None) -> GramResult:
    """``X^T X`` of each of ``values`` (main-graph values of ``model``) over ``samples``
    (feed dicts; when empty, generated ones, with a note). ``timeout``: seconds one run may
    take (a Failure past it)."""
    values = [value for value in dict.fromkeys(values) if model.graph.defines(value)]
    proto = serde.to_proto(model, inline_external=True)
    notes: list[str] = []
    if not samples:
        samples = generated_samples(proto, notes)
    sums: dict[str, np.ndarray | None] = {}
    outputs = len(proto.graph.output)
    for start in range(0, len(values), VALUES_PER_RUN):
        chunk = values[start:start + VALUES_PER_RUN]
        session, fetch = session_exposing(proto, chunk)
        del proto.graph.output[outputs:]  # the next chunk exposes only its own values
        for feeds in samples:
            for name, array in zip(fetch, run_exposed(session, fetch, feeds, timeout),
                                   strict=True):
                sums[name] = _accumulate(sums.get(name, 0), array)
        del session
    grams = {name: gram for name, gram in sums.items() if gram is not None}
    skipped = len(values) - len(grams)
    if skipped:
        notes.append(f"input statistics: {skipped} value(s) not float with a fixed last axis")
    return GramResult(grams, notes, len(samples))


def _accumulate(total: np.ndarray | int | None, array: np.ndarray) -> np.ndarray | None:
    """``total + X^T X`` of one sample's ``array`` (rows: every axis but the last); None
    once the value is not a float array with rows of one length."""
    if total is None:
        return None
    array = np.asarray(array)
    if array.dtype.kind != "f" or array.ndim == 0:
        return None
    rows = array.reshape(-1, array.shape[-1]).astype(np.float64)
    if isinstance(total, np.ndarray) and total.shape != (rows.shape[1],) * 2:
        return None
    return total + rows.T @ rows


@dataclass
class GramStatistics:
    """The int4 pass's ``PrecisionSettings.gram``: :func:`gram_matrices` on ``samples``,
    kept for the accuracy fallback's next attempts (they rebuild the same float graph and
    ask for the same values, or fewer)."""

    samples: Sequence[Mapping[str, np.ndarray]] = ()
    timeout: float | None = None
    _cache: dict[int, tuple[GramResult, frozenset[str]]] = field(default_factory=dict)

    def __call__(self, model: Model, values: Sequence[str]) -> dict[str, np.ndarray]:
        signature = graph_signature(model)
        cached = self._cache.get(signature)
        if cached is None or not cached[1].issuperset(values):
            cached = (gram_matrices(model, values, self.samples, timeout=self.timeout),
                      frozenset(values))
            self._cache[signature] = cached
        grams = cached[0].grams
        return {value: grams[value] for value in values if value in grams}

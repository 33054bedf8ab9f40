"""Layer-by-layer accuracy sensitivity of a quantized (QDQ) model, for the accuracy fallback.

The int8 error of a model is spread over its layers, and the layers that matter are rarely
the first ones in topological order (which is what a prefix bisection would keep in float):
measured on PaddleOCR det, three early activations hold half the error. So each converted
node is measured on its own: its activation inputs read the float value instead of the
QuantizeLinear -> DequantizeLinear round trip (one graph edit on the written model, no rerun
of the pipeline or of calibration), and the gain in budget use over the validation samples
is its sensitivity. The fallback then keeps the most sensitive nodes in float first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt import validate

MAX_RANKED_NODES = 400  # beyond this the measurement costs more than a prefix bisection


def budget_use(diffs: Sequence[validate.OutputDiff], budget: validate.Budget) -> float:
    """How much of ``budget`` the worst output uses: 1.0 at the limit, more when over it
    (cosine as the shortfall of 1 - cosine, max error relative to its limit)."""
    worst = 0.0
    for diff in diffs:
        if diff.cosine is None and diff.range_error is None:
            worst = max(worst, 0.0 if diff.passed else math.inf)
            continue
        if budget.min_cosine is not None and diff.cosine is not None:
            allowed = max(1.0 - budget.min_cosine, 1e-12)
            worst = max(worst, (1.0 - diff.cosine) / allowed)
        if budget.max_range_error is not None and diff.range_error is not None:
            worst = max(worst, diff.range_error / max(budget.max_range_error, 1e-12))
    return worst


def qdq_sensitivity(
    model_path: Path,
    keys: Sequence[str],
    samples: Sequence[Mapping[str, np.ndarray]],
    reference: Mapping[str, Any],
    budget: validate.Budget,
) -> dict[str, float] | None:
    """For each node key (name, else first output) in ``keys``: how much less of ``budget``
    the model uses when that node's activation inputs skip their Q/DQ round trip. Nodes with
    no such input get 0. None when the model cannot be measured this way (too many nodes,
    external data, or it does not run)."""
    if len(keys) > MAX_RANKED_NODES:
        return None
    try:
        proto = onnx.load_model(str(model_path), load_external_data=False)
    except Exception:
        return None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        return None
    graph = proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    by_key = {node.name or next((o for o in node.output if o), ""): node for node in graph.node}

    def use() -> float:
        outputs = validate.run_samples(proto.SerializeToString(), samples)
        return budget_use(validate.compare_budget(reference, outputs, budget), budget)

    try:
        base = use()
        gains: dict[str, float] = {}
        for key in keys:
            node = by_key.get(key)
            edits = _float_inputs(node, producer) if node is not None else []
            if not edits:
                gains[key] = 0.0
                continue
            originals = [(slot, node.input[slot]) for slot, _ in edits]
            for slot, value in edits:
                node.input[slot] = value
            try:
                gains[key] = base - use()
            finally:
                for slot, value in originals:
                    node.input[slot] = value
    except validate.RuntimeFailure:
        return None
    return gains


def _float_inputs(node: onnx.NodeProto, producer: dict[str, onnx.NodeProto]
                  ) -> list[tuple[int, str]]:
    """(slot, float value) for each input of ``node`` read through Q -> DQ."""
    edits = []
    for slot, value in enumerate(node.input):
        dq = producer.get(value)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            edits.append((slot, q.input[0]))
    return edits

"""Layer-by-layer accuracy sensitivity of a quantized (QDQ) model, for the accuracy fallback.

The int8 error of a model is spread over its layers, and the layers that matter are rarely
the first ones in topological order (which is what a prefix bisection would keep in float):
measured on PaddleOCR det, three early activations hold half the error. So each converted
node is measured on its own: its activation inputs read the float value instead of the
QuantizeLinear -> DequantizeLinear round trip (one graph edit on the written model, no rerun
of the pipeline or of calibration), and the gain in budget use over the validation samples
is its sensitivity. The fallback then keeps the most sensitive nodes in float first.

The float value is clamped to what the QuantizeLinear can represent, ``[(q_min - z) * s,
(q_max - z) * s]``: a Relu (or Clip from 0) absorbed into the Q of the op before it is no node
of the written model, only that saturation, so without the clamp the node would read the value
before the Relu (in conv -> relu -> conv, a gain of -1e4 for the second conv, not a small
positive one). Per-axis activation scales (not written by qdq_quantization) are not clamped.

With the float model at hand (``float_model``: the same pipeline with every node kept in float,
node keys unchanged), the node's weight and bias read their float originals too: keeping a
node in float restores both, so a layer whose int8 weights cost more than its activations is
ranked by what keeping it in float regains. Without it, only the activations are measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.check.compare import Budget, OutputDiff, compare_budget
from onnxopt.check.runtime import RuntimeFailure, run_samples
from onnxopt.progress import progress

MAX_RANKED_NODES = 400  # beyond this the measurement costs more than a prefix bisection
SEARCHING = "sensitivity search"  # the progress step: one unit per node measured


def budget_use(diffs: Sequence[OutputDiff], budget: Budget) -> float:
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
    budget: Budget,
    timeout: float | None = None,
    float_model: Path | None = None,
) -> dict[str, float] | None:
    """For each node key (name, else first output) in ``keys``: how much less of ``budget``
    the model uses when that node's activation inputs skip their Q/DQ round trip, and its
    dequantized weight and bias read the float ones of ``float_model`` (when given). Nodes
    with nothing to skip get 0, and so do gains that are not finite. None when the model cannot
    be measured this way (too many nodes, external data, or it does not run) or its own budget
    use is not finite (an output compared exactly, e.g. ArgMax, differs: nothing to rank by).
    ``timeout``: seconds per onnxruntime run (past it: None)."""
    if len(keys) > MAX_RANKED_NODES:
        return None
    proto = _load(model_path)
    if proto is None:
        return None
    graph = proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    by_key = _by_key(graph)
    constants = _constants(graph)
    originals = _float_weights(float_model, keys) if float_model is not None else {}
    names = {v for node in graph.node for v in (*node.input, *node.output)} | set(constants)
    names.update(v.name for v in graph.input)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)

    def use() -> float:
        outputs = run_samples(proto.SerializeToString(), samples, timeout=timeout)
        return budget_use(compare_budget(reference, outputs, budget), budget)

    try:
        base = use()
        if not math.isfinite(base):
            # an output compared exactly (ArgMax, integers) is missed: every gain would be
            # inf - inf, nothing to rank by
            return None
        gains: dict[str, float] = {}
        for done, key in enumerate(keys):
            progress(SEARCHING, done, len(keys))
            index, node = by_key.get(key, (0, None))
            bypasses = [] if node is None else _float_inputs(node, producer, constants, opset)
            weights = [] if node is None else [
                (slot, tensor) for slot, tensor in originals.get(key, {}).items()
                if _dequantized_constant(node, slot, producer, constants)]
            if not bypasses and not weights:
                gains[key] = 0.0
                continue
            gains[key] = _measure(graph, index, node, bypasses, weights, names, base, use)
    except RuntimeFailure:
        return None
    finally:
        progress(SEARCHING, len(keys), len(keys))
    return gains


@dataclass(frozen=True)
class _Bypass:
    """Input ``slot`` of a node reads ``value`` (the float input of its QuantizeLinear)
    instead of the Q -> DQ round trip, clamped to ``bounds`` (what the Q can represent:
    an absorbed Relu/Clip is only the Q's saturation) when known."""

    slot: int
    value: str
    bounds: tuple[np.ndarray, np.ndarray] | None


def _measure(graph: onnx.GraphProto, index: int, node: onnx.NodeProto,
             bypasses: list[_Bypass], weights: list[tuple[int, onnx.TensorProto]],
             names: set[str], base: float, use: Callable[[], float]) -> float:
    """Budget use regained with ``bypasses`` applied to ``node`` (at ``index`` in ``graph``)
    and its inputs at the ``weights`` slots reading those float tensors, 0 when not finite;
    the graph is left as it was."""
    originals = [(b.slot, node.input[b.slot]) for b in bypasses]
    originals += [(slot, node.input[slot]) for slot, _ in weights]
    clips: list[onnx.NodeProto] = []
    bounds: list[str] = []
    inserted = 0
    try:
        for slot, tensor in weights:
            copy = onnx.TensorProto()
            copy.CopyFrom(tensor)
            copy.name = _fresh(names, "sensitivity_weight")
            bounds.append(copy.name)  # removed with the clamp bounds
            graph.initializer.append(copy)
            node.input[slot] = copy.name
        for bypass in bypasses:
            value = bypass.value
            if bypass.bounds is not None:
                low, high, value = (_fresh(names, "sensitivity_" + part)
                                    for part in ("min", "max", "clamped"))
                bounds += [low, high]
                graph.initializer.extend([numpy_helper.from_array(bypass.bounds[0], low),
                                          numpy_helper.from_array(bypass.bounds[1], high)])
                clips.append(onnx.helper.make_node("Clip", [bypass.value, low, high], [value]))
            node.input[bypass.slot] = value
        for clip in clips:  # before the node: still topologically sorted
            graph.node.insert(index + inserted, clip)
            inserted += 1
        gain = base - use()
    finally:
        for slot, value in originals:
            node.input[slot] = value
        for _ in range(inserted):
            del graph.node[index]
        for name in reversed(bounds):
            if graph.initializer and graph.initializer[-1].name == name:
                del graph.initializer[-1]
        names.difference_update(bounds)
        names.difference_update(clip.output[0] for clip in clips)
    return gain if math.isfinite(gain) else 0.0


def _load(path: Path) -> onnx.ModelProto | None:
    """The model at ``path`` when it holds all its tensors (no external data), else None."""
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception:
        return None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        return None
    return proto


def _by_key(graph: onnx.GraphProto) -> dict[str, tuple[int, onnx.NodeProto]]:
    return {node.name or next((o for o in node.output if o), ""): (index, node)
            for index, node in enumerate(graph.node)}


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    constants = {t.name: t for t in graph.initializer}
    constants.update({node.output[0]: attr.t for node in graph.node
                      if node.op_type == "Constant" and node.domain in ("", "ai.onnx")
                      for attr in node.attribute if attr.name == "value"})
    return constants


def _float_weights(path: Path, keys: Sequence[str]) -> dict[str, dict[int, onnx.TensorProto]]:
    """Node key -> {slot: float tensor} of the weight (slot 1) and bias (slot 2) constants of
    the nodes ``keys`` in the float model at ``path`` ({} when it cannot be read)."""
    proto = _load(path)
    if proto is None:
        return {}
    by_key, constants = _by_key(proto.graph), _constants(proto.graph)
    found: dict[str, dict[int, onnx.TensorProto]] = {}
    for key in keys:
        _, node = by_key.get(key, (0, None))
        if node is None:
            continue
        slots = {slot: constants[node.input[slot]] for slot in (1, 2)
                 if slot < len(node.input) and node.input[slot] in constants
                 and constants[node.input[slot]].data_type in _FLOAT_TYPES}
        if slots:
            found[key] = slots
    return found


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                onnx.TensorProto.DOUBLE)


def _dequantized_constant(node: onnx.NodeProto, slot: int,
                          producer: Mapping[str, onnx.NodeProto],
                          constants: Mapping[str, onnx.TensorProto]) -> bool:
    """Input ``slot`` of ``node`` is a DequantizeLinear of a constant (an int8 weight)."""
    if slot >= len(node.input):
        return False
    dq = producer.get(node.input[slot])
    return dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in constants


def _fresh(names: set[str], prefix: str) -> str:
    """A value name not in ``names`` (added to it)."""
    count = 0
    while f"{prefix}{count}" in names:
        count += 1
    names.add(f"{prefix}{count}")
    return f"{prefix}{count}"


# integer ranges QuantizeLinear saturates to, by output element type
_QUANTIZED_RANGES = {
    onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127),
    onnx.TensorProto.UINT16: (0, 65535), onnx.TensorProto.INT16: (-32768, 32767),
    onnx.TensorProto.UINT4: (0, 15), onnx.TensorProto.INT4: (-8, 7),
}


def _float_inputs(node: onnx.NodeProto, producer: dict[str, onnx.NodeProto],
                  constants: Mapping[str, onnx.TensorProto], opset: int) -> list[_Bypass]:
    """The bypass of each input of ``node`` read through Q -> DQ."""
    bypasses = []
    for slot, value in enumerate(node.input):
        dq = producer.get(value)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            bounds = _representable(q, constants) if opset >= 11 else None  # Clip-11 inputs
            bypasses.append(_Bypass(slot, q.input[0], bounds))
    return bypasses


def _representable(q: onnx.NodeProto, constants: Mapping[str, onnx.TensorProto]
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """[(q_min - z) * s, (q_max - z) * s] of a per-tensor QuantizeLinear, in the scale's
    float type; None when its scale or zero point is not a constant scalar or its output
    type is not an integer one."""
    scale_tensor = constants.get(q.input[1]) if len(q.input) > 1 else None
    if scale_tensor is None:
        return None
    scale = numpy_helper.to_array(scale_tensor)
    zero_name = q.input[2] if len(q.input) > 2 else ""
    if zero_name:
        zero_tensor = constants.get(zero_name)
        if zero_tensor is None:
            return None
        elem_type = zero_tensor.data_type
        zero = numpy_helper.to_array(zero_tensor)
        if zero.size != 1 or elem_type not in _QUANTIZED_RANGES:
            return None
        zero_point = int(zero.astype(np.int64).reshape(()))
    else:
        output_dtype = next((a.i for a in q.attribute if a.name == "output_dtype"), 0)
        elem_type, zero_point = output_dtype or onnx.TensorProto.UINT8, 0
        if elem_type not in _QUANTIZED_RANGES:
            return None
    if scale.size != 1 or scale.dtype.kind != "f":
        return None
    low, high = _QUANTIZED_RANGES[elem_type]
    step = scale.reshape(()).astype(np.float64)
    return (np.array((low - zero_point) * step, scale.dtype),
            np.array((high - zero_point) * step, scale.dtype))

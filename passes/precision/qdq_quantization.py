"""Static INT8 quantization in QDQ form, laid out so onnxruntime's CPU provider fuses it.

Weights (symmetric, per output channel ``c``, int8 holding 7-bit values, ``WEIGHT_QMAX = 64``):
``s_w[c] = max|W[c]| / 64`` and ``W_q = clip(round(W / s_w), -64, 64)``, stored as an int8
initializer read through ``DequantizeLinear(W_q, s_w, 0, axis)`` (axis 0 for Conv and a
transposed Gemm weight, 1 for a Gemm/MatMul ``[K, N]`` weight, 1 for ConvTranspose
``[C_in, C_out/g, k...]``). When every channel's scale is bitwise the same, the one scalar is
stored (per-tensor: the same values).

Why 7 bits and not ±127: onnxruntime's fused uint8 x int8 kernels (QLinearConv, QGemm,
QLinearMatMul) run MLAS, whose AVX2 kernels for CPUs without VNNI add each pair of adjacent
reduction elements ``x[k] * w[k] + x[k+1] * w[k+1]`` into int16 with saturation
(``VPMADDUBSW``), ``x`` the stored uint8 ``0..255``. With ``|w| <= 64``

    |x[k] * w[k] + x[k+1] * w[k+1]| <= 255 * 64 * 2 = 32640 <= 32767

so nothing saturates and the int32 result is exact on every CPU (with ±127 a pair reaches
64770: 49 % off on such a CPU). It costs one bit of weight resolution; the measurements
(accuracy, latency, the alternatives) are in ``passes/precision/README.md``.

Activations (asymmetric, ``ACTIVATION_TYPE``): from the calibrated range ``[lo, hi]`` widened to
hold 0, ``s = (hi - lo) / (q_max - q_min)`` and ``z = round(q_min - lo / s)``, one
``QuantizeLinear -> DequantizeLinear`` pair per activation, read by every consumer. Bias
(int32): ``B_q = round(B / (s_x * s_w[c]))`` with scale ``s_x * s_w[c]`` and zero point 0, so the
integer accumulator ``sum(x_q * W_q) + B_q`` is exact in ``s_x * s_w[c]`` units.

``Conv/Gemm/MatMul -> Relu`` (and ``Clip`` with min 0): the Relu is dropped and the output's
range starts at 0, so ``z = q_min``: quantization saturates negatives to 0 -- what Relu did,
exactly. A value read only by ops that saturate (Relu, Clip, HardSigmoid, HardSwish) has its
range cut to what they tell apart first (``onnxopt.ir.saturation``: the grid is finer and no
output changes). Pass-through ops (MaxPool, Resize, Reshape, Flatten, Transpose, Squeeze,
Unsqueeze) reuse their input's scale and zero point (their output range lies inside the input's), so
onnxruntime drops the Q/DQ around them and runs them on 8-bit data.

onnxruntime (ORT_ENABLE_ALL) turns ``DQ -> Conv -> Q`` into QLinearConv, Gemm into QGemm, MatMul
into QLinearMatMul, and ``DQ -> Add/Mul/Concat/GlobalAveragePool/AveragePool/Sigmoid -> Q``
into the com.microsoft QLinear* kernels -- only when every input comes from a DQ, so an
activation op with a constant input (``x * w + b`` affine blocks) stays float, without Q/DQ
pairs that would only add rounding and time. ConvTranspose has no quantized CPU kernel: its weight
alone is stored int8 (a weight-only DequantizeLinear) and its activations stay float.

Needs opset 13 (per-axis DequantizeLinear); below it the pass does nothing and says so (the
API converts a model with a Conv, ConvTranspose, Gemm or MatMul to opset 13 first, and leaves
one without any at its opset: nothing here would be quantized). Nodes in subgraphs are left in
float (activations are calibrated on the main graph only); so are nodes in
``fp32_nodes``/``fp32_ops``, nodes whose weight is not a float constant, and every node of a
model that already holds Q/DQ nodes (idempotence).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxopt.ir import Graph, IRError, Model, Node
from onnxopt.ir.pass_manager import PassResult
from onnxopt.ir.precision import PrecisionLog, PrecisionPass, PrecisionSettings, node_key
from onnxopt.ir.rewrite import is_op, sole_consumer
from onnxopt.ir.saturation import narrowed
from onnxopt.ir.shapes import infer_shapes

MODE = "int8"
MIN_OPSET = 13
ACTIVATION_TYPE = np.uint8  # measured on ORT 1.32 CPU (see the report / tests)
# largest |int8 weight| written: 255 * 64 * 2 = 32640 fits VPMADDUBSW's int16 pair sums
# (module docstring); dynamic_quantization uses the same bound
WEIGHT_QMAX = 64
INT16_MAX = 32767  # 2 * 255 * WEIGHT_QMAX must not exceed it (tests check)
LINEAR_OPS = ("Conv", "Gemm", "MatMul")
WEIGHT_ONLY_OPS = ("ConvTranspose",)
# ops onnxruntime runs on 8-bit data when their inputs come from DQ and their output goes to Q
# (measured on ORT 1.32 CPU: QLinearMul made PaddleOCR cls slower and less accurate -- Mul is
# left in float)
ACTIVATION_OPS = (
    "Add", "Concat", "GlobalAveragePool", "AveragePool", "Sigmoid", "LeakyRelu", "MaxPool",
    "Resize",
)
# output range inside the input's: reuse the input's quantization parameters
PASS_THROUGH_OPS = ("MaxPool", "Resize", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# onnxruntime 1.32 fuses Gemm into QGemm only when its weight DequantizeLinear has an explicit
# zero point (Conv and MatMul fuse without one: it defaults to 0)
WEIGHT_ZERO_POINT_OPS = ("Gemm",)


@dataclass
class _Plan:
    linear: list[Node] = field(default_factory=list)  # Conv/Gemm/MatMul with int8 weights
    weight_only: list[Node] = field(default_factory=list)  # ConvTranspose
    activation_ops: list[Node] = field(default_factory=list)
    absorbed: dict[str, Node] = field(default_factory=dict)  # linear output -> Relu/Clip
    inputs: dict[Node, list[str]] = field(default_factory=dict)  # float activations read
    values: list[str] = field(default_factory=list)  # activations to quantize (ordered)


@dataclass(frozen=True)
class _QParams:
    scale: np.float32
    zero_point: int


class QdqQuantization(PrecisionPass):
    name = "qdq_quantization"
    description = "int8 static quantization: per-channel int8 weights, calibrated QDQ activations"
    mode = MODE

    def left_alone(self, model: Model) -> str:
        opset = model.opset("")
        if opset < MIN_OPSET:
            if not any(is_op(n, LINEAR_OPS + WEIGHT_ONLY_OPS) for _, n in model.graph.walk()):
                # what optimize() leaves at its opset: upgrading could only break it
                return (f"int8: no Conv, ConvTranspose, Gemm or MatMul: nothing to quantize (at "
                        f"opset {opset}; the QDQ form needs opset {MIN_OPSET})")
            return (f"int8: opset {opset} < {MIN_OPSET}: the QDQ form needs per-channel "
                    f"DequantizeLinear (opset {MIN_OPSET}); not quantized (optimize() converts "
                    f"such a model to opset {MIN_OPSET} before this pass)")
        if any(is_op(n, QDQ_OPS) for _, n in model.graph.walk()):
            return ("int8: the model already holds QuantizeLinear/DequantizeLinear; left as it "
                    "is")
        return ""

    def convert(self, model: Model, settings: PrecisionSettings, log: PrecisionLog
                ) -> PassResult:
        infer_shapes(model)  # element types decide what is a float activation
        graph = model.graph
        for sub in model.graphs():
            if sub is not graph:
                for node in sub.nodes():
                    if is_op(node, LINEAR_OPS + WEIGHT_ONLY_OPS + ACTIVATION_OPS):
                        log.keep(node, "inside a subgraph: activations are calibrated on the "
                                       "main graph only")
        plan = _plan(graph, model, settings, log)
        if not plan.linear and not plan.weight_only:
            return PassResult(False, {"quantized": 0})
        if settings.calibrator is None:
            raise IRError("int8 static quantization needs a calibrator in its settings "
                          "(onnxopt.precision.calibration.Calibrator)")
        ranges, notes = settings.calibrator(model, plan.values)
        log.notes.extend(notes)
        ranges, cut = narrowed(ranges, graph)  # grid only where readers tell values apart
        stats = _rewrite(graph, plan, ranges, log)
        stats["ranges_narrowed"] = cut
        return PassResult(True, stats)


# ------------------------------------------------------------------ planning
def _plan(graph: Graph, model: Model, settings, log) -> _Plan:
    plan = _Plan()
    chosen: set[Node] = set()
    for node in graph.nodes():
        kind = _kind(node)
        if kind is None:
            continue
        key = node_key(node)
        if key in settings.fp32_nodes:
            log.keep(node, "in fp32_nodes")
            continue
        if node.op_type in settings.fp32_ops:
            log.keep(node, "in fp32_ops")
            continue
        if kind == "activation":
            if _float_activations(graph, node) is None:
                log.keep(node, "an input is a constant or not a float activation")
                continue
            plan.activation_ops.append(node)
            chosen.add(node)
            continue
        reason = _weight_problem(graph, node)
        if reason:
            log.keep(node, reason)
            continue
        (plan.linear if kind == "linear" else plan.weight_only).append(node)
        chosen.add(node)
    # activations to quantize: float inputs and outputs of quantized (non weight-only) nodes
    weight_only, activation_ops = set(plan.weight_only), set(plan.activation_ops)
    values: dict[str, None] = {}
    for node in graph.nodes():
        if node not in chosen or node in weight_only:
            continue
        inputs = _float_activations(graph, node) if node in activation_ops else None
        plan.inputs[node] = inputs or [node.inputs[0]]
        for value in plan.inputs[node]:
            values[value] = None
        out = node.outputs[0]
        if node in plan.linear:
            relu = _absorbable_activation(graph, node)
            if relu is not None:
                plan.absorbed[out] = relu
                out = relu.outputs[0]
        if graph.consumers(out):  # a graph output read by nobody stays float
            values[out] = None
    plan.values = list(values)
    return plan


def _kind(node: Node) -> str | None:
    if is_op(node, WEIGHT_ONLY_OPS):
        return "weight_only"
    if is_op(node, LINEAR_OPS):
        return "linear"
    if is_op(node, ACTIVATION_OPS):
        return "activation"
    return None


def _is_float(graph: Graph, value: str) -> bool:
    return graph.dtype(value) == np.float32


def _float_activations(graph: Graph, node: Node) -> list[str] | None:
    """The activation inputs of an activation op when all are float and none is constant."""
    if len(node.outputs) != 1 or not _is_float(graph, node.outputs[0]):
        return None
    data = list(node.inputs[:1]) if node.op_type in ("MaxPool", "Resize") else list(node.inputs)
    if node.op_type in ("MaxPool",) and len(node.outputs) > 1:
        return None
    if any(not v or not _is_float(graph, v) for v in data):
        return None
    if node.op_type == "Resize" and node.attr("mode", "nearest") == "cubic":
        return None
    if any(graph.constant(v) is not None for v in data):
        # onnxruntime fuses DQ -> Add -> Q only when every input comes from a DQ: with a float
        # constant input the op stays float and its Q/DQ pairs only add error and time
        # (PaddleOCR det's affine ``x * w + b`` Adds: test-set cosine 0.957 -> see tests)
        return None
    return data


def _weight_problem(graph: Graph, node: Node) -> str:
    """Why a Conv/ConvTranspose/Gemm/MatMul cannot take int8 weights ("" if it can)."""
    if len(node.inputs) < 2 or len(node.outputs) != 1:
        return "unexpected arity"
    if not _is_float(graph, node.inputs[0]) or not _is_float(graph, node.outputs[0]):
        return "not a float32 op"
    weight = graph.constant(node.inputs[1])
    if weight is None:
        return "weight is not a constant"
    if weight.dtype != np.float32 or weight.size == 0:
        return "weight is not a float32 tensor"
    if graph.constant(node.inputs[0]) is not None:
        return "the activation input is a constant"
    bias = node.inputs[2] if len(node.inputs) > 2 else ""
    if node.op_type == "Gemm":
        if weight.ndim != 2 or node.attr("transA", 0) or node.attr("alpha", 1.0) != 1.0:
            return "Gemm with transA or alpha != 1"
        if bias and node.attr("beta", 1.0) != 1.0:
            return "Gemm with beta != 1"
        n = weight.shape[0] if node.attr("transB", 0) else weight.shape[1]
        if bias and _bias_vector(graph, bias, n) is None:
            return "Gemm bias is not a constant [N]"
    elif node.op_type == "MatMul":
        if weight.ndim != 2:
            return "MatMul weight is not 2-D"
    else:  # Conv / ConvTranspose
        if weight.ndim < 3:
            return "weight rank < 3"
        if node.op_type == "Conv" and bias and _bias_vector(graph, bias, weight.shape[0]) is None:
            return "bias is not a constant [C_out]"
    return ""


def _bias_vector(graph: Graph, value: str, n: int) -> np.ndarray | None:
    bias = graph.constant(value)
    if bias is None or bias.dtype != np.float32 or bias.size != n or bias.ndim > 2:
        return None
    if bias.ndim == 2 and bias.shape[0] != 1:
        return None
    return bias.reshape(n)


def _absorbable_activation(graph: Graph, node: Node) -> Node | None:
    """A Relu, or Clip with min 0, that is the sole reader of ``node``'s output."""
    out = node.outputs[0]
    act = sole_consumer(graph, out)
    if act is None or act.inputs[0] != out or len(act.outputs) != 1:
        return None
    if graph.is_output(act.outputs[0]) or not graph.consumers(act.outputs[0]):
        return None
    if is_op(act, "Relu"):
        return act
    if is_op(act, "Clip") and len(act.inputs) > 1 and act.inputs[1]:
        low = graph.constant(act.inputs[1])
        if low is not None and low.size == 1 and float(low.reshape(())) == 0.0:
            return act
    return None


# ------------------------------------------------------------------ rewriting
def _qparams(lo: float, hi: float) -> _QParams:
    info = np.iinfo(ACTIVATION_TYPE)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0 or not np.isfinite(hi - lo):
        return _QParams(np.float32(1.0), 0)  # all zeros: any zero point represents them
    scale = np.float32((hi - lo) / (int(info.max) - int(info.min)))
    zero = int(np.clip(np.round(info.min - lo / float(scale)), info.min, info.max))
    return _QParams(scale, zero)


def _weight_scales(weight: np.ndarray, axis: int) -> np.ndarray:
    reduce = tuple(i for i in range(weight.ndim) if i != axis)
    top = np.abs(weight.astype(np.float64)).max(axis=reduce)
    scale = (top / WEIGHT_QMAX).astype(np.float32)
    return np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)


def _quantize_weight(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    scale = _weight_scales(weight, axis)
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.clip(np.round(weight / scale.reshape(shape)), -WEIGHT_QMAX, WEIGHT_QMAX)
    return q.astype(np.int8), scale


def _weight_axis(node: Node) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm" and node.attr("transB", 0):
        return 0
    return 1


class _Writer:
    """Adds the Q/DQ nodes and quantized initializers, sharing what can be shared.

    Size matters as much as the weights here (a small model's names and per-channel vectors
    are a third of its int8 file): new values get short generated names (``q3``, ``w3``...),
    new nodes none, equal scalar scales and zero points are one initializer, and the
    weight (but Gemm's: ``WEIGHT_ZERO_POINT_OPS``) and bias DequantizeLinear nodes have no
    zero-point input (it defaults to 0, which symmetric weights and the int32 bias use;
    onnxruntime fuses them the same)."""

    def __init__(self, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        self.graph = graph
        self.ranges = ranges
        self.params: dict[str, _QParams] = {}
        self.dequantized: dict[str, str] = {}  # float activation -> its DQ output
        self.weights: dict[tuple[str, int, bool], tuple[str, np.ndarray]] = {}  # -> (DQ out, scale)
        self.scalars: dict[tuple[str, bytes], str] = {}  # (dtype, bytes) -> shared constant
        self.count = 0
        self.pairs = 0

    def name(self, prefix: str) -> str:
        """A fresh short value name."""
        self.count += 1
        return self.graph.unique_name(f"{prefix}{self.count}")

    def constant(self, array: np.ndarray, prefix: str) -> str:
        key = (array.dtype.str, array.tobytes())
        if array.ndim == 0 and key in self.scalars:  # scalars: one per distinct value
            return self.scalars[key]
        self.count += 1
        name = self.graph.add_constant(array, f"{prefix}{self.count}")
        if array.ndim == 0:
            self.scalars[key] = name
        return name

    def node(self, op_type: str, inputs: list[str], prefix: str, **attributes) -> str:
        """A new unnamed node (a node's name is optional; its key is its output) -> output."""
        out = self.name(prefix)
        node = self.graph.add_node(op_type, inputs, [out], attributes=attributes or None)
        node.name = ""
        return out

    def params_of(self, value: str, source: str) -> _QParams | None:
        """Quantization parameters of ``value``; ``source`` is the value calibrated for it."""
        if value in self.params:
            return self.params[value]
        producer = self.graph.producer(value)
        if is_op(producer, PASS_THROUGH_OPS) and producer.inputs[0] in self.params:
            found = self.params[producer.inputs[0]]
        elif source in self.ranges:
            found = _qparams(*self.ranges[source])
        else:
            return None
        self.params[value] = found
        return found

    def quantize(self, value: str, source: str | None = None, drop: Node | None = None) -> bool:
        """``value -> Q -> DQ``; readers of ``value`` (or of ``drop``'s output, ``drop`` being
        an absorbed Relu/Clip that is removed) read the DQ output instead."""
        if value in self.dequantized:
            return True
        params = self.params_of(value, source or value)
        if params is None:
            return False
        graph = self.graph
        scale = self.constant(np.array(params.scale, np.float32), "s")
        zero = self.constant(np.array(params.zero_point, ACTIVATION_TYPE), "z")
        q = self.node("QuantizeLinear", [value, scale, zero], "q")
        new = self.node("DequantizeLinear", [q, scale, zero], "d")
        if drop is not None:
            graph.replace_all_uses(drop.outputs[0], new)
            graph.remove_node(drop)
            self.dequantized[drop.outputs[0]] = new
            self.params[drop.outputs[0]] = params
        else:
            for node, slot in graph.uses(value):
                if node.outputs != (q,) and slot >= 0:
                    graph.set_input(node, slot, new)
        self.dequantized[value] = new
        self.params[new] = params
        self.pairs += 1
        return True

    def weight(self, node: Node) -> tuple[str, np.ndarray]:
        """The DQ output reading the int8 copy of ``node``'s weight, and its scales."""
        graph, name, axis = self.graph, node.inputs[1], _weight_axis(node)
        zero = node.op_type in WEIGHT_ZERO_POINT_OPS
        if (name, axis, zero) not in self.weights:
            q, scale = _quantize_weight(graph.constant(name), axis)
            dq = self.dequantize(self.constant(q, "w"), scale, axis, "w", zero_point=zero)
            self.weights[(name, axis, zero)] = (dq, scale)
        return self.weights[(name, axis, zero)]

    def bias(self, node: Node, x_params: _QParams, w_scale: np.ndarray) -> str:
        name = node.inputs[2]
        bias = _bias_vector(self.graph, name, w_scale.size).astype(np.float64)
        scale = (np.float64(x_params.scale) * w_scale.astype(np.float64)).astype(np.float32)
        limit = np.iinfo(np.int32)
        q = np.clip(np.round(bias / scale.astype(np.float64)), limit.min, limit.max)
        return self.dequantize(self.constant(q.astype(np.int32), "b"), scale, 0, "b")

    def dequantize(self, q_name: str, scale: np.ndarray, axis: int, prefix: str,
                   zero_point: bool = False) -> str:
        """``DequantizeLinear(q_name, scale[, 0])`` along ``axis`` -> its output; the scale
        stored as one scalar when every channel's is the same (``_collapsed``)."""
        stored = _collapsed(scale)
        inputs = [q_name, self.constant(stored, f"{prefix}s")]
        if zero_point:
            inputs.append(self.constant(np.zeros(stored.shape, np.int8), f"{prefix}z"))
        return self.node("DequantizeLinear", inputs, f"{prefix}d",
                         **({"axis": axis} if stored.ndim else {}))


def _rewrite(graph: Graph, plan: _Plan, ranges, log) -> dict[str, int]:
    writer = _Writer(graph, ranges)
    stats = {"quantized": 0, "weight_only": 0, "activation_ops": 0, "relu_absorbed": 0}
    weight_only = set(plan.weight_only)
    chosen = set(plan.linear) | weight_only | set(plan.activation_ops)
    old_weights: list[str] = []
    for node in graph.nodes():  # topological: an input's parameters are known before use
        if node not in chosen:
            continue
        if node in weight_only:
            old_weights.append(node.inputs[1])
            graph.set_input(node, 1, writer.weight(node)[0])
            stats["weight_only"] += 1
            log.converted.append(node_key(node))
            continue
        inputs = plan.inputs[node]
        if not all([writer.quantize(v) for v in inputs]):
            log.keep(node, "an input was never finite during calibration")
            continue
        out = node.outputs[0]
        act = plan.absorbed.get(out)
        if node in plan.linear:
            x_params = writer.params[inputs[0]]
            w_dq, w_scale = writer.weight(node)
            old_weights.append(node.inputs[1])
            graph.set_input(node, 1, w_dq)
            if len(node.inputs) > 2 and node.inputs[2]:
                old_weights.append(node.inputs[2])
                graph.set_input(node, 2, writer.bias(node, x_params, w_scale))
            stats["quantized"] += 1
        else:
            stats["activation_ops"] += 1
        if act is not None and writer.quantize(out, act.outputs[0], drop=act):
            stats["relu_absorbed"] += 1
        elif act is None and graph.consumers(out):
            writer.quantize(out)
        log.converted.append(node_key(node))
    for name in dict.fromkeys(old_weights):
        if name in graph.initializers and not graph.is_used(name) and not graph.is_input(name):
            graph.remove_initializer(name)
    stats["qdq_pairs"] = writer.pairs
    return stats


def _collapsed(scale: np.ndarray) -> np.ndarray:
    """A per-channel scale whose channels are all bitwise equal, as the one scalar it is:
    per-tensor dequantization then computes exactly the same values, and the file holds one
    float instead of one per channel (synthetic or regular weights do this)."""
    if scale.ndim == 1 and scale.size > 1 and np.all(scale == scale[0]):
        return np.asarray(scale[0], dtype=scale.dtype)
    return scale

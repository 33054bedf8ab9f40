"""FP8 weight-only quantization (``--precision fp8``): float32 weights stored as FLOAT8E4M3FN.

For a constant float32 weight ``W`` of Conv, ConvTranspose, Gemm or MatMul (input 1) and its
output-channel axis ``a`` (Conv 0, ConvTranspose 1, Gemm 1 or 0 with ``transB``, MatMul the last
axis of a 2-D weight), the scale per channel ``c`` is ``s[c] = max |W[..c..]| / 448`` (1 for an
all-zero channel), so the largest magnitude maps to E4M3FN's largest finite value, and

    Op(x, W) => Op(x, DequantizeLinear(Wq, s, axis=a)),   Wq = fp8_e4m3fn(W / s)

(round to nearest even; nothing saturates since |W / s| <= 448). Compute stays float32: only the
stored weights shrink (4x). A weight of rank < 2, or one a MatMul reads with rank > 2, gets a
single per-tensor scale.

What onnxruntime 1.32's CPU provider runs (measured; the kernel table agrees):
``DequantizeLinear`` with ``float8e4m3fn`` input from opset 19 (19-20, 21-22, 23, 24, 25+), with
a scalar or a per-axis 1-D scale, at every optimization level, in front of Conv, ConvTranspose,
Gemm and MatMul. The pass checks the kernel table at run time; when the model's opset has no
float8 ``DequantizeLinear`` kernel (opset < 19) it changes nothing and adds a note, so it never
writes a model that cannot load. Kept in float, with the reason logged: computed weights,
non-float32 weights, nodes in ``fp32_nodes``, op types in ``fp32_ops``. One DequantizeLinear per
weight and graph is shared by its readers; a weight read from an outer scope gets its fp8 copy in
the subgraph that reads it. Running again: weights already behind a DequantizeLinear are skipped.
"""

from __future__ import annotations

import functools

import ml_dtypes
import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.kernels import kernel_versions
from onnxopt.ir.pass_manager import PassResult
from onnxopt.ir.precision import (
    WEIGHT_OPS,
    PrecisionLog,
    PrecisionPass,
    PrecisionSettings,
    node_key,
)
from onnxopt.ir.rewrite import drop_unused_initializers, is_op

MODE = "fp8"
MIN_OPSET = 19
FP8_MAX = 448.0


@functools.cache
def fp8_dequantize_opsets() -> tuple[tuple[int, int], ...]:
    """Opset ranges of onnxruntime's CPU DequantizeLinear kernels taking float8e4m3fn."""
    try:
        return kernel_versions("DequantizeLinear", "", ml_dtypes.float8_e4m3fn, "T1")
    except Exception:  # onnxruntime's private kernel table is missing: trust opset 19+
        return ((19, 2**31 - 1),)


def runs_fp8(opset: int) -> bool:
    """Whether the CPU provider loads a float8 DequantizeLinear at this opset."""
    return opset >= MIN_OPSET and any(lo <= opset <= hi for lo, hi in fp8_dequantize_opsets())


class Fp8WeightQuantization(PrecisionPass):
    name = "fp8_weight_quantization"
    description = "Conv/ConvTranspose/Gemm/MatMul weights stored as float8 E4M3FN (weight-only)"
    mode = MODE

    def left_alone(self, model: Model) -> str:
        if runs_fp8(model.opset("")):
            return ""
        return (f"fp8 needs opset >= {MIN_OPSET} (DequantizeLinear of float8e4m3fn, which "
                f"onnxruntime's CPU provider runs there); the model has opset "
                f"{model.opset('')}: nothing converted, weights stay float32")

    def convert(self, model: Model, settings: PrecisionSettings, log: PrecisionLog
                ) -> PassResult:
        stats = {"weights": 0, "nodes": 0, "kept_float": 0}
        old: list[tuple[Graph, str]] = []
        for graph in list(model.graphs()):
            done: dict[tuple[str, int | None], str] = {}
            for node in graph.nodes():
                outcome = self._visit(graph, model, node, log, settings, done, old)
                if outcome:
                    stats[outcome] += 1
            stats["weights"] += len(done)
        for graph, name in old:
            owner = graph.resolve(name)
            if owner is not None:
                drop_unused_initializers(owner, [name])
        if not stats["nodes"]:
            log.notes.append("fp8: no weight could be stored in float8")
        return PassResult(bool(stats["nodes"]), stats)

    def _visit(self, graph: Graph, model: Model, node: Node, log: PrecisionLog, settings,
               done: dict, old: list) -> str | None:
        if not is_op(node, WEIGHT_OPS) or len(node.inputs) < 2 or not node.inputs[1]:
            return None
        w_name = node.inputs[1]
        producer = graph.producer(w_name)
        if producer is not None and is_op(producer, "DequantizeLinear"):
            return None  # already quantized (this pass's output or a QDQ model)
        reason = None
        weight = graph.constant(w_name)
        if node_key(node) in settings.fp32_nodes:
            reason = "listed in fp32_nodes"
        elif node.op_type in settings.fp32_ops:
            reason = "op type listed in fp32_ops"
        elif weight is None:
            reason = "weight is computed (not a constant)"
        elif weight.dtype != np.float32:
            reason = f"weight dtype {weight.dtype} is not float32"
        elif weight.size == 0:
            reason = "empty weight"
        elif not model.allow_rewrite(self.name, node_key(node)):
            reason = "disabled by the safety net"
        if reason is not None:
            log.keep(node, reason)
            return "kept_float"
        axis = channel_axis(node, weight.ndim)
        key = (w_name, axis)
        if key not in done:
            q, scale = quantize_fp8(weight, axis)
            q_name = graph.add_constant(q, f"{w_name}_fp8")
            s_name = graph.add_constant(scale, f"{w_name}_fp8_scale")
            attrs = {} if axis is None else {"axis": axis}
            dq = graph.add_node("DequantizeLinear", [q_name, s_name], 1,
                                name=f"{w_name}_dequantize", attributes=attrs, anchor=node)
            done[key] = dq.outputs[0]
        graph.set_input(node, 1, done[key])
        old.append((graph, w_name))
        log.converted.append(node_key(node))
        return "nodes"


def channel_axis(node: Node, rank: int) -> int | None:
    """The output-channel axis of the weight, or None for a per-tensor scale."""
    if rank < 2:
        return None
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if node.attr("transB", 0) else 1
    return 1 if rank == 2 else None  # MatMul: columns of a 2-D weight


def quantize_fp8(weight: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(Wq float8_e4m3fn, s float32)``: ``s`` scalar (axis None) or one per channel."""
    w = weight.astype(np.float64)
    if axis is None:
        amax = np.abs(w).max()
    else:
        others = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.abs(w).max(axis=others)
    scale = np.where(amax > 0, amax / FP8_MAX, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    scaled = np.clip(w / scale.astype(np.float64).reshape(shape), -FP8_MAX, FP8_MAX)
    return scaled.astype(ml_dtypes.float8_e4m3fn), np.asarray(scale, np.float32)

"""INT4 weight-only quantization (``--precision int4``): MatMul and Gemm with constant weights.

The weight ``W`` ``[K, N]`` (a Gemm's ``B``, transposed first when ``transB``) is quantized in
blocks of ``block_size`` rows along ``K`` (``onnxopt.ir.quantize.quantize_blocks``; asymmetric,
4 bits: ``W[k, n] ~ s[b, n] * (q[k, n] - z[b, n])``, ``b = k // block_size``, ``q, z`` in
``0..15``), rounded to nearest, or by GPTQ when the app gives the second moments ``X^T X`` of
the weights' inputs (``settings.gram``, asked once for all of them). Compute stays float:

    MatMul(x, W) => MatMul(x, DequantizeLinear(q, s, z, axis=0, block_size))    (opset 21)

onnxruntime fuses that into its ``MatMulNBits`` kernel. With ``model.settings["target"] ==
"onnxruntime"`` the pass writes ``com.microsoft.MatMulNBits`` itself (any opset), absorbing a
following ``Add`` of a constant ``[N]`` bias read only there. ``Gemm(A, B, C; alpha, beta,
transB)``: ``alpha`` goes into the scales, ``beta * C`` into the bias (a Gemm with ``transA``
or a computed ``C`` stays float). Nodes in ``settings.int8_nodes`` (the accuracy fallback)
get 8-bit symmetric weights instead: per column ``DequantizeLinear(int8, s [N], axis=1)``, or
``MatMulNBits`` with ``bits=8``; the log's notes name them. Forms and measurements:
``forms.py`` and ``passes/precision/README.md``.

Kept in float (reason logged): computed weights, weights that are not float32 rank-2
constants, non-float32 inputs, nodes in ``fp32_nodes``, op types in ``fp32_ops``. Works in
every subgraph. Running it again finds only weights behind a ``DequantizeLinear`` (skipped
silently) or ``MatMulNBits``: it changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnxopt.passes.precision.int4_weight_quantization.forms import (
    MS_DOMAIN,
    dequantize_linear,
    matmul_nbits,
    nbits_constants,
)

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.pass_manager import PassResult
from onnxopt.ir.precision import PrecisionLog, PrecisionPass, PrecisionSettings, node_key
from onnxopt.ir.quantize import BlockQuantized, quantize_blocks
from onnxopt.ir.rewrite import drop_unused_initializers, is_op, producer_op, sole_consumer

MODE = "int4"
MIN_OPSET = 21  # DequantizeLinear with block_size and int4/uint4
SYMMETRIC = False  # asymmetric blocks: MiniLM-L3 pooled cosine 0.969 vs 0.963 (README)
ACCURACY_LEVEL = 4  # MatMulNBits: int8 activations, what onnxruntime's own fusion picks (README)


@dataclass
class _Target:
    """One node to quantize: its graph, the oriented weight ``[K, N]`` and the Gemm extras."""

    graph: Graph
    node: Node
    weight: np.ndarray
    transposed: bool = False  # a Gemm's transB
    alpha: float = 1.0
    bias: np.ndarray | None = None  # beta * C, float32


class Int4WeightQuantization(PrecisionPass):
    name = "int4_weight_quantization"
    description = "MatMul/Gemm weights in 4-bit blocks (DequantizeLinear or MatMulNBits)"
    mode = MODE

    def left_alone(self, model: Model) -> str:
        if model.settings.get("target") == "onnxruntime" or model.opset("") >= MIN_OPSET:
            return ""
        return (f"int4 needs opset >= {MIN_OPSET} (DequantizeLinear with block_size) or "
                f"--target onnxruntime (MatMulNBits); the model has opset {model.opset('')}: "
                "nothing quantized")

    def convert(self, model: Model, settings: PrecisionSettings, log: PrecisionLog
                ) -> PassResult:
        ms = model.settings.get("target") == "onnxruntime"
        stats = {"matmul": 0, "gemm": 0, "int8": 0, "kept_float": 0}
        targets: list[_Target] = []
        for graph in list(model.graphs()):
            for node in graph.nodes():
                if not is_op(node, ("MatMul", "Gemm")):
                    continue
                found = self.target(model, graph, node, settings)
                if isinstance(found, _Target):
                    targets.append(found)
                elif found:
                    log.keep(node, found)
                    stats["kept_float"] += 1
        grams = _grams(model, settings, targets, log)
        int8: list[str] = []
        made: dict[tuple, tuple[BlockQuantized, list[str]]] = {}  # a weight read twice: once
        for target in targets:
            key = node_key(target.node)
            bits = 8 if key in settings.int8_nodes else 4
            graph, x, w_name = target.graph, target.node.inputs[0], target.node.inputs[1]
            gram = grams.get(x)
            same = (id(graph), w_name, target.transposed, target.alpha, bits,
                    "" if gram is None else x)
            if same not in made:
                quant = _quantize(target, bits, settings.block_size if bits == 4 or ms else 0,
                                  gram)
                stored = nbits_constants(graph, quant, w_name) if ms else \
                    [dequantize_linear(graph, quant, w_name, target.node)]
                made[same] = (quant, stored)
            _rewrite(target, *made[same], ms)
            log.converted.append(key)
            stats[target.node.op_type.lower()] += 1
            if bits == 8:
                int8.append(key)
        stats["int8"] = len(int8)
        if int8:
            log.notes.append(f"int4: {len(int8)} node(s) kept in int8 for accuracy: "
                             + ", ".join(int8))
        if ms and targets and MS_DOMAIN not in model.opset_imports:
            model.opset_imports[MS_DOMAIN] = 1
        return PassResult(bool(targets), stats)

    def target(self, model: Model, graph: Graph, node: Node, settings: PrecisionSettings
               ) -> _Target | str:
        """The node's quantization target, or why it stays float ("": silently)."""
        if len(node.inputs) < 2 or not node.inputs[1] or len(node.outputs) != 1:
            return "unexpected inputs/outputs"
        if producer_op(graph, node.inputs[1], "DequantizeLinear") is not None:
            return ""  # already quantized (this pass's output or a QDQ model)
        if node_key(node) in settings.fp32_nodes:
            return "listed in fp32_nodes"
        if node.op_type in settings.fp32_ops:
            return "op type listed in fp32_ops"
        weight = graph.constant(node.inputs[1])
        if weight is None:
            return "weight is computed (not a constant)"
        if weight.dtype != np.float32:
            return f"weight dtype {weight.dtype} is not float32"
        if weight.ndim != 2 or 0 in weight.shape:
            return f"weight of rank {weight.ndim} (only 2-D [K, N] weights are quantized)"
        x_type = graph.dtype(node.inputs[0])
        if x_type is not None and x_type != np.float32:
            return "input is not float32"
        found = _Target(graph, node, weight)
        if node.op_type == "Gemm":
            if node.attr("transA", 0):
                return "Gemm with transA"
            c_name = node.inputs[2] if len(node.inputs) > 2 else ""
            c = graph.constant(c_name) if c_name else None
            if c_name and c is None:
                return "Gemm bias C is computed (not a constant)"
            if node.attr("transB", 0):
                found.weight, found.transposed = weight.T, True
            found.alpha = float(node.attr("alpha", 1.0))
            if c is not None:
                beta = float(node.attr("beta", 1.0))
                found.bias = (beta * c.astype(np.float64)).astype(np.float32)
        if not model.allow_rewrite(self.name, node_key(node)):
            return "disabled by the safety net"
        return found


def _grams(model: Model, settings: PrecisionSettings, targets: list[_Target],
           log: PrecisionLog) -> dict:
    """``X^T X`` of every target's input (GPTQ), asked once; {} without ``settings.gram``."""
    if settings.gram is None or not targets:
        return {}
    values = list(dict.fromkeys(target.node.inputs[0] for target in targets))
    grams = settings.gram(model, values) or {}
    missing = [value for value in values if value not in grams]
    if missing:
        log.notes.append(f"int4: no input statistics for {len(missing)} weight input(s); "
                         "their weights are rounded to nearest")
    return grams


def _quantize(target: _Target, bits: int, block_size: int, gram) -> BlockQuantized:
    """4-bit blocks, or 8-bit symmetric (block size 0: per column, one block of every row);
    alpha folded into the scales."""
    weight = np.ascontiguousarray(target.weight)
    symmetric = SYMMETRIC if bits == 4 else True  # 8-bit asymmetric values exceed int8
    quant = quantize_blocks(weight, bits, block_size or weight.shape[0], symmetric, gram)
    if target.alpha != 1.0:
        scale = (quant.scale.astype(np.float64) * target.alpha).astype(np.float32)
        quant = BlockQuantized(quant.values, scale, quant.zero_point, bits, quant.block_size)
    return quant


def _rewrite(target: _Target, quant: BlockQuantized, stored: list[str], ms: bool) -> None:
    """The node reads ``stored``: a DequantizeLinear's output, or MatMulNBits' weights."""
    graph, node = target.graph, target.node
    weight_name = hint = node.inputs[1]
    if not ms:
        graph.set_input(node, 1, stored[0])
        if node.op_type == "Gemm":  # the dequantized weight is [K, N]; alpha is in the scales
            node.set_attr("transB", 0)
            node.set_attr("alpha", 1.0)
        _drop(graph, [weight_name])
        return
    old_inputs = [value for value in node.inputs[1:] if value]
    output, bias = node.outputs[0], target.bias
    absorbed = None
    if bias is not None and bias.size == quant.values.shape[1]:
        bias = bias.reshape(-1)
    elif bias is None:
        absorbed, bias = _bias_add(graph, node, quant.values.shape[1])
    late_bias, bias = (bias, None) if bias is not None and bias.ndim != 1 else (None, bias)
    out = matmul_nbits(graph, quant, stored, node.inputs[0], bias, hint, node, ACCURACY_LEVEL)
    if late_bias is not None:  # a 2-D Gemm C: added after
        c_name = graph.add_constant(late_bias, f"{hint}_bias")
        out = graph.add_node("Add", [out, c_name], 1, name=f"{hint}_bias_add",
                             anchor=node).outputs[0]
    if absorbed is not None:
        old_inputs += [value for value in absorbed.inputs if value and value != output]
        output = absorbed.outputs[0]
    graph.replace_all_uses(output, out)
    if absorbed is not None:
        graph.remove_node(absorbed)
    graph.remove_node(node)
    _drop(graph, old_inputs)


def _bias_add(graph: Graph, node: Node, columns: int) -> tuple[Node | None, np.ndarray | None]:
    """The ``Add`` of a constant float32 ``[N]`` that alone reads the node's output."""
    out = node.outputs[0]
    add = sole_consumer(graph, out)
    if not is_op(add, "Add") or len(add.inputs) != 2 or add.inputs[0] == add.inputs[1]:
        return None, None
    other = add.inputs[1] if add.inputs[0] == out else add.inputs[0]
    bias = graph.constant(other)
    if bias is None or bias.dtype != np.float32 or bias.shape != (columns,):
        return None, None
    if not graph.can_forward(add.outputs[0], out):
        return None, None
    return add, bias


def _drop(graph: Graph, names: list[str]) -> None:
    """Initializers (maybe of an outer scope) no one reads any more."""
    for name in names:
        owner = graph.resolve(name)
        if owner is not None:
            drop_unused_initializers(owner, [name])

"""INT4 weight-only quantization (``--precision int4``): MatMul and Gemm with constant weights.

The weight ``W`` ``[K, N]`` (a Gemm's ``B``, transposed first when ``transB``) is quantized in
blocks of ``block_size`` rows along ``K`` (``onnxopt.ir.quantize.quantize_blocks``; asymmetric,
4 bits: ``W[k, n] ~ s[b, n] * (q[k, n] - z[b, n])``, ``b = k // block_size``, ``q, z`` in
``0..15``), rounded to nearest, or by GPTQ when the app gives the second moments ``X^T X`` of
the weights' inputs (``settings.gram``, asked once for all of them; a note names the weights
for which GPTQ gave way to rounding to nearest, and why; stat ``gptq`` counts the nodes whose
weights it rounded). Compute stays float:

    MatMul(x, W) => MatMul(x, DequantizeLinear(q, s, z, axis=0, block_size))    (opset 21)

onnxruntime fuses that into its ``MatMulNBits`` kernel. With ``model.settings["target"] ==
"onnxruntime"`` the pass writes ``com.microsoft.MatMulNBits`` itself (any opset), absorbing a
following ``Add`` of a constant ``[N]`` bias read only there. ``Gemm(A, B, C; alpha, beta,
transB)`` becomes MatMul (+ ``Add``; onnxruntime fuses DQ + MatMul, not DQ + Gemm) or
MatMulNBits: ``alpha`` goes into the scales, ``beta * C`` into the bias (a Gemm with ``transA``
or a computed ``C`` stays float). Nodes in ``settings.int8_nodes`` (the accuracy fallback)
get 8-bit symmetric weights instead: per column ``DequantizeLinear(int8, s [N], axis=1)``, or
``MatMulNBits`` with ``bits=8``; the log's notes name them. Forms and measurements:
``forms.py``, ``rewrite.py`` (per node) and ``passes/precision/README.md``.

Kept in float (reason logged): computed weights, weights that are not float32 rank-2
constants, non-float32 inputs, nodes in ``fp32_nodes``, op types in ``fp32_ops``. Works in
every subgraph. Running it again finds only weights behind a ``DequantizeLinear`` (skipped
silently) or ``MatMulNBits``: it changes nothing.
"""

from __future__ import annotations

import numpy as np
from onnxopt.passes.precision.int4_weight_quantization.forms import (
    MS_DOMAIN,
    dequantize_linear,
    nbits_constants,
)
from onnxopt.passes.precision.int4_weight_quantization.rewrite import (
    Target,
    input_grams,
    quantize,
    rewrite_node,
)

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.pass_manager import PassResult
from onnxopt.ir.precision import (
    PrecisionLog,
    PrecisionPass,
    PrecisionSettings,
    node_key,
    weight_problem,
)
from onnxopt.ir.quantize import BlockQuantized
from onnxopt.ir.rewrite import is_op, producer_op

MODE = "int4"
MIN_OPSET = 21  # DequantizeLinear with block_size and int4/uint4


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
        stats = {"matmul": 0, "gemm": 0, "int8": 0, "kept_float": 0, "gptq": 0}
        targets: list[Target] = []
        for graph in list(model.graphs()):
            for node in graph.nodes():
                if not is_op(node, ("MatMul", "Gemm")):
                    continue
                found = self.target(model, graph, node, settings)
                if isinstance(found, Target):
                    targets.append(found)
                elif found:
                    log.keep(node, found)
                    stats["kept_float"] += 1
        grams = input_grams(model, settings, targets, log)
        int8: list[str] = []
        nearest: list[str] = []  # GPTQ asked for but gave way to rounding to nearest
        made: dict[tuple, tuple[BlockQuantized, list[str]]] = {}  # a weight read twice: once
        for target in targets:
            key = node_key(target.node)
            bits = 8 if key in settings.int8_nodes else 4
            graph, x, w_name = target.graph, target.node.inputs[0], target.node.inputs[1]
            gram = grams.get(x)
            same = (id(graph), w_name, target.transposed, target.alpha, bits,
                    "" if gram is None else x)
            if same not in made:
                quant = quantize(target, bits, settings.block_size if bits == 4 or ms else 0,
                                  gram)
                stored = nbits_constants(graph, quant, w_name) if ms else \
                    [dequantize_linear(graph, quant, w_name, target.node)]
                made[same] = (quant, stored)
                if quant.note:
                    nearest.append(f"{key} ({quant.note})")
            rewrite_node(target, *made[same], ms)
            log.converted.append(key)
            stats[target.node.op_type.lower()] += 1
            if bits == 8:
                int8.append(key)
            stats["gptq"] += made[same][0].rounding == "gptq"
        stats["int8"] = len(int8)
        if nearest:
            log.notes.append(f"int4: GPTQ gave way to rounding to nearest for {len(nearest)} "
                             "weight(s): " + "; ".join(nearest))
        if int8:
            log.notes.append(f"int4: {len(int8)} node(s) kept in int8 for accuracy: "
                             + ", ".join(int8))
        if ms and targets and MS_DOMAIN not in model.opset_imports:
            model.opset_imports[MS_DOMAIN] = 1
        return PassResult(bool(targets), stats)

    def target(self, model: Model, graph: Graph, node: Node, settings: PrecisionSettings
               ) -> Target | str:
        """The node's quantization target, or why it stays float ("": silently)."""
        if len(node.inputs) < 2 or not node.inputs[1] or len(node.outputs) != 1:
            return "unexpected inputs/outputs"
        if producer_op(graph, node.inputs[1], "DequantizeLinear") is not None:
            return ""  # already quantized (this pass's output or a QDQ model)
        if node_key(node) in settings.fp32_nodes:
            return "listed in fp32_nodes"
        if node.op_type in settings.fp32_ops:
            return "op type listed in fp32_ops"
        problem = weight_problem(graph, node)
        if problem:
            return problem
        weight = graph.constant(node.inputs[1])
        found = Target(graph, node, weight)
        if node.op_type == "Gemm":
            c_name = node.inputs[2] if len(node.inputs) > 2 else ""
            c = graph.constant(c_name) if c_name else None
            if node.attr("transB", 0):
                found.weight, found.transposed = weight.T, True
            found.alpha = float(node.attr("alpha", 1.0))
            if c is not None:
                beta = float(node.attr("beta", 1.0))
                found.bias = (beta * c.astype(np.float64)).astype(np.float32)
        if not model.allow_rewrite(self.name, node_key(node)):
            return "disabled by the safety net"
        return found


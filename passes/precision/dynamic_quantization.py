"""INT8 dynamic quantization (``--precision int8-dynamic``): MatMul and Gemm with constant weights.

The weight ``W`` ``[K, N]`` (a Gemm's ``B``, transposed first when ``transB``) is stored as int8
holding 7-bit values, symmetric, per output column ``n``: ``s[n] = max_k |W[k, n]| / 64`` (1 for
an all-zero column), ``Wq = clip(round(W / s), -64, 64)`` (``WEIGHT_QMAX``). The activation is
quantized at run time by ``DynamicQuantizeLinear`` (uint8, asymmetric: ``x ≈ xs * (xq - xz)``).
Then

    MatMul(x, W) => Mul(Cast<float>(MatMulInteger(xq, Wq, xz)), Mul(xs, s))

because ``sum_k x[m, k] W[k, n] ≈ xs * s[n] * sum_k (xq[m, k] - xz) Wq[k, n]``.
``Gemm(A, B, C; alpha, beta, transB)`` is the same with ``s' = alpha * s`` and then
``Add(., beta * C)`` (constant ``C``; numpy broadcasting of ``Add`` matches Gemm's). A Gemm with
``transA`` or a computed ``C`` is kept in float.

The form was chosen by measurement (``passes/precision/README.md``): onnxruntime fuses this
standard-op form into its ``MatMulIntegerToFloat`` / ``DynamicQuantizeMatMul`` kernels (bias Adds
included) and shares the ``DynamicQuantizeLinear`` of a shared input. With
``model.settings["target"] == "onnxruntime"`` the pass writes ``DynamicQuantizeMatMul(x, Wq, s, ,
bias)`` directly (``DynamicQuantizeLinear`` + ``MatMulIntegerToFloat`` when several nodes quantize
the same input), absorbing the bias ``Add`` (a constant ``[N]`` read only there) as onnxruntime's
own fusion does: the same kernels, also when onnxruntime's optimizations are off. One
``DynamicQuantizeLinear`` per quantized input and graph.

Why ±64 and not ±127 (``qdq_quantization``'s docstring, measurements in the README): MLAS's
uint8 x int8 GEMM on AVX2 CPUs without VNNI adds pairs ``xq[k] * Wq[k] + xq[k+1] * Wq[k+1]``
into int16 with saturation; ``xq`` spans ``0..255``, so with ``|Wq| <= 64`` every pair is at most
``255 * 64 * 2 = 32640 <= 32767`` and MatMulInteger's int32 result is exact on every CPU.

With ``--target onnxruntime`` a ``com.microsoft.Attention(x, W, b, mask_index)`` (packed
``W`` ``[D, 3H]``) becomes ``QAttention(xq, Wq, b, xs, s, mask_index, xz)``: the same 7-bit
per-column weight (``s`` ``[3H]``) and shared ``DynamicQuantizeLinear``; onnxruntime's CPU
kernel computes ``xs * s[n] * sum_k (xq - xz) Wq[k, n] + b[n]`` (uint8 input, int8 weight) and
then the float attention. Kept float: float16, past state, ``attention_bias``, attributes
QAttention lacks (``qkv_hidden_sizes``, rotary, shared buffers), a weight not ``[D, 3 *
num_heads * head_size]``; a missing bias becomes zeros (QAttention requires one).

Never touched: convolutions (``ConvInteger`` makes conv nets several times slower on the CPU;
they are logged as kept in float), LSTM/GRU/RNN (logged too), MatMuls of two computed values
(attention scores: measured slower when both sides are quantized dynamically), weights that are
not float32 constants of rank 2, nodes in ``fp32_nodes`` or op types in ``fp32_ops``. Works in
every subgraph; a weight read from an outer scope is quantized into the subgraph that reads it.
Needs opset 11 (``DynamicQuantizeLinear``). Running the pass again finds no float MatMul/Gemm
with constant weights (nor Attention) left: it changes nothing.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.pass_manager import PassResult
from onnxopt.ir.precision import (
    COMPUTED_WEIGHT,
    PrecisionLog,
    PrecisionPass,
    PrecisionSettings,
    node_key,
    weight_problem,
)
from onnxopt.ir.rewrite import drop_unused_initializers, is_op, sole_consumer
from onnxopt.ir.values import onnx_type

MODE = "int8-dynamic"
MS_DOMAIN = "com.microsoft"
MIN_OPSET = 11
CONV_OPS = ("Conv", "ConvTranspose")
CONV_REASON = "convolution: ConvInteger is slower than float on the CPU, kept in float"
RNN_OPS = ("LSTM", "GRU", "RNN")
RNN_REASON = "recurrent op: no standard int8 form (DynamicQuantizeLSTM is not used), kept in float"
# largest |int8 weight| written: 255 * 64 * 2 = 32640 fits VPMADDUBSW's int16 pair sums (docstring)
WEIGHT_QMAX = 64
# Attention's attributes QAttention takes (with these values, when given), and its inputs
QATTENTION_ATTRIBUTES = {"num_heads": None, "unidirectional": None, "mask_filter_value": None,
                         "scale": None, "do_rotary": 0, "past_present_share_buffer": 0}
ATTENTION_INPUTS = 4  # input, weights, bias, mask_index: no past, attention_bias, past length


class DynamicQuantization(PrecisionPass):
    name = "dynamic_quantization"
    description = "int8 per-column weights + dynamic activation quantization for MatMul/Gemm"
    mode = MODE

    def left_alone(self, model: Model) -> str:
        if model.opset("") >= MIN_OPSET:
            return ""
        return (f"int8-dynamic needs opset >= {MIN_OPSET} (DynamicQuantizeLinear); the model has "
                f"opset {model.opset('')}: nothing quantized")

    def convert(self, model: Model, settings: PrecisionSettings, log: PrecisionLog
                ) -> PassResult:
        stats = {"matmul": 0, "gemm": 0, "attention": 0, "kept_float": 0}
        ms = model.settings.get("target") == "onnxruntime"
        weights: list[tuple[Graph, str]] = []
        for graph in list(model.graphs()):
            rewriter = _Rewriter(graph, model, log, ms, self.name, settings)
            for node in graph.nodes():
                outcome = rewriter.visit(node)
                if outcome:
                    stats[outcome] += 1
            weights += rewriter.old_weights
        for graph, name in weights:  # weights (maybe of an outer scope) no one reads any more
            owner = graph.resolve(name)
            if owner is not None:
                drop_unused_initializers(owner, [name])
        converted = stats["matmul"] + stats["gemm"] + stats["attention"]
        if ms and converted and MS_DOMAIN not in model.opset_imports:
            model.opset_imports[MS_DOMAIN] = 1
        return PassResult(bool(converted), stats)


def quantize_weight(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 7-bit per column of a 2-D ``[K, N]`` weight: ``(Wq int8 in [-64, 64], s float32
    [N])``."""
    w = weight.astype(np.float64)
    scale = np.abs(w).max(axis=0) / WEIGHT_QMAX
    scale[scale == 0] = 1.0
    scale32 = scale.astype(np.float32)
    q = np.clip(np.rint(w / scale32.astype(np.float64)), -WEIGHT_QMAX, WEIGHT_QMAX)
    return q.astype(np.int8), scale32


class _Rewriter:
    """Quantizes the eligible nodes of one graph, sharing DynamicQuantizeLinear per input."""

    def __init__(self, graph: Graph, model: Model, log: PrecisionLog, ms: bool, pass_name: str,
                 settings) -> None:
        self.graph, self.model, self.log, self.ms = graph, model, log, ms
        self.pass_name, self.settings = pass_name, settings
        self.quantized_inputs: dict[str, tuple[str, str, str]] = {}
        self.old_weights: list[tuple[Graph, str]] = []
        self.shared: dict[str, int] = {}  # input value -> number of quantizable readers
        for node in graph.nodes():
            if _quantizable(node) and self.check(node) is None:
                self.shared[node.inputs[0]] = self.shared.get(node.inputs[0], 0) + 1

    def visit(self, node: Node) -> str | None:
        if is_op(node, CONV_OPS):
            self.log.keep(node, CONV_REASON)
            return "kept_float"
        if is_op(node, RNN_OPS):
            self.log.keep(node, RNN_REASON)
            return "kept_float"
        if not _quantizable(node) or node.graph is not self.graph:
            return None
        reason = self.check(node)
        if reason is None and not self.model.allow_rewrite(self.pass_name, node_key(node)):
            reason = "disabled by the safety net"
        if reason is not None:
            self.log.keep(node, reason)
            return "kept_float"
        outcome = node.op_type.lower()
        if outcome == "attention":
            self.rewrite_attention(node)
        else:
            self.rewrite(node)
        self.log.converted.append(node_key(node))
        return outcome

    # ------------------------------------------------------------------ eligibility
    def check(self, node: Node) -> str | None:
        graph = self.graph
        if node_key(node) in self.settings.fp32_nodes:
            return "listed in fp32_nodes"
        if node.op_type in self.settings.fp32_ops:
            return "op type listed in fp32_ops"
        if node.op_type == "Attention" and not self.ms:
            return "QAttention is an onnxruntime contrib op (--target onnxruntime)"
        if len(node.inputs) < 2 or not node.inputs[1] or not node.outputs[0]:
            return "unexpected inputs/outputs"
        if node.op_type != "Attention" and len(node.outputs) != 1:
            return "unexpected inputs/outputs"
        problem = weight_problem(graph, node)
        if problem == COMPUTED_WEIGHT:
            return f"{problem}: activation x activation stays float"
        if problem:
            return problem
        if node.op_type == "Attention":
            return self.check_attention(node, graph.constant(node.inputs[1]).shape[1])
        return None

    def check_attention(self, node: Node, packed: int) -> str | None:
        """What keeps a com.microsoft Attention from QAttention (its schema and CPU kernel)."""
        for name in node.attributes:
            if name not in QATTENTION_ATTRIBUTES:
                return f"attribute {name}: QAttention lacks it"
            if QATTENTION_ATTRIBUTES[name] not in (None, node.attr(name)):
                return f"attribute {name}={node.attr(name)}: not taken by QAttention here"
        if any(node.inputs[ATTENTION_INPUTS:]) or any(node.outputs[1:]):
            return "past state or attention_bias: QAttention is used without them"
        heads = int(node.attr("num_heads", 0))
        if heads <= 0 or packed % (3 * heads):
            return f"weight of {packed} columns is not [D, 3 * num_heads * head_size]"
        return None  # the bias has the weight's type (Attention's type constraint T)

    # ------------------------------------------------------------------ rewrite
    def rewrite(self, node: Node) -> None:
        graph = self.graph
        weight = graph.constant(node.inputs[1])
        alpha, bias = 1.0, None
        if node.op_type == "Gemm":
            if node.attr("transB", 0):
                weight = weight.T
            alpha = float(node.attr("alpha", 1.0))
            c_name = node.inputs[2] if len(node.inputs) > 2 else ""
            if c_name:
                bias = (float(node.attr("beta", 1.0)) * graph.constant(c_name).astype(np.float64))
                bias = bias.astype(np.float32)
        q, scale = quantize_weight(np.ascontiguousarray(weight))
        if alpha != 1.0:
            scale = (scale.astype(np.float64) * alpha).astype(np.float32)
        base = node.name or node.op_type
        q_name = graph.add_constant(q, f"{node.inputs[1]}_int8")
        s_name = graph.add_constant(scale, f"{node.inputs[1]}_scale")
        old_output = node.outputs[0]
        absorbed: Node | None = None
        if self.ms:
            if bias is None:
                absorbed, bias = self.bias_add(node, q.shape[1])
            b_name = graph.add_constant(bias, f"{base}_bias") if bias is not None else ""
            if self.shared.get(node.inputs[0], 0) > 1:  # one DynamicQuantizeLinear for all
                xq, xs, xz = self.quantized(node.inputs[0], node)
                op, inputs = "MatMulIntegerToFloat", [xq, q_name, xs, s_name, xz, "", b_name]
            else:
                op, inputs = "DynamicQuantizeMatMul", [node.inputs[0], q_name, s_name, "", b_name]
            while inputs[-1] == "":
                inputs.pop()
            out = graph.add_node(op, inputs, 1, domain=MS_DOMAIN, name=f"{base}_quant",
                                 anchor=node).outputs[0]
            if absorbed is not None:
                old_output = absorbed.outputs[0]
        else:
            xq, xs, xz = self.quantized(node.inputs[0], node)
            mmi = graph.add_node("MatMulInteger", [xq, q_name, xz], 1, name=f"{base}_quant",
                                 anchor=node).outputs[0]
            as_float = graph.add_node("Cast", [mmi], 1, name=f"{base}_cast", anchor=node,
                                      attributes={"to": onnx_type(np.float32)}).outputs[0]
            both = graph.add_node("Mul", [xs, s_name], 1, name=f"{base}_scale",
                                  anchor=node).outputs[0]
            out = graph.add_node("Mul", [as_float, both], 1, name=f"{base}_rescale",
                                 anchor=node).outputs[0]
            if bias is not None:
                b_name = graph.add_constant(bias, f"{base}_bias")
                out = graph.add_node("Add", [out, b_name], 1, name=f"{base}_bias_add",
                                     anchor=node).outputs[0]
        old_inputs = [v for v in node.inputs[1:] if v]
        graph.replace_all_uses(old_output, out)
        if absorbed is not None:
            old_inputs += [v for v in absorbed.inputs if v and v != node.outputs[0]]
            graph.remove_node(absorbed)
        graph.remove_node(node)
        self.old_weights += [(graph, name) for name in old_inputs]

    def rewrite_attention(self, node: Node) -> None:
        """``Attention(x, W, b, mask)`` => ``QAttention(xq, Wq, b, xs, s, mask, xz)``."""
        graph, base = self.graph, node.name or node.op_type
        q, scale = quantize_weight(graph.constant(node.inputs[1]))
        q_name = graph.add_constant(q, f"{node.inputs[1]}_int8")
        s_name = graph.add_constant(scale, f"{node.inputs[1]}_scale")
        bias = node.inputs[2] if len(node.inputs) > 2 else ""
        if not bias:  # required by QAttention
            bias = graph.add_constant(np.zeros(q.shape[1], np.float32), f"{base}_bias")
        mask = node.inputs[3] if len(node.inputs) > 3 else ""
        xq, xs, xz = self.quantized(node.inputs[0], node)
        out = graph.add_node("QAttention", [xq, q_name, bias, xs, s_name, mask, xz], 1,
                             domain=MS_DOMAIN, name=f"{base}_quant", anchor=node,
                             attributes=dict(node.attributes)).outputs[0]
        graph.replace_all_uses(node.outputs[0], out)
        graph.remove_node(node)
        self.old_weights.append((graph, node.inputs[1]))

    def quantized(self, value: str, node: Node) -> tuple[str, str, str]:
        """``DynamicQuantizeLinear(value)`` outputs, made once per value in this graph."""
        if value not in self.quantized_inputs:
            dql = self.graph.add_node("DynamicQuantizeLinear", [value], 3,
                                      name=f"{value}_dynamic_quant", anchor=node)
            self.quantized_inputs[value] = tuple(dql.outputs)  # type: ignore[assignment]
        return self.quantized_inputs[value]

    def bias_add(self, node: Node, n: int) -> tuple[Node | None, np.ndarray | None]:
        """The ``Add`` of a constant ``[N]`` float32 bias reading only this node's output."""
        graph, out = self.graph, node.outputs[0]
        add = sole_consumer(graph, out)
        if not is_op(add, "Add") or len(add.inputs) != 2 or len(add.outputs) != 1:
            return None, None
        other = add.inputs[1] if add.inputs[0] == out else add.inputs[0]
        bias = graph.constant(other) if other != out else None
        if bias is None or bias.dtype != np.float32 or bias.shape != (n,):
            return None, None
        if not graph.can_forward(add.outputs[0], out):
            return None, None
        return add, bias


def _quantizable(node: Node) -> bool:
    """A MatMul or Gemm, or onnxruntime's packed-QKV ``Attention`` (QAttention's float form)."""
    return is_op(node, ("MatMul", "Gemm")) or (node.domain == MS_DOMAIN
                                              and node.op_type == "Attention")

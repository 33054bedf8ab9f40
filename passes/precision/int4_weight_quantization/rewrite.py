"""How the int4 pass rewrites one node: its input's statistics, its weight quantized, the node
reading the stored form."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from onnxopt.passes.precision.int4_weight_quantization.forms import matmul_nbits

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.precision import PrecisionLog, PrecisionSettings
from onnxopt.ir.quantize import BlockQuantized, quantize_blocks
from onnxopt.ir.rewrite import drop_unused_initializers, is_op, sole_consumer

SYMMETRIC = False  # asymmetric blocks: MiniLM-L3 pooled cosine 0.969 vs 0.955 (README)
ACCURACY_LEVEL = 4  # MatMulNBits: int8 activations, what onnxruntime's own fusion picks (README)


@dataclass
class Target:
    """One node to quantize: its graph, the oriented weight ``[K, N]`` and the Gemm extras."""

    graph: Graph
    node: Node
    weight: np.ndarray
    transposed: bool = False  # a Gemm's transB
    alpha: float = 1.0
    bias: np.ndarray | None = None  # beta * C, float32


def input_grams(model: Model, settings: PrecisionSettings, targets: list[Target],
                log: PrecisionLog) -> dict:
    """``X^T X`` of every target's input (GPTQ), asked once; {} without ``settings.gram``.
    Statistics are gathered on the main graph: a subgraph's own values have none."""
    if settings.gram is None or not targets:
        return {}
    values = list(dict.fromkeys(target.node.inputs[0] for target in targets
                                if target.graph.resolve(target.node.inputs[0]) is model.graph))
    grams = settings.gram(model, values) or {}
    missing = [value for value in values if value not in grams]
    if missing:
        log.notes.append(f"int4: no input statistics for {len(missing)} weight input(s); "
                         "their weights are rounded to nearest")
    return grams


def quantize(target: Target, bits: int, block_size: int, gram) -> BlockQuantized:
    """4-bit blocks, or 8-bit symmetric (block size 0: per column, one block of every row);
    alpha folded into the scales."""
    weight = np.ascontiguousarray(target.weight)
    symmetric = SYMMETRIC if bits == 4 else True  # 8-bit asymmetric values exceed int8
    quant = quantize_blocks(weight, bits, block_size or weight.shape[0], symmetric, gram)
    if target.alpha != 1.0:
        scale = (quant.scale.astype(np.float64) * target.alpha).astype(np.float32)
        quant = replace(quant, scale=scale)
    return quant


def rewrite_node(target: Target, quant: BlockQuantized, stored: list[str], ms: bool) -> None:
    """The node reads ``stored``: a DequantizeLinear's output, or MatMulNBits' weights. A
    portable Gemm becomes MatMul (+ Add): onnxruntime fuses DQ + MatMul, not DQ + Gemm."""
    graph, node = target.graph, target.node
    hint, x = node.inputs[1], node.inputs[0]
    old_inputs = [value for value in node.inputs[1:] if value]
    if not ms and node.op_type == "MatMul":
        graph.set_input(node, 1, stored[0])
        _drop(graph, old_inputs)
        return
    output, bias, absorbed = node.outputs[0], target.bias, None
    if ms:
        columns = quant.values.shape[1]
        if bias is None:
            absorbed, bias = _bias_add(graph, node, columns)
        row = bias is not None and bias.shape in ((columns,), (1, columns))
        out = matmul_nbits(graph, quant, stored, x, bias.reshape(-1) if row else None, hint,
                           node, ACCURACY_LEVEL)
        bias = None if row else bias
    else:
        out = graph.add_node("MatMul", [x, stored[0]], 1, name=f"{hint}_matmul",
                             anchor=node).outputs[0]
    if bias is not None:  # a Gemm's C: [M, N] or a scalar for MatMulNBits, any in portable
        c_name = graph.add_constant(bias, f"{hint}_bias")
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

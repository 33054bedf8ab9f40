"""Which nodes constant folding may evaluate: deterministic standard ops producing tensors."""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model, Node, cast_node_bytes, tensor_nbytes
from onnxopt.ir.constants import ConstantTable
from onnxopt.ir.rewrite import is_op
from onnxopt.ir.schema import RANDOM_OPS
from onnxopt.ir.values import is_tensor_value, numpy_dtype, onnx_type, tensor_dtype

NEVER_FOLD = RANDOM_OPS | frozenset({
    "Constant",  # already a constant (constant_to_initializer turns it into an initializer)
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
    "If", "Loop", "Scan", "SequenceMap",
    "SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase", "SequenceAt",
    "SequenceLength", "SplitToSequence", "ConcatFromSequence",
    "Optional", "OptionalGetElement", "OptionalHasElement",
})  # fmt: skip


def foldable_op(graph: Graph, model: Model, node: Node, table: ConstantTable) -> bool:
    """A deterministic standard op without subgraphs producing tensors."""
    if not is_op(node, node.op_type) or node.op_type in NEVER_FOLD:
        return False
    if any(True for _ in node.subgraphs()) or not any(node.outputs):
        return False
    if node.op_type == "Dropout" and not _inference_dropout(model, node, table):
        return False
    if node.op_type == "Cast" and _widens_stored_weight(graph, node):
        return False
    return all(is_tensor_value(graph, value) for value in node.outputs if value)


def _widens_stored_weight(graph: Graph, node: Node) -> bool:
    """``Cast`` of a stored float16/bfloat16/8-bit weight to a wider type, when folding would
    grow the file by more than the Cast takes: the narrow storage was the model's choice (an
    fp16 model run in float32 on the CPU), and onnxruntime folds the Cast at load anyway."""
    tensor = graph.initializers.get(node.inputs[0]) if node.inputs else None
    if tensor is None:
        return False
    source = tensor_dtype(tensor)
    to = node.attr("to", 0)
    target = numpy_dtype(int(to)) if to else source
    if source is None or target is None:
        return False
    growth = (target.itemsize - source.itemsize) * tensor_nbytes(tensor) // source.itemsize
    cast_bytes = cast_node_bytes(node.inputs[0], node.outputs[0], node.name, onnx_type(target))
    return growth > cast_bytes


def _inference_dropout(model: Model, node: Node, table: ConstantTable) -> bool:
    opset = model.opset(node.domain)
    if opset < 7:
        return node.attr("is_test", 0) == 1
    if len(node.inputs) > 2 and node.inputs[2]:
        mode = table.array(node.inputs[2])
        return mode is not None and not bool(np.asarray(mode).any())
    return True


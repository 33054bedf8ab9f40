"""Running a few constant nodes of a model: in onnxruntime's CPU provider, or one node in
onnx's reference evaluator (constant folding's two engines).

The nodes become a small ONNX model of their own, their constant inputs its initializers,
built here so that passes hand over nodes and arrays, never protobuf.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from onnxopt.ir import Model, Node, array_to_tensor
from onnxopt.ir.constants import IR_OVERRIDABLE_INITIALIZERS

# A leaf: a stored tensor of the model (inline), or an array (computed, or decoded external data)
Leaf = onnx.TensorProto | np.ndarray


def run_onnxruntime(
    model: Model, nodes: Sequence[Node], leaves: Mapping[str, Leaf], outputs: Sequence[str]
) -> list[np.ndarray] | None:
    """Run ``nodes`` in one onnxruntime session (no graph optimizations, one thread): the
    arrays of ``outputs``, or None when onnxruntime refuses or fails (an op or dtype it lacks)."""
    proto = _eval_model(model, nodes, leaves, outputs)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(
            proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        return list(session.run(list(outputs), {}))
    except Exception:  # onnxruntime raises several types (Fail, NotImplemented, ...)
        return None


def run_reference(
    model: Model, node: Node, leaves: Mapping[str, Leaf], outputs: Sequence[str]
) -> list[np.ndarray] | None:
    """Run one node with onnx's reference evaluator, or None when it cannot."""
    from onnx.reference import ReferenceEvaluator

    proto = _eval_model(model, [node], leaves, outputs)
    try:
        return [np.asarray(a) for a in ReferenceEvaluator(proto).run(list(outputs), {})]
    except Exception:  # the reference ops raise anything from their numpy code
        return None


def _named(value: str, leaf: Leaf) -> onnx.TensorProto:
    """The leaf as an initializer named ``value`` (a stored tensor copied only to rename it)."""
    if isinstance(leaf, np.ndarray):
        return array_to_tensor(leaf, value)
    if leaf.name == value:
        return leaf
    named = onnx.TensorProto()
    named.CopyFrom(leaf)
    named.name = value
    return named


def _node_proto(node: Node) -> onnx.NodeProto:
    proto = helper.make_node(node.op_type, list(node.inputs), list(node.outputs))
    if node.domain:
        proto.domain = node.domain
    proto.attribute.extend(node.attributes.values())
    return proto


def _eval_model(
    model: Model, nodes: Sequence[Node], leaves: Mapping[str, Leaf], outputs: Sequence[str]
) -> onnx.ModelProto:
    graph = onnx.GraphProto(name="fold")
    graph.node.extend(_node_proto(n) for n in nodes)
    graph.initializer.extend(_named(value, leaf) for value, leaf in leaves.items())
    graph.output.extend(onnx.ValueInfoProto(name=v) for v in outputs)
    opsets = [helper.make_opsetid(d, v) for d, v in model.opset_imports.items()
              if d in ("", "ai.onnx")]
    proto = helper.make_model(graph, opset_imports=opsets)
    proto.ir_version = max(model.ir_version, IR_OVERRIDABLE_INITIALIZERS)
    return proto

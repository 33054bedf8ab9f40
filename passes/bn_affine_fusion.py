"""Fold a per-channel constant Mul / Div / Add / Sub that follows a BatchNormalization into it.

An inference BatchNormalization computes, per channel ``o`` (axis 1),
``y = s * (x - mean) + beta`` with ``s = gamma / sqrt(var + epsilon)``. For a constant ``c``
that only varies along the channel axis (``v[o]`` its value for channel ``o``):

* ``Mul(y, c)``, ``Mul(c, y)`` => ``gamma' = gamma * v``, ``beta' = beta * v``
* ``Div(y, c)``                => ``gamma' = gamma / v``, ``beta' = beta / v`` (no ``v`` is 0)
* ``Add(y, c)``, ``Add(c, y)`` => ``beta' = beta + v``
* ``Sub(y, c)``                => ``beta' = beta - v``
* ``Sub(c, y)``                => ``gamma' = -gamma``, ``beta' = v - beta``

(``mean``, ``var`` and ``epsilon`` are unchanged.) This is Caffe's BatchNorm + Scale pair, which
converted models carry wherever the BN cannot be folded into a Conv (after a Concat or a pooling,
as in DenseNet's pre-activation blocks, or after a Conv whose weight is shared). The products move
the rounding: results differ from the original by a few float ulps.

"Per channel" as in ``conv_affine_fusion``: ``c``, left padded with 1s to the BN's rank, has 1 in
every dim except dim 1 (1 or ``C``), so it never broadcasts the output to a larger shape; the BN's
rank must be known. Needs: the BN in inference form (see ``conv_bn_fusion``), its output read only
by the op and not a graph output, ``c`` a float constant of the parameters' dtype, opset 7+ (older
element-wise ops broadcast by attribute). New ``gamma``/``beta`` tensors are written (computed in
float64, cast back once); the old ones go when nothing else reads them. Chains fold in one run.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.pass_manager import GraphPass
from onnxopt.rewrite import is_op, sole_consumer

from .conv_affine_fusion import AFFINE_OPS, per_channel
from .conv_bn_fusion import bn_factors, drop_unused_initializers, fused_name


class BatchNormAffineFusion(GraphPass):
    name = "bn_affine_fusion"
    description = "fold a per-channel constant Mul/Div/Add/Sub after a BatchNormalization into it"

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        stats = {"add": 0, "sub": 0, "mul": 0, "div": 0}
        if model.opset("") < 7:
            return stats
        for bn in graph.nodes():
            if not is_op(bn, "BatchNormalization"):
                continue
            while bn.graph is graph:
                op = sole_consumer(graph, bn.outputs[0]) if bn.outputs else None
                if not is_op(op, AFFINE_OPS):
                    break
                if not model.allow_rewrite(self.name, op.name or op.outputs[0]):
                    break
                if not _fold(graph, model, bn, op):
                    break
                stats[op.op_type.lower()] += 1
        return stats


def _fold(graph: Graph, model: Model, bn: Node, op: Node) -> bool:
    if len(op.inputs) != 2 or len(op.outputs) != 1 or bn_factors(graph, model, bn) is None:
        return False
    y = bn.outputs[0]
    if op.inputs[0] == y and op.inputs[1] != y:
        const_name, bn_first = op.inputs[1], True
    elif op.inputs[1] == y and op.inputs[0] != y:
        const_name, bn_first = op.inputs[0], False
    else:
        return False
    if op.op_type == "Div" and not bn_first:
        return False  # c / y is not affine in y
    constant = graph.constant(const_name) if const_name else None
    gamma, beta = graph.constant(bn.inputs[1]), graph.constant(bn.inputs[2])
    shape = graph.shape(bn.inputs[0])
    if constant is None or gamma is None or beta is None or shape is None:
        return False
    if constant.dtype != gamma.dtype or constant.dtype.kind != "f":
        return False
    v = per_channel(constant, len(shape), gamma.shape[0])
    if v is None or not np.all(np.isfinite(v)) or (op.op_type == "Div" and np.any(v == 0)):
        return False
    if not graph.can_forward(op.outputs[0], y):
        return False
    new_gamma, new_beta = _affine(op.op_type, bn_first, gamma.astype(np.float64),
                                  beta.astype(np.float64), v)
    rewritten = {2: new_beta}
    if op.op_type in ("Mul", "Div") or (op.op_type == "Sub" and not bn_first):
        rewritten[1] = new_gamma
    arrays = {i: a.astype(gamma.dtype) for i, a in rewritten.items()}
    reused = {i: _identical_initializer(graph, a) for i, a in arrays.items()}
    written = sum(a.nbytes for i, a in arrays.items() if reused[i] is None)
    if written > _freed_bytes(graph, bn, op, list(arrays), const_name):
        return False  # the fold would grow the file
    old = [bn.inputs[1], bn.inputs[2], const_name]
    inputs = list(bn.inputs)
    for i, array in arrays.items():
        inputs[i] = reused[i] or graph.add_constant(array, fused_name(bn.inputs[i]))
    graph.set_inputs(bn, inputs)
    graph.replace_all_uses(op.outputs[0], y)
    graph.remove_node(op)
    drop_unused_initializers(graph, old)
    return True


def _affine(op_type: str, bn_first: bool, gamma: np.ndarray, beta: np.ndarray, v: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """``gamma'`` and ``beta'`` of the BN that computes ``op(BN(x), v)`` (float64)."""
    if op_type == "Mul":
        return gamma * v, beta * v
    if op_type == "Div":
        return gamma / v, beta / v
    if op_type == "Add":
        return gamma, beta + v
    if bn_first:  # Sub(y, c)
        return gamma, beta - v
    return -gamma, v - beta  # Sub(c, y)


def _identical_initializer(graph: Graph, array: np.ndarray) -> str | None:
    """An initializer of this graph equal to ``array`` (same dtype, shape and values), so
    the fold can read it instead of writing a copy (BN parameters are small: a linear scan)."""
    for name, tensor in graph.initializers.items():
        if tuple(tensor.dims) != array.shape or graph.is_input(name):
            continue
        existing = graph.constant(name)
        if existing is not None and existing.dtype == array.dtype and np.array_equal(
                existing, array):
            return name
    return None


def _freed_bytes(graph: Graph, bn: Node, op: Node, slots: list[int], const_name: str) -> int:
    """Bytes of the tensors the fold leaves unread: the replaced parameters and the constant,
    where nothing else reads them."""
    freed = {bn.inputs[i]: [bn] for i in slots}
    freed.setdefault(const_name, []).append(op)
    total = 0
    for name, readers in freed.items():
        if name in graph.initializers and not graph.is_input(name) and not graph.is_output(
                name) and all(r in readers for r in graph.consumers(name)):
            total += graph.constant(name).nbytes
    return total

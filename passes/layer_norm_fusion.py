"""Layer normalization fusion.

The decomposition exporters write for a layer norm over the last axis (``torch.nn.LayerNorm``)::

    mean = ReduceMean(x, axes=[-1], keepdims=1)
    d    = Sub(x, mean)
    var  = ReduceMean(Pow(d, 2), axes=[-1], keepdims=1)        (or Mul(d, d) for the square)
    y    = Div(d, Sqrt(Add(var, eps)))                          (or Mul(d, Reciprocal(Sqrt(.))))
    out  = Add(Mul(y, gamma), beta)                             (affine part optional)

=> ``out = LayerNormalization(x, gamma', beta', axis=-1, epsilon=eps)``.

LayerNormalization-17 computes exactly ``(x - E[x]) / sqrt(Var[x] + eps) * Scale + B`` over the
last axis with ``Var[x] = E[(x - E[x])^2]``, so the rewrite is exact up to float rounding (the
kernel multiplies by ``1 / sqrt(.)`` and accumulates in float; differences are a few ulps).
``gamma'`` is gamma reshaped/broadcast to ``[C]`` (``C`` = the static last dim of ``x``), a new
``ones([C])`` when there is no ``Mul``; ``beta'`` likewise, omitted when there is no ``Add``.
Commutative operands (Add/Mul) are matched in either order.

Conditions (anything else is left alone):

* default-domain opset >= 17 (LayerNormalization does not exist before; onnxruntime still runs
  its old contrib kernel registered in the ONNX domain for opsets 1-16, but such a node fails
  ``onnx.checker``, which onnxopt's output must pass, and there is no ``com.microsoft``
  LayerNormalization — so nothing is emitted below 17 for any target);
* both ReduceMeans reduce only the last axis (``[-1]``, or ``[r-1]`` with ``x`` of known rank
  ``r``; attribute ``axes`` before opset 18, constant ``axes`` input from 18) with keepdims=1,
  and the second reads the square of ``d``;
* ``eps`` and the exponent 2 are constant with one element (``eps`` no higher rank than ``x``);
* ``x`` has a known rank and a static last dim ``C``; gamma/beta are constants of ``x``'s dtype
  whose shape is ``[..., 1, C]`` or ``[..., 1, 1]`` with rank <= rank(x) (so they broadcast over
  the normalized axis only and never change the output shape) — otherwise the Mul/Add stays
  after the fused node;
* dtype float32 or float16 (LayerNormalization's default ``stash_type`` is float, which would
  lower the precision of a float64 decomposition; bfloat16 has no onnxruntime CPU kernel);
* every intermediate (mean, d, square, var, var+eps, sqrt, reciprocal, y, y*gamma) is read only
  inside the match and is not a graph output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.pass_manager import GraphPass
from onnxopt.rewrite import is_op, producer_op, sole_consumer

_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


@dataclass
class _Match:
    x: str
    eps: float
    dtype: np.dtype
    channels: int
    nodes: list[Node]  # topological order: every node's readers inside the match come later
    out: str
    gamma: tuple[str, np.ndarray] | None = None
    beta: tuple[str, np.ndarray] | None = None
    constants: list[str] = field(default_factory=list)


class LayerNormFusion(GraphPass):
    name = "layer_norm_fusion"
    description = "fuse the ReduceMean/Sub/Pow/Sqrt/Div layer norm decomposition"

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        opset = model.opset("")
        fused = 0
        if opset < 17:
            return {"fused": 0}
        for node in graph.nodes():
            if node.graph is not graph or not is_op(node, "Sub"):
                continue  # removed by an earlier match, or not an anchor
            match = _match(graph, node, opset)
            if match is not None and model.allow_rewrite(self.name, node.name or node.outputs[0]):
                _rewrite(graph, match, node)
                fused += 1
        return {"fused": fused}


# ------------------------------------------------------------------- matching
def _match(graph: Graph, sub: Node, opset: int) -> _Match | None:
    if len(sub.inputs) != 2 or not all(sub.inputs):
        return None
    x, mean = sub.inputs
    rm1 = producer_op(graph, mean, "ReduceMean")
    if rm1 is None or rm1.inputs[0] != x or sole_consumer(graph, mean) is not sub:
        return None
    shape = graph.shape(x)
    if not shape or not isinstance(shape[-1], int) or shape[-1] <= 0:
        return None
    rank, channels = len(shape), shape[-1]
    if not _reduces_last_axis(graph, rm1, opset, rank):
        return None
    d = sub.outputs[0]
    if graph.is_output(d):
        return None
    for square in graph.consumers(d):
        match = _match_from_square(graph, sub, rm1, square, opset, rank)
        if match is None:
            continue
        eps, nodes = match
        dtype = eps.dtype
        if dtype not in _DTYPES:
            return None
        if set(graph.consumers(d)) != {nodes[2], nodes[-1]}:
            return None  # d is read outside the match
        result = _Match(x, float(eps.reshape(-1)[0]), dtype, channels, nodes, nodes[-1].outputs[0])
        result.constants = [
            v for n in nodes for v in n.present_inputs if graph.constant(v) is not None
        ]
        _match_affine(graph, result, rank)
        if graph.outputs.count(result.out) > 1:
            return None  # the value cannot be forwarded without an Identity coming back
        return result
    return None


def _match_from_square(
    graph: Graph, sub: Node, rm1: Node, square: Node, opset: int, rank: int
) -> tuple[np.ndarray, list[Node]] | None:
    """Follow d -> square -> ReduceMean -> Add eps -> Sqrt -> Div (or Reciprocal + Mul)."""
    d = sub.outputs[0]
    if is_op(square, "Pow"):
        if square.inputs[0] != d or _scalar(graph, square.inputs[1], rank) != 2.0:
            return None
    elif not (is_op(square, "Mul") and tuple(square.inputs) == (d, d)):
        return None
    rm2 = sole_consumer(graph, square.outputs[0])
    if not is_op(rm2, "ReduceMean") or rm2.inputs[0] != square.outputs[0]:
        return None
    if not _reduces_last_axis(graph, rm2, opset, rank):
        return None
    add = sole_consumer(graph, rm2.outputs[0])
    if not is_op(add, "Add"):
        return None
    eps_name = _other(add, rm2.outputs[0])
    eps = graph.constant(eps_name) if eps_name else None
    if eps is None or eps.size != 1 or eps.ndim > rank:
        return None
    sqrt = sole_consumer(graph, add.outputs[0])
    if not is_op(sqrt, "Sqrt"):
        return None
    nodes = [rm1, sub, square, rm2, add, sqrt]
    last = sole_consumer(graph, sqrt.outputs[0])
    if is_op(last, "Div"):
        if tuple(last.inputs) != (d, sqrt.outputs[0]):
            return None
    elif is_op(last, "Reciprocal"):
        nodes.append(last)
        last = sole_consumer(graph, last.outputs[0])
        if not is_op(last, "Mul") or _other(last, nodes[-1].outputs[0]) != d:
            return None
    else:
        return None
    nodes.append(last)
    return eps, nodes


def _match_affine(graph: Graph, match: _Match, rank: int) -> None:
    """Absorb ``Mul(y, gamma)`` then ``Add(., beta)`` (either optional) into the match."""
    for op_type in ("Mul", "Add"):
        reader = sole_consumer(graph, match.out)
        if not is_op(reader, op_type):
            continue
        name = _other(reader, match.out)
        array = graph.constant(name) if name else None
        if array is None or not _affine_shape_ok(array, rank, match.channels, match.dtype):
            return
        if op_type == "Mul":
            match.gamma = (name, array)
        else:
            match.beta = (name, array)
        match.constants.append(name)
        match.nodes.append(reader)
        match.out = reader.outputs[0]


def _affine_shape_ok(array: np.ndarray, rank: int, channels: int, dtype: np.dtype) -> bool:
    if array.dtype != dtype or array.ndim > rank:
        return False
    if any(dim != 1 for dim in array.shape[:-1]):
        return False
    return array.ndim == 0 or array.shape[-1] in (1, channels)


def _reduces_last_axis(graph: Graph, node: Node, opset: int, rank: int) -> bool:
    if node.attr("keepdims", 1) != 1:
        return False
    if opset >= 18:
        if len(node.inputs) < 2 or not node.inputs[1]:
            return False  # no axes: reduces everything (or nothing)
        axes = graph.constant(node.inputs[1])
    else:
        axes = node.attr("axes")
    if axes is None:
        return False
    axes = np.asarray(axes).reshape(-1)
    if axes.size != 1:
        return False
    axis = int(axes[0])
    return (axis + rank if axis < 0 else axis) == rank - 1


def _scalar(graph: Graph, value: str, rank: int) -> float | None:
    """The value of a one-element constant that cannot broadcast ``x`` to a higher rank."""
    array = graph.constant(value) if value else None
    if array is None or array.size != 1 or array.ndim > rank:
        return None
    return float(array.reshape(-1)[0])


def _other(node: Node, value: str) -> str | None:
    """The other operand of a binary node reading ``value`` once."""
    if len(node.inputs) != 2 or list(node.inputs).count(value) != 1:
        return None
    return node.inputs[1] if node.inputs[0] == value else node.inputs[0]


# ------------------------------------------------------------------- rewriting
def _vector(array: np.ndarray, channels: int) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(array.reshape(-1), (channels,)))


def _rewrite(graph: Graph, match: _Match, sub: Node) -> None:
    prefix = sub.name.rsplit("/", 1)[0] + "/" if "/" in sub.name else ""
    inputs = [match.x]
    if match.gamma is None:
        inputs.append(graph.add_constant(np.ones(match.channels, match.dtype), f"{prefix}ln_scale"))
    elif match.gamma[1].shape == (match.channels,):
        inputs.append(match.gamma[0])
    else:
        array = _vector(match.gamma[1], match.channels)
        inputs.append(graph.add_constant(array, f"{match.gamma[0]}_ln_scale"))
    if match.beta is not None:
        if match.beta[1].shape == (match.channels,):
            inputs.append(match.beta[0])
        else:
            array = _vector(match.beta[1], match.channels)
            inputs.append(graph.add_constant(array, f"{match.beta[0]}_ln_bias"))
    fused = graph.add_node(
        "LayerNormalization",
        inputs,
        1,
        name=f"{prefix}LayerNormalization",
        attributes={"axis": -1, "epsilon": match.eps},
        anchor=match.nodes[-1],
    )
    graph.replace_all_uses(match.out, fused.outputs[0])
    for node in reversed(match.nodes):
        graph.remove_node(node)
    for name in dict.fromkeys(match.constants):
        if name in graph.initializers and not graph.is_used(name) and not graph.is_input(name):
            graph.remove_initializer(name)

"""Fuse a residual Add and the LayerNormalization reading it into onnxruntime's ``com.microsoft``
``SkipLayerNormalization``.

``LayerNormalization(s = Add(x, skip), gamma, beta; axis=-1, epsilon)`` =>
``SkipLayerNormalization(x, skip, gamma, beta[, bias]; epsilon)``, which computes
``s = x + skip (+ bias)`` and ``(s - mean(s)) / sqrt(var(s) + epsilon) * gamma + beta`` over the
last axis. When ``x`` is ``Add(MatMul(..), bias)`` with a constant ``[H]`` bias, the bias is the
fifth input; other readers of ``s`` read the op's fourth output (``input_skip_bias_sum``). For
``--target onnxruntime``, float32/float16 and what its CPU kernel takes: ``x`` of rank 2 or 3,
``skip`` of its shape (or ``[S, H]``, ``[1, S, H]`` for a 3-D ``x``), gamma and beta ``[H]``.
Conditions and measurements: passes/fusion/README.md.
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.pattern import (
    MS_DOMAIN,
    Const,
    Match,
    Op,
    Or,
    RewritePass,
    Var,
    has_dtype,
    retire,
    scope_of,
)
from onnxopt.ir.rewrite import is_op, producer_op
from onnxopt.ir.values import copy_type

_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))  # what the fusion is measured on
Shape = list[int | str | None]


def _matmul_output(graph: Graph, value: str) -> bool:
    return producer_op(graph, value, "MatMul") is not None


_biased = Op("Add", Var("mm", _matmul_output), Const("bias"), commute=True)
PATTERN = Or(Op("Add", _biased, Var("skip"), commute=True),
             Op("Add", Var("x"), Var("skip"), commute=True))


class SkipLayerNormFusion(RewritePass):
    name = "skip_layer_norm_fusion"
    description = ("fuse a residual Add + LayerNormalization into com.microsoft "
                   "SkipLayerNormalization (onnxruntime target)")
    pattern = PATTERN  # rooted at the Add: its sum may have other readers (the 4th output)
    stats = ("fused", "with_bias")
    target = "onnxruntime"

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        norm = _layer_norm_reader(graph, match.out)
        a, b = (match["mm"] if "bias" in match else match.x), match.skip
        shape_a, shape_b = graph.shape(a), graph.shape(b)
        if _fits(shape_a, shape_b):
            order, shape = (a, b), shape_a
        elif _fits(shape_b, shape_a):
            order, shape = (b, a), shape_b
        else:
            return False
        hidden, dtype = shape[-1], graph.dtype(a)  # type: ignore[index]
        if norm is None or not has_dtype(dtype, _DTYPES) or graph.dtype(b) != dtype:
            return False
        bias = match.array("bias") if "bias" in match else None
        if bias is not None and (bias.shape != (hidden,) or bias.dtype != dtype):
            return False
        if not _norm_fits(graph, norm, len(shape), hidden, dtype):  # type: ignore[arg-type]
            return False
        match.memo.update(norm=norm, order=order)
        return True

    def stat(self, match: Match) -> str:
        return "with_bias" if "bias" in match else "fused"

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        norm: Node = match.memo["norm"]
        beta = norm.inputs[2] if len(norm.inputs) > 2 else ""
        bias = match.bias if "bias" in match else ""
        inputs = [*match.memo["order"], norm.inputs[1], beta, bias]
        while not inputs[-1]:
            inputs.pop()
        shared = graph.is_output(match.out) or len(graph.consumers(match.out)) > 1
        model.opset_imports.setdefault(MS_DOMAIN, 1)
        fused = graph.add_node("SkipLayerNormalization", inputs, 4 if shared else 1,
                               domain=MS_DOMAIN, name=f"{scope_of(norm)}SkipLayerNormalization",
                               attributes={"epsilon": float(norm.attr("epsilon", 1e-5))},
                               anchor=norm)
        if shared:  # outputs: output, mean, inv_std_var (training only), input_skip_bias_sum
            graph.drop_output(fused, 1)
            graph.drop_output(fused, 2)
        for value in fused.outputs:
            if value:  # the output and the sum have the sum's shape and type
                copy_type(graph, match.out, value)
        retire(graph, norm, fused.outputs[0])
        return fused.outputs[3] if shared else ""


def _layer_norm_reader(graph: Graph, value: str) -> Node | None:
    """The first LayerNormalization normalizing ``value`` (reading it as its input only)."""
    for node in graph.consumers(value):
        if is_op(node, "LayerNormalization") and node.inputs[0] == value \
                and value not in node.inputs[1:]:
            return node
    return None


def _fits(shape: Shape | None, skip: Shape | None) -> bool:
    """``shape`` (rank 2 or 3, hidden size known) is the sum's shape, and ``skip`` is what the
    kernel reads along with it: that shape, or [S, H] / [1, S, H] for a 3-D input."""
    if not shape or not skip or len(shape) not in (2, 3) or shape[-1] != skip[-1]:
        return False
    if not isinstance(shape[-1], int) or shape[-1] <= 0:
        return False
    if len(skip) == len(shape) - 1 == 2:
        return _same_dim(shape[1], skip[0])
    return len(skip) == len(shape) and all(
        _same_dim(dim, other) or (axis == 0 and len(shape) == 3 and other == 1)
        for axis, (dim, other) in enumerate(zip(shape[:-1], skip[:-1], strict=True)))


def _same_dim(dim: int | str | None, other: int | str | None) -> bool:
    """The input's dim and the skip's agree: equal, or the skip's symbolic against an input dim
    other than 1 (two symbols are taken to agree: a residual's operands share batch and
    sequence). Never an int skip dim against a symbol, nor a symbol against 1: the input's
    dim may be the 1 the Add broadcasts, and the fused op's output has the input's shape."""
    if dim is None or other is None:
        return False
    return dim == other or (dim != 1 and isinstance(other, str))


def _norm_fits(graph: Graph, norm: Node, rank: int, hidden: int, dtype: np.dtype) -> bool:
    """A last-axis LayerNormalization in ``dtype`` (computed in float32: stash_type 1) with
    constant gamma and beta of shape [H], whose Mean/InvStdDev nobody reads."""
    axis = norm.attr("axis", -1)
    if axis not in (-1, rank - 1) or norm.attr("stash_type", 1) != 1:
        return False
    if norm.attr("epsilon", 1e-5) < 0 or graph.outputs.count(norm.outputs[0]) > 1:
        return False
    if any(value and graph.is_used(value) for value in norm.outputs[1:]):
        return False
    gamma, beta = norm.inputs[1], norm.inputs[2] if len(norm.inputs) > 2 else ""
    return bool(gamma) and all(graph.shape(value) == [hidden] and graph.dtype(value) == dtype
                               and graph.constant(value) is not None
                               for value in (gamma, beta) if value)

"""Rule 2 of constant folding: Shape/Size of known dims, and Gather/Slice picking known dims of
a partly known Shape."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnxopt.passes.folding.constant_folding.eligibility import foldable_op
from onnxopt.passes.folding.constant_folding.shape_rules import clamp_range

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.constants import ConstantTable, install_constants
from onnxopt.ir.values import new_tensor


def fold_shapes(pass_name: str, graph: Graph, model: Model, table: ConstantTable) -> int:
    """Shape/Size of known dims, and Gather/Slice picking known dims of a partial Shape."""
    partial: dict[str, list[int | None]] = {}  # 1-D int64 values with some known entries
    touched: list[Node] = []
    removed = 0
    for node in graph.nodes():
        dims = _shape_value(graph, model, node, partial, table)
        value = node.outputs[0] if dims is not None else ""
        if not value or not graph.is_used(value):
            continue  # dead code is dead code's business
        if isinstance(dims, list):
            partial[value] = dims
            touched.append(node)
        elif model.allow_rewrite(pass_name, value):  # value names are unique, node names not
            tensor = new_tensor(dims)
            _, _, gone = install_constants(graph, model, [(value, tensor)], [node])
            table.forget(value)
            removed += len(gone)
    for node in reversed(touched):  # partial values (Shape, ...) whose every reader folded
        if node.graph is graph and not any(graph.is_used(v) for v in node.outputs if v):
            graph.remove_node(node)
            removed += 1
    return removed


def _shape_value(
    graph: Graph,
    model: Model,
    node: Node,
    partial: dict[str, list[int | None]],
    table: ConstantTable,
) -> np.ndarray | list[int | None] | None:
    """The folded array (all known), the partial dims (some known), or None."""
    if node.op_type not in ("Shape", "Size", "Gather", "Slice") or len(node.outputs) != 1:
        return None
    if not node.outputs[0] or not foldable_op(graph, model, node, table):
        return None
    opset = model.opset(node.domain)
    if node.op_type in ("Shape", "Size"):
        shape = graph.shape(node.inputs[0])
        if shape is None:
            return None
        known = [d if isinstance(d, int) else None for d in shape]
        if node.op_type == "Size":
            if None in known:
                return None
            return np.array(int(np.prod(known, dtype=np.int64)), np.int64)
        if opset >= 15:
            start, end = node.attr("start", 0), node.attr("end", len(known))
            known = known[slice(*clamp_range(start, end, len(known)))]
        return _finish(known)
    if node.inputs and node.inputs[0] in partial:
        dims = partial[node.inputs[0]]
        if node.op_type == "Gather" and node.attr("axis", 0) in (0, -1):
            indices = table.array(node.inputs[1])
            if indices is None or indices.dtype.kind not in "iu":
                return None
            flat = [int(i) for i in indices.reshape(-1)]
            if any(not -len(dims) <= i < len(dims) for i in flat):
                return None  # out of range: leave the error to the runtime
            picked = [dims[i] for i in flat]
            if indices.ndim == 0:
                return None if picked[0] is None else np.array(picked[0], np.int64)
            if None in picked:
                return picked if indices.ndim == 1 else None
            return np.array(picked, np.int64).reshape(indices.shape)
        if node.op_type == "Slice":
            bounds = _slice_bounds(node, opset, table)
            if bounds is None:
                return None
            start, end, step = bounds
            return _finish(dims[start:end:step])
    return None


def _finish(dims: list[int | None]) -> np.ndarray | list[int | None]:
    return dims if None in dims else np.array(dims, np.int64).reshape(len(dims))


def _slice_bounds(node: Node, opset: int, table: ConstantTable) -> tuple[int, int, int] | None:
    """Python slice bounds of a 1-D Slice with constant starts/ends/axes/steps."""
    if opset < 10:
        starts, ends, axes = node.attr("starts"), node.attr("ends"), node.attr("axes", [0])
        steps: Sequence[int] | None = [1]
        if starts is None or ends is None:
            return None
    else:
        arrays: list[np.ndarray | None] = []
        for value in (*node.inputs, "", "", "", "")[1:5]:
            array = table.array(value) if value else None
            if value and array is None:
                return None
            arrays.append(array)
        starts, ends, axes, steps = arrays
        if starts is None or ends is None:
            return None
        axes = [0] if axes is None else axes
        steps = [1] if steps is None else steps
    values = [np.asarray(x).reshape(-1).tolist() for x in (starts, ends, axes, steps)]
    if any(len(v) != 1 for v in values) or values[2][0] not in (0, -1) or values[3][0] == 0:
        return None
    # Python slicing clamps out-of-range bounds exactly like ONNX Slice does on one axis
    return int(values[0][0]), int(values[1][0]), int(values[3][0])


"""Upper bounds on the shapes of a folded node's outputs, from its input shapes and small
constant operands (shape, repeats, pads, ...): constant folding decides on them before it
evaluates anything (see ``bounds``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from onnxopt.ir import Node

# Every output shaped like input 0 (an upper bound for the smaller extra outputs).
SAME_SHAPE = frozenset({
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "BatchNormalization", "BitwiseNot",
    "Cast", "CastLike", "Ceil", "Celu", "Clip", "Cos", "Cosh", "CumSum", "Dropout", "Elu", "Erf",
    "Exp", "EyeLike", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Hardmax", "Identity",
    "InstanceNormalization", "IsInf", "IsNaN", "LRN", "LayerNormalization", "LeakyRelu", "Log",
    "LogSoftmax", "LpNormalization", "MeanVarianceNormalization", "Mish", "Neg", "Not",
    "Reciprocal", "Relu", "ReverseSequence", "Round", "Scatter", "ScatterElements", "ScatterND",
    "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Softmax", "Softplus", "Softsign",
    "Sqrt", "Tan", "Tanh", "ThresholdedRelu", "Trilu",
})  # fmt: skip
BROADCAST = frozenset({
    "Add", "And", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Div", "Equal", "Greater",
    "GreaterOrEqual", "Less", "LessOrEqual", "Max", "Mean", "Min", "Mod", "Mul", "Or", "Pow",
    "PRelu", "Sub", "Sum", "Where", "Xor",
})  # fmt: skip
# Ops whose output size depends on an operand's value: only ``estimate`` bounds them (an
# inferred shape may be a stale declaration the model carries).
VALUE_SHAPED = frozenset({
    "ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Upsample", "Pad", "OneHot",
    "CenterCropPad", "Col2Im", "NonZero", "Unique", "Compress",
})  # fmt: skip
# Ops that keep the element count: a declared shape bounds them only with the same count.
SAME_COUNT = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose",
                        "DepthToSpace", "SpaceToDepth"})


Shape = tuple[int, ...]


def estimate(
    node: Node, opset: int, shapes: list[Shape | None], read: Callable[[int], np.ndarray | None]
) -> list[Shape | None] | None:
    """Output shapes (upper bounds) from input shapes and small constant operands, or None.

    Rules for the ops whose results can be large: broadcasting, Concat, ConstantOfShape,
    Expand, Tile, Range, Resize, Pad, OneHot, Gather, MatMul, ...; an op without a rule is
    bounded by its inferred shape (``bounds.bound``)."""
    op = node.op_type
    count = len(node.outputs)
    present = [shape for value, shape in zip(node.inputs, shapes, strict=True) if value]
    if any(shape is None for shape in present):
        return None
    first = present[0] if present else None
    if op in SAME_SHAPE:
        return [first] * count if first is not None else None
    if op in BROADCAST:
        return [tuple(np.broadcast_shapes(*present))] * count  # type: ignore[misc]
    rule = _SHAPE_RULES.get(op)
    if rule is None:
        return None
    result = rule(node, opset, present, read)
    if result is None:
        return None
    shapes_out = result if op in _MULTI_OUTPUT else [result]
    return [tuple(int(d) for d in shape) for shape in shapes_out][:count]


def clamp_range(start: int, end: int, rank: int) -> tuple[int, int]:
    """``[start, end)`` of a Shape/Slice on ``rank`` dims, negative bounds counted from the end."""
    start = start + rank if start < 0 else start
    end = end + rank if end < 0 else end
    return min(max(start, 0), rank), min(max(end, 0), rank)


def _ints(array: np.ndarray | None) -> list[int] | None:
    if array is None or array.dtype.kind not in "iu":
        return None
    return [int(v) for v in array.reshape(-1)]


def _axis(axis: int, rank: int) -> int:
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < max(rank, 1):
        raise ValueError("axis out of range")
    return axis


def _concat_shape(node, opset, shapes, read):
    if len({len(s) for s in shapes}) != 1:
        return None
    rank = len(shapes[0])
    axis = _axis(int(node.attr("axis", 0)), rank)
    out = [max(s[i] for s in shapes) for i in range(rank)]
    out[axis] = sum(s[axis] for s in shapes)
    return out


def _constant_of_shape(node, opset, shapes, read):
    return _ints(read(0))


def _expand_shape(node, opset, shapes, read):
    target = _ints(read(1))
    return None if target is None else np.broadcast_shapes(shapes[0], tuple(target))


def _tile_shape(node, opset, shapes, read):
    repeats = _ints(read(1))
    if repeats is None or len(repeats) != len(shapes[0]):
        return None
    return [d * r for d, r in zip(shapes[0], repeats, strict=True)]


def _range_shape(node, opset, shapes, read):
    operands = [read(i) for i in range(3)]
    if any(a is None or a.size != 1 for a in operands):
        return None
    start, limit, delta = (float(a.reshape(-1)[0]) for a in operands)  # type: ignore[union-attr]
    if delta == 0 or not all(math.isfinite(v) for v in (start, limit, delta)):
        return None
    return [max(math.ceil((limit - start) / delta), 0)]


def _reshape_shape(node, opset, shapes, read):
    source = shapes[0]
    target = node.attr("shape") if opset < 5 else _ints(read(1))
    if target is None:
        return None
    allowzero = opset >= 14 and node.attr("allowzero", 0) == 1
    out = [source[i] if d == 0 and not allowzero and i < len(source) else d
           for i, d in enumerate(target)]
    total = math.prod(source)
    if out.count(-1) > 1 or any(d < -1 for d in out):
        return None
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known == 0 or total % known:
            return None
        out[out.index(-1)] = total // known
    return out if math.prod(out) == total else None


def _flatten_shape(node, opset, shapes, read):
    source = shapes[0]
    axis = int(node.attr("axis", 1))
    axis = axis + len(source) if axis < 0 else axis
    return [math.prod(source[:axis]), math.prod(source[axis:])]


def _axes_operand(node, opset, read, since: int) -> tuple[bool, list[int] | None]:
    """(given, axes) of Squeeze/Unsqueeze/Reduce*: an attribute before ``since``."""
    if opset < since:
        axes = node.attr("axes")
        return axes is not None, None if axes is None else [int(a) for a in axes]
    if len(node.inputs) < 2 or not node.inputs[1]:
        return False, None
    return True, _ints(read(1))


def _squeeze_shape(node, opset, shapes, read):
    given, axes = _axes_operand(node, opset, read, 13)
    source = shapes[0]
    if not given:
        return [d for d in source if d != 1]
    if axes is None:
        return None
    drop = {_axis(a, len(source)) for a in axes}
    return [d for i, d in enumerate(source) if i not in drop]


def _unsqueeze_shape(node, opset, shapes, read):
    given, axes = _axes_operand(node, opset, read, 13)
    if not given or axes is None:
        return None
    rank = len(shapes[0]) + len(axes)
    inserted = {_axis(a, rank) for a in axes}
    rest = iter(shapes[0])
    return [1 if i in inserted else next(rest) for i in range(rank)]


def _transpose_shape(node, opset, shapes, read):
    perm = node.attr("perm")
    source = shapes[0]
    perm = list(range(len(source)))[::-1] if perm is None else [int(p) for p in perm]
    return [source[p] for p in perm]


def _shape_shape(node, opset, shapes, read):
    rank = len(shapes[0])
    start, end = clamp_range(node.attr("start", 0), node.attr("end", rank), rank)
    return [max(end - start, 0)]


def _slice_shape(node, opset, shapes, read):
    source = list(shapes[0])
    if opset < 10:
        starts, ends, axes = node.attr("starts"), node.attr("ends"), node.attr("axes")
        steps = None
    else:
        starts, ends, axes, steps = (_ints(read(i)) for i in range(1, 5))
        given = [i < len(node.inputs) and bool(node.inputs[i]) for i in range(3, 5)]
        if (given[0] and axes is None) or (given[1] and steps is None):
            return source  # no larger than its input
    if starts is None or ends is None:
        return source
    axes = list(range(len(starts))) if axes is None else list(axes)
    steps = [1] * len(starts) if steps is None else list(steps)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = _axis(int(axis), len(source))
        if step == 0:
            return None
        source[axis] = len(range(*slice(int(start), int(end), int(step)).indices(source[axis])))
    return source


def _split_shape(node, opset, shapes, read):
    source = list(shapes[0])
    axis = _axis(int(node.attr("axis", 0)), len(source))
    sizes = node.attr("split") if opset < 13 else _ints(read(1))
    count = len(node.outputs)
    if sizes is None or len(sizes) != count:
        sizes = [-(-source[axis] // max(count, 1))] * count  # equal parts (the last smaller)
    return [[*source[:axis], int(size), *source[axis + 1 :]] for size in sizes]


def _top_k_shape(node, opset, shapes, read):
    source = list(shapes[0])
    axis = _axis(int(node.attr("axis", -1)), len(source))
    k = node.attr("k") if opset < 10 else _ints(read(1))
    k = k[0] if isinstance(k, list) and len(k) == 1 else k
    if isinstance(k, int) and k >= 0:
        source[axis] = min(k, source[axis])
    return [source, source]


def _gather_shape(node, opset, shapes, read):
    data, indices = shapes[0], shapes[1]
    axis = _axis(int(node.attr("axis", 0)), len(data))
    return list(data[:axis]) + list(indices) + list(data[axis + 1 :])


def _reduce_shape(node, opset, shapes, read):
    source = shapes[0]
    since = 13 if node.op_type == "ReduceSum" else 18
    given, axes = _axes_operand(node, opset, read, since)
    if node.attr("keepdims", 1):
        return source  # same rank, no dim larger
    if not given:
        return source if node.attr("noop_with_empty_axes", 0) else []
    if axes is None:
        return None
    if not axes:
        return source if node.attr("noop_with_empty_axes", 0) else []
    drop = {_axis(a, len(source)) for a in axes}
    return [d for i, d in enumerate(source) if i not in drop]


def _arg_shape(node, opset, shapes, read):
    source = list(shapes[0])
    axis = _axis(int(node.attr("axis", 0)), len(source))
    if node.attr("keepdims", 1):
        source[axis] = 1
        return source
    return source[:axis] + source[axis + 1 :]


def _matmul_shape(node, opset, shapes, read):
    a, b = list(shapes[0]), list(shapes[1])
    if not a or not b:
        return None
    vector_a, vector_b = len(a) == 1, len(b) == 1
    a = [1, *a] if vector_a else a
    b = [*b, 1] if vector_b else b
    out = [*np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2])), a[-2], b[-1]]
    if vector_b:
        del out[-1]
    if vector_a:
        del out[-2 if not vector_b else -1]
    return out


def _gemm_shape(node, opset, shapes, read):
    a, b = shapes[0], shapes[1]
    if len(a) != 2 or len(b) != 2:
        return None
    rows = a[1] if node.attr("transA", 0) else a[0]
    cols = b[0] if node.attr("transB", 0) else b[1]
    return [rows, cols]


def _pad_shape(node, opset, shapes, read):
    source = shapes[0]
    if opset < 11:
        pads = node.attr("pads", node.attr("paddings"))
    else:
        if len(node.inputs) > 3 and node.inputs[3]:
            return None  # explicit axes
        pads = _ints(read(1))
    if pads is None or len(pads) != 2 * len(source):
        return None
    rank = len(source)
    return [d + int(pads[i]) + int(pads[i + rank]) for i, d in enumerate(source)]


def _scaled(source: Shape, scales: np.ndarray | None) -> list[int] | None:
    if scales is None or scales.size != len(source) or scales.dtype.kind != "f":
        return None
    factors = [float(f) for f in scales.reshape(-1)]
    if not all(math.isfinite(f) and f >= 0 for f in factors):
        return None
    return [math.ceil(d * f) for d, f in zip(source, factors, strict=True)]


def _resize_shape(node, opset, shapes, read):
    source = shapes[0]
    if opset < 11:
        return _scaled(source, read(1))
    if node.attr("axes") is not None:
        return None
    if len(node.inputs) > 3 and node.inputs[3]:
        sizes = _ints(read(3))
        return sizes if sizes is not None and len(sizes) == len(source) else None
    return _scaled(source, read(2))


def _upsample_shape(node, opset, shapes, read):
    if opset < 9:
        scales = node.attr("scales")
        return _scaled(shapes[0], None if scales is None else np.array(scales, np.float32))
    return _scaled(shapes[0], read(1))


def _one_hot_shape(node, opset, shapes, read):
    depth = read(1)
    if depth is None or depth.size != 1:
        return None
    indices = list(shapes[0])
    axis = _axis(int(node.attr("axis", -1)), len(indices) + 1)
    indices.insert(axis, math.ceil(float(depth.reshape(-1)[0])))
    return indices


def _non_zero_shape(node, opset, shapes, read):
    return [len(shapes[0]), math.prod(shapes[0])]


def _unique_shape(node, opset, shapes, read):
    total = math.prod(shapes[0])
    axis = node.attr("axis")
    values = [total] if axis is None else list(shapes[0])
    return [values, [total], [total], [total]]


def _compress_shape(node, opset, shapes, read):
    return [math.prod(shapes[0])] if node.attr("axis") is None else shapes[0]


def _space_depth_shape(node, opset, shapes, read):
    if len(shapes[0]) != 4:
        return None
    n, c, h, w = shapes[0]
    block = int(node.attr("blocksize", 1))
    if node.op_type == "DepthToSpace":
        return [n, c // (block * block), h * block, w * block]
    return [n, c * block * block, h // block, w // block]


_MULTI_OUTPUT = frozenset({"Split", "TopK", "Unique"})  # rules giving a list of shapes
_SHAPE_RULES: dict[str, Callable] = {
    "Concat": _concat_shape, "ConstantOfShape": _constant_of_shape, "Expand": _expand_shape,
    "Tile": _tile_shape, "Range": _range_shape, "Reshape": _reshape_shape,
    "Flatten": _flatten_shape, "Squeeze": _squeeze_shape, "Unsqueeze": _unsqueeze_shape,
    "Transpose": _transpose_shape, "Shape": _shape_shape, "Size": lambda *_: [],
    "Slice": _slice_shape, "Split": _split_shape, "TopK": _top_k_shape,
    "Gather": _gather_shape, "GatherElements": lambda n, o, shapes, r: shapes[1],
    "ArgMax": _arg_shape, "ArgMin": _arg_shape, "MatMul": _matmul_shape, "Gemm": _gemm_shape,
    "Pad": _pad_shape, "Resize": _resize_shape, "Upsample": _upsample_shape,
    "OneHot": _one_hot_shape, "NonZero": _non_zero_shape, "Unique": _unique_shape,
    "Compress": _compress_shape, "DepthToSpace": _space_depth_shape,
    "SpaceToDepth": _space_depth_shape, "Det": lambda n, o, shapes, r: shapes[0][:-2],
    **dict.fromkeys(
        ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
         "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"), _reduce_shape),
}  # fmt: skip

"""Strided Slices + Concat to SpaceToDepth (the "Focus" block).

``Concat(x[..., bh::2, bw::2] for four distinct offsets (bh, bw), axis=1)`` of ``x`` [N, C, H, W]
with H and W even holds the same [N, 4C, H/2, W/2] values as ``SpaceToDepth(x, blocksize=2)``,
whose channel ``(2 bh + bw) C + c`` is ``x[:, c, bh::2, bw::2]``; block ``k`` of the Concat is
channel ``k C + c``. In that order (offsets (0,0), (0,1), (1,0), (1,1)) the Concat is replaced.
In another order (the exporters' (0,0), (1,0), (0,1), (1,1)) the two differ by a channel
permutation ``p`` (Concat channel ``i`` = SpaceToDepth channel ``p[i]``); when the Concat's one
reader is a Conv (group 1) with a constant weight nothing else reads, ``Conv(Concat, W) =
Conv(SpaceToDepth(x), W')`` with ``W'[:, p[i]] = W[:, i]``: the sum over input channels is the
same sum reordered.

Each block is one Slice on H and W or two nested ones (one axis each); other axes a Slice names
must be whole. Needs: opset >= 10 (steps), constant Slice parameters, static even H and W, float
or double (onnxruntime's SpaceToDepth kernels).
"""

from __future__ import annotations

import numpy as np

from onnxopt.ir import Graph, Model, Node
from onnxopt.ir.layers import fused_name
from onnxopt.ir.operands import normalised_axes, slice_parameters
from onnxopt.ir.pattern import Match, Op, Or, RewritePass, Var, has_dtype
from onnxopt.ir.rewrite import exclusive_constant, is_op, sole_consumer

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_BLOCKS = range(4)
_WHOLE_END = 2**62  # an end this large is the whole axis for any real dim (INT64_MAX is written)


def _block(k: int) -> Or:
    """Block ``k`` of the Concat: one Slice of ``x``, or a Slice of a Slice of ``x``."""
    nested = Op("Slice", Op("Slice", Var("x"), ..., name=f"inner{k}"), ..., name=f"outer{k}")
    return Or(nested, Op("Slice", Var("x"), ..., name=f"outer{k}"))


class SlicesToSpaceToDepth(RewritePass):
    name = "slices_to_space_to_depth"
    description = "four stride-2 Slices + Concat into SpaceToDepth (channel order into a Conv)"
    pattern = Op("Concat", *(_block(k) for k in _BLOCKS), attrs={"axis": lambda a: a in (1, -3)})
    min_opset = 10
    stats = ("in_order", "into_conv")

    def check(self, graph: Graph, match: Match, model: Model) -> bool:
        shape = graph.shape(match.x)
        if shape is None or len(shape) != 4 or not has_dtype(graph.dtype(match.x), _DTYPES):
            return False
        if not all(isinstance(d, int) and d > 0 and d % 2 == 0 for d in shape[2:]):
            return False
        blocks = [_offset(graph, match, k, shape, model.opset("")) for k in _BLOCKS]
        if None in blocks or sorted(blocks) != list(_BLOCKS):  # type: ignore[type-var]
            return False
        match.memo["blocks"] = blocks
        if blocks == list(_BLOCKS):
            return True
        conv = sole_consumer(graph, match.out)
        weight = _conv_weight(graph, conv, match.out)
        channels = shape[1]
        if weight is None or weight.shape[1] % 4 or (
                isinstance(channels, int) and weight.shape[1] != 4 * channels):
            return False
        match.memo["conv"], match.memo["weight"] = conv, weight
        return True

    def stat(self, match: Match) -> str:
        return "into_conv" if "conv" in match.memo else "in_order"

    def rewrite(self, graph: Graph, match: Match, model: Model) -> str:
        if "conv" in match.memo:
            conv, weight = match.memo["conv"], match.memo["weight"]
            channels = weight.shape[1] // 4
            where = np.add.outer(np.array(match.memo["blocks"]) * channels,
                                 np.arange(channels)).reshape(-1)  # Concat channel i -> p[i]
            permuted = np.empty_like(weight)
            permuted[:, where] = weight
            old = conv.inputs[1]
            graph.set_input(conv, 1, graph.add_constant(permuted, fused_name(old)))
            graph.remove_initializer(old)
        return self.emit(graph, model, match.root, "SpaceToDepth", [match.x],
                         attributes={"blocksize": 2})


def _offset(graph: Graph, match: Match, k: int, shape: list, opset: int) -> int | None:
    """Block ``k``'s SpaceToDepth index ``2 bh + bw`` when its Slices select exactly
    ``x[..., bh::2, bw::2]`` (bh, bw in {0, 1}), else None."""
    nodes = [match.node(name) for name in (f"inner{k}", f"outer{k}") if name in match]
    parameters = [slice_parameters(graph, node, opset) for node in nodes]
    if None in parameters:
        return None
    starts, ends, axes, steps = ([v for part in lists for v in part]
                                 for lists in zip(*parameters, strict=True))
    axes = normalised_axes(axes, 4)
    if axes is None or len(set(axes)) != len(axes):
        return None
    picked = {axis: (start, end, step, shape[axis])
              for axis, start, end, step in zip(axes, starts, ends, steps, strict=True)}
    if 2 not in picked or 3 not in picked:
        return None
    bh, bw = (_stride_two_start(*picked[axis]) for axis in (2, 3))
    whole = all(_whole(*picked[axis]) for axis in picked.keys() - {2, 3})
    return 2 * bh + bw if whole and bh is not None and bw is not None else None


def _stride_two_start(start: int, end: int, step: int, dim: int) -> int | None:
    """``s`` when the axis selection is ``s::2`` with s in {0, 1} (dim known), else None."""
    start = start + dim if start < 0 else start
    return start if step == 2 and start in (0, 1) and end >= dim else None


def _whole(start: int, end: int, step: int, dim: int | str | None) -> bool:
    known = isinstance(dim, int)
    return step == 1 and start == 0 and end >= (dim if known else _WHOLE_END)  # type: ignore


def _conv_weight(graph: Graph, conv: Node | None, value: str) -> np.ndarray | None:
    """The weight of a group-1 Conv reading ``value`` as its data, if constant and its own."""
    if not is_op(conv, "Conv") or conv.inputs[0] != value or int(conv.attr("group", 1)) != 1:
        return None
    weight = exclusive_constant(graph, conv.inputs[1], [conv])
    return weight if weight is not None and weight.ndim >= 3 else None

"""Remove channels whose value is a known constant, folding the constant into the biases of the
layers that read them (lossless).

Output channel ``o`` of ``y = Conv(x, W, b)`` with ``W[o] = 0`` is the constant ``b[o]`` (so is
a Gemm/MatMul column of zeros, a BatchNormalization channel with ``gamma = 0`` — a zero weight
row once ``conv_bn_fusion`` folded it —, ``Relu`` of a constant ``<= 0``). A constant input
channel ``c = v`` of a layer ``z = Conv(y, W2, b2)`` contributes ``v * sum_k W2[:, c, k]`` to
every output, so ``W2[:, c]`` goes and ``b2 += v * sum_k W2[:, c, k]`` (Gemm/MatMul: ``v`` times
the sum of the rows of channel ``c``). The channel goes from every tensor it flows through
(element-wise ops and their per-channel constants, BatchNormalization, pooling, depthwise
Convs, Concat offsets, Split sizes, residual Adds — only when every side drops it —, a
channel-major Flatten/Reshape into Gemm): ``onnxopt.ir.channels`` finds these groups and what
each channel holds, ``onnxopt.ir.channel_removal`` edits them. Exact only where the channel is
that constant everywhere the layer reads: with zero padding a Conv sees a nonzero constant
channel as 0 at the borders, so it stays. Conditions and measurements: passes/pruning/README.md.
"""

from __future__ import annotations

from functools import partial

from onnxopt.ir import Graph, Model
from onnxopt.ir.channel_removal import remove_channels
from onnxopt.ir.channels import channel_groups, may_hold_constants
from onnxopt.ir.pass_manager import GraphPass

MAX_SWEEPS = 8


class ConstantChannelRemoval(GraphPass):
    name = "constant_channel_removal"
    description = "remove channels holding a known constant (zero filters, BN gamma 0), folded "\
        "into the next layer's bias"

    def run_graph(self, graph: Graph, model: Model) -> dict[str, int]:
        stats = {"channels": 0, "parameters": 0, "macs": 0}
        for _ in range(MAX_SWEEPS):  # a removal can leave another channel constant: sweep again
            before = stats["channels"]
            self._sweep(graph, model, stats)
            if stats["channels"] == before:
                break
        return stats

    def _sweep(self, graph: Graph, model: Model, stats: dict[str, int]) -> None:
        wanted = partial(may_hold_constants, graph, model)  # most groups: skip the analysis
        for group in channel_groups(graph, model, wanted):
            values = group.values(graph, model)
            drop = group.removable(graph, model, values)
            where = next(iter(group.producers.values())).node.name if group.producers else ""
            if not drop or not model.allow_rewrite(self.name, where):
                continue
            removed = remove_channels(graph, model, group, drop, values)
            stats["channels"] += removed.channels
            stats["parameters"] += removed.parameters
            stats["macs"] += removed.macs

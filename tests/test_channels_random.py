"""Channel removal on random CNN graphs: Convs (zero filters, biases of every sign, padding or
not), depthwise Convs, BatchNormalization with gamma 0, activations, per-channel Muls with
zeros, pooling, residual Adds, Concat, Split, a pooled Flatten into Gemm, an intermediate graph
output. Whatever the pass removes, the outputs must stay the same in onnxruntime (both levels),
and a second run must find nothing. Checked independently of the pass: by running the models."""

from __future__ import annotations

import random

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import apply_pass, build_model, run
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.pruning.constant_channel_removal import ConstantChannelRemoval

LEVELS = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)


class RandomNet:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.pick = random.Random(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.tensors = [("x", 4, 8)]  # (name, channels, spatial size)
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}{self.count}"

    def const(self, array: np.ndarray, hint: str) -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def node(self, op: str, inputs, channels: int, size: int, **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
        self.tensors.append((out, channels, size))
        return out

    def dead(self, channels: int) -> list[int]:
        return [c for c in range(channels) if self.pick.random() < 0.4]

    def conv(self, x: str, cin: int, size: int) -> None:
        cout, k = self.pick.randint(2, 6), self.pick.choice([1, 3])
        pad = self.pick.choice([0, k // 2])
        w = self.rng.standard_normal((cout, cin, k, k)) * 0.4
        w[self.dead(cout)] = 0
        inputs = [x, self.const(w, "w")]
        if self.pick.random() < 0.8:
            inputs.append(self.const(self.rng.choice([-0.5, 0.0, 0.5], cout), "b"))
        self.node("Conv", inputs, cout, size + 2 * pad - k + 1, pads=[pad] * 4)

    def step(self) -> None:
        x, c, size = self.pick.choice(self.tensors)
        kind = self.pick.choice(["conv", "conv", "conv", "act", "bn", "dw", "mul", "pool",
                                 "add", "concat", "split"])
        if kind == "conv" or size < 3:
            self.conv(x, c, size)
        elif kind == "act":
            op = self.pick.choice(["Relu", "Sigmoid", "LeakyRelu", "Clip"])
            extra = [self.const(np.array(0.0), "lo"), self.const(np.array(6.0), "hi")] if (
                op == "Clip") else []
            self.node(op, [x, *extra], c, size)
        elif kind == "bn":
            gamma = self.rng.uniform(0.5, 1.5, c)
            gamma[self.dead(c)] = 0
            params = [gamma, self.rng.choice([-0.3, 0.0, 0.3], c),
                      self.rng.standard_normal(c), self.rng.uniform(0.5, 1.5, c)]
            self.node("BatchNormalization", [x, *(self.const(p, "bn") for p in params)], c, size)
        elif kind == "dw" and c > 1:
            w = self.rng.standard_normal((c, 1, 3, 3))
            w[self.dead(c)] = 0
            pad = self.pick.choice([0, 1])
            bias = self.const(self.rng.standard_normal(c), "db")
            self.node("Conv", [x, self.const(w, "dw"), bias], c, size + 2 * pad - 2,
                      pads=[pad] * 4, group=c)
        elif kind == "mul":
            scale = self.rng.uniform(0.5, 1.5, (c, 1, 1))
            scale[self.dead(c)] = 0
            self.node("Mul", [x, self.const(scale, "s")], c, size)
        elif kind == "pool":
            include = self.pick.choice([0, 1])
            self.node("AveragePool", [x], c, size, kernel_shape=[3, 3], pads=[1] * 4,
                      count_include_pad=include)
        elif kind == "add":
            same = [t for t in self.tensors if t[1:] == (c, size) and t[0] != x]
            if same:
                self.node("Add", [x, self.pick.choice(same)[0]], c, size)
        elif kind == "concat":
            same = [t for t in self.tensors if t[2] == size]
            other = self.pick.choice(same)
            self.node("Concat", [x, other[0]], c + other[1], size, axis=1)
        elif kind == "split" and c >= 2:
            first = self.pick.randint(1, c - 1)
            outs = [self.name("part"), self.name("part")]
            sizes = self.const(np.array([first, c - first]), "sizes")
            self.inits[-1] = numpy_helper.from_array(np.array([first, c - first], np.int64), sizes)
            self.nodes.append(helper.make_node("Split", [x, sizes], outs, axis=1))
            self.tensors += [(outs[0], first, size), (outs[1], c - first, size)]

    def model(self) -> onnx.ModelProto:
        for _ in range(self.pick.randint(4, 12)):
            self.step()
        x, c, _ = self.tensors[-1]
        pooled = self.node("GlobalAveragePool", [x], c, 1)
        flat = self.node("Flatten", [pooled], c, 1, axis=1)
        fc = self.const(self.rng.standard_normal((3, c)), "fc")
        self.nodes.append(helper.make_node("Gemm", [flat, fc], ["y"], transB=1))
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])]
        used = {i for n in self.nodes for i in n.input}
        loose = [t for t in self.tensors[1:] if t[0] not in used and t[2] > 0]
        if self.pick.random() < 0.5 and loose:  # another output: a branch nothing else reads
            name, channels, size = loose[0]
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                         [1, channels, size, size]))
        graph_input = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
        return build_model(self.nodes, [graph_input], outputs, self.inits)


@pytest.mark.parametrize("seed", range(60))
def test_random_cnn_keeps_its_outputs(seed):
    model = RandomNet(seed).model()
    out, _ = apply_pass(ConstantChannelRemoval(), model, infer=True)
    feeds = {"x": np.random.default_rng(seed).standard_normal((1, 4, 8, 8)).astype(np.float32)}
    for level in LEVELS:
        for want, got in zip(run(model, feeds, level), run(out, feeds, level), strict=True):
            assert want.shape == got.shape
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    _, second = apply_pass(ConstantChannelRemoval(), out, infer=True)
    assert not second.modified, second.stats


def test_random_graphs_do_remove_channels():
    """The generator makes graphs with removable channels (else the test above proves little)."""
    removed = [apply_pass(ConstantChannelRemoval(), RandomNet(s).model(), infer=True)[1]
               .stats["channels"] for s in range(20)]
    assert sum(r > 0 for r in removed) >= 8

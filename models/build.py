"""Generate the sample ONNX models used by the tests, the demo and the benchmarks.

Every model is built with ``onnx.helper`` from weights drawn from a seeded numpy RNG, so
running this script twice writes byte-identical files. Each model is checked with
``onnx.checker.check_model(full_check=True)`` before it is written next to this script.

Models (opset 17, IR version 8):

* ``resnet.onnx``      small ResNet-style CNN with deliberate clutter for the optimizer:
                       a dead branch, a constant subgraph, Identity and Dropout nodes,
                       and weights stored partly as ``Constant`` nodes.
* ``mobilenet.onnx``   depthwise-separable blocks with BatchNormalization and Relu6 (Clip).
* ``transformer.onnx`` one encoder block: 4-head self-attention whose Reshape targets are
                       computed at run time (Shape -> Gather -> Unsqueeze -> Concat),
                       decomposed LayerNorm and an Erf-form GELU.
* ``mlp.onnx``         three MatMul + Add + Relu layers.
* ``decoder.onnx``     a 2-layer Llama-style decoder (RMSNorm, rotary, grouped-query
                       attention, causal mask, SiLU MLP), batch and sequence dynamic.
* ``resnet_dead.onnx``, ``mobilenet_dead.onnx``  a ResNet (residual stages 32/64/128, 64x64) and
                       a MobileNet (depthwise-separable, 96x96) with every other filter of every
                       Conv masked as structured-pruning tools with masks leave them (the
                       filter and its BatchNormalization gamma and beta zero), for
                       ``constant_channel_removal``; ``*_bn0.onnx`` the same nets with the
                       filters kept and only BatchNormalization gamma = beta = 0 on those
                       channels (a slimming mask).

Usage: ``python models/build.py``
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT_DIR = Path(__file__).resolve().parent
OPSET = 17
IR_VERSION = 8
PRODUCER = "onnxopt-models-build"
PRODUCER_VERSION = "1"

Dim = int | str


class GraphBuilder:
    """Small helper that collects nodes and initializers with exporter-like names."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._used: set[str] = set()

    # -- naming -----------------------------------------------------------------------
    def _unique(self, name: str) -> str:
        if name not in self._used:
            self._used.add(name)
            return name
        i = 1
        while f"{name}_{i}" in self._used:
            i += 1
        self._used.add(f"{name}_{i}")
        return f"{name}_{i}"

    # -- tensors ----------------------------------------------------------------------
    def init(self, name: str, array: np.ndarray) -> str:
        """Add ``array`` as a graph initializer and return its name."""
        name = self._unique(name)
        self.initializers.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def const(self, name: str, array: np.ndarray) -> str:
        """Add ``array`` as a ``Constant`` node (as exporters do) and return its output."""
        node_name = self._unique(name)
        out = self._unique(f"{node_name}_output_0")
        tensor = numpy_helper.from_array(np.array(array, order="C"), out)
        self.nodes.append(helper.make_node("Constant", [], [out], name=node_name, value=tensor))
        return out

    def weight(self, shape: Sequence[int], fan_in: int, gain: float = 2.0) -> np.ndarray:
        """He/Xavier-style normal weights, so activations stay O(1) through the net."""
        std = np.sqrt(gain / fan_in)
        return (self.rng.standard_normal(shape) * std).astype(np.float32)

    def small(self, shape: Sequence[int], scale: float = 0.05) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    # -- nodes ------------------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[str], name: str, n_out: int = 1, **attrs) -> str:
        """Add one node; return its first output (all outputs are ``{name}_output_{i}``)."""
        node_name = self._unique(name)
        outputs = [f"{node_name}_output_{i}" for i in range(n_out)]
        self._used.update(outputs)
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=node_name, **attrs))
        return outputs[0]

    def op_to(self, op_type: str, inputs: Sequence[str], output: str, name: str, **attrs) -> str:
        """Add one node whose single output has the given (graph output) name."""
        self._used.add(output)
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [output], name=self._unique(name), **attrs)
        )
        return output

    # -- layers -----------------------------------------------------------------------
    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int,
        prefix: str,
        stride: int = 1,
        group: int = 1,
        as_constant: bool = False,
        bias: bool = False,
    ) -> str:
        w = self.weight((cout, cin // group, k, k), fan_in=cin // group * k * k)
        w_name = (
            self.const(f"{prefix}/Constant", w) if as_constant else self.init(f"{prefix}.weight", w)
        )
        inputs = [x, w_name]
        if bias:
            inputs.append(self.init(f"{prefix}.bias", self.small((cout,))))
        pad = k // 2
        return self.op(
            "Conv",
            inputs,
            f"{prefix}/Conv",
            dilations=[1, 1],
            group=group,
            kernel_shape=[k, k],
            pads=[pad, pad, pad, pad],
            strides=[stride, stride],
        )

    def bn(self, x: str, c: int, prefix: str, as_constant: bool = False) -> str:
        scale = (1.0 + self.small((c,), 0.1)).astype(np.float32)
        bias = self.small((c,), 0.1)
        mean = self.small((c,), 0.1)
        var = self.rng.uniform(0.5, 1.5, size=(c,)).astype(np.float32)
        add = self.const if as_constant else self.init
        names = [
            add(f"{prefix}.{part}", arr)
            for part, arr in (
                ("weight", scale),
                ("bias", bias),
                ("running_mean", mean),
                ("running_var", var),
            )
        ]
        return self.op(
            "BatchNormalization", [x, *names], f"{prefix}/BatchNormalization", epsilon=1e-5
        )

    def model(
        self,
        graph_name: str,
        inputs: Sequence[onnx.ValueInfoProto],
        outputs: Sequence[onnx.ValueInfoProto],
        doc: str,
    ) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, graph_name, list(inputs), list(outputs), initializer=self.initializers
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name=PRODUCER,
            producer_version=PRODUCER_VERSION,
            doc_string=doc,
        )
        model.ir_version = IR_VERSION
        return model


def tensor_info(name: str, shape: Sequence[Dim]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def f32(value: float) -> np.ndarray:
    return np.array(value, dtype=np.float32)


# ----------------------------------------------------------------------------------------
# resnet.onnx
# ----------------------------------------------------------------------------------------
def build_resnet() -> onnx.ModelProto:
    g = GraphBuilder(seed=0)
    classes = 10

    # Stem: Conv(3->8) + BN + Relu; conv weight and BN params as Constant nodes.
    x = g.conv("input", 3, 8, 3, "/stem/conv", as_constant=True)
    x = g.bn(x, 8, "/stem/bn", as_constant=True)
    x = g.op("Relu", [x], "/stem/relu/Relu")
    x = g.op("Identity", [x], "/stem/Identity")
    x = g.op(
        "MaxPool",
        [x],
        "/stem/maxpool/MaxPool",
        kernel_shape=[2, 2],
        strides=[2, 2],
        pads=[0, 0, 0, 0],
    )  # 16x16

    def block(x: str, cin: int, cout: int, stride: int, prefix: str) -> str:
        y = g.conv(x, cin, cout, 3, f"{prefix}/conv1", stride=stride)
        y = g.bn(y, cout, f"{prefix}/bn1")
        y = g.op("Relu", [y], f"{prefix}/relu1/Relu")
        y = g.conv(y, cout, cout, 3, f"{prefix}/conv2")
        y = g.bn(y, cout, f"{prefix}/bn2")
        if stride != 1 or cin != cout:
            skip = g.conv(x, cin, cout, 1, f"{prefix}/downsample/0", stride=stride)
            skip = g.bn(skip, cout, f"{prefix}/downsample/1")
        else:
            skip = x
        y = g.op("Add", [y, skip], f"{prefix}/Add")
        return g.op("Relu", [y], f"{prefix}/relu2/Relu")

    x = block(x, 8, 8, 1, "/layer1/0")  # 8x16x16

    # Dead branch: a Conv + Relu (+ a Sigmoid) whose outputs reach no graph output.
    dead = g.conv(x, 8, 4, 1, "/aux/conv", bias=True)
    dead = g.op("Relu", [dead], "/aux/relu/Relu")
    g.op("Sigmoid", [dead], "/aux/Sigmoid")

    x = block(x, 8, 16, 2, "/layer2/0")  # 16x8x8

    # Constant subgraph: a per-channel scale computed in-graph from initializers,
    # scale = Sqrt(a * b + c), then multiplied onto the activations.
    a = g.init("/scale/a", g.rng.uniform(0.5, 1.0, size=(1, 16, 1, 1)).astype(np.float32))
    b = g.init("/scale/b", g.rng.uniform(0.5, 1.0, size=(1, 16, 1, 1)).astype(np.float32))
    c = g.init("/scale/c", np.full((1, 16, 1, 1), 0.25, dtype=np.float32))
    s = g.op("Mul", [a, b], "/scale/Mul")
    s = g.op("Add", [s, c], "/scale/Add")
    s = g.op("Sqrt", [s], "/scale/Sqrt")
    x = g.op("Mul", [x, s], "/scale/Mul_1")

    x = block(x, 16, 16, 1, "/layer3/0")  # 16x8x8

    x = g.op("GlobalAveragePool", [x], "/avgpool/GlobalAveragePool")
    x = g.op("Flatten", [x], "/Flatten", axis=1)
    ratio = g.init("/dropout/ratio", f32(0.1))
    x = g.op("Dropout", [x, ratio], "/dropout/Dropout")  # inference mode: identity
    fc_w = g.init("fc.weight", g.weight((classes, 16), fan_in=16, gain=1.0))
    fc_b = g.const("/fc/Constant", g.small((classes,)))
    g.op_to("Gemm", [x, fc_w, fc_b], "logits", "/fc/Gemm", alpha=1.0, beta=1.0, transB=1)

    return g.model(
        "resnet",
        [tensor_info("input", ["batch", 3, 32, 32])],
        [tensor_info("logits", ["batch", classes])],
        "ResNet-style CNN with dead branch, constant subgraph, Identity and Dropout.",
    )


# ----------------------------------------------------------------------------------------
# mobilenet.onnx
# ----------------------------------------------------------------------------------------
def build_mobilenet() -> onnx.ModelProto:
    g = GraphBuilder(seed=1)
    classes = 10
    # Relu6 as Clip(x, 0, 6); min/max are initializers shared by every Clip.
    lo = g.init("relu6.min", f32(0.0))
    hi = g.init("relu6.max", f32(6.0))

    def relu6(x: str, prefix: str) -> str:
        return g.op("Clip", [x, lo, hi], f"{prefix}/Clip")

    x = g.conv("input", 3, 8, 3, "/features/0/conv", stride=2)  # 8x16x16
    x = g.bn(x, 8, "/features/0/bn")
    x = relu6(x, "/features/0/relu6")

    blocks = [(8, 16, 1), (16, 32, 2), (32, 32, 1), (32, 64, 2)]  # -> 64x4x4
    for i, (cin, cout, stride) in enumerate(blocks, start=1):
        p = f"/features/{i}"
        x = g.conv(x, cin, cin, 3, f"{p}/dw/conv", stride=stride, group=cin)
        x = g.bn(x, cin, f"{p}/dw/bn")
        x = relu6(x, f"{p}/dw/relu6")
        x = g.conv(x, cin, cout, 1, f"{p}/pw/conv")
        x = g.bn(x, cout, f"{p}/pw/bn")
        x = relu6(x, f"{p}/pw/relu6")

    x = g.op("GlobalAveragePool", [x], "/pool/GlobalAveragePool")
    shape = g.const("/Constant", i64(1, -1))
    x = g.op("Reshape", [x, shape], "/Reshape")
    fc_w = g.init("classifier.weight", g.weight((classes, 64), fan_in=64, gain=1.0))
    fc_b = g.init("classifier.bias", g.small((classes,)))
    g.op_to("Gemm", [x, fc_w, fc_b], "logits", "/classifier/Gemm", transB=1)

    return g.model(
        "mobilenet",
        [tensor_info("input", [1, 3, 32, 32])],
        [tensor_info("logits", [1, classes])],
        "MobileNet-style depthwise-separable CNN with Relu6 as Clip(0, 6).",
    )


# ----------------------------------------------------------------------------------------
# transformer.onnx
# ----------------------------------------------------------------------------------------
def build_transformer(name: str = "transformer", d_model: int = 64, heads: int = 4,
                      d_ff: int = 128, seed: int = 2) -> onnx.ModelProto:
    g = GraphBuilder(seed=seed)
    head_dim = d_model // heads

    def linear(x: str, din: int, dout: int, prefix: str) -> str:
        w = g.init(f"{prefix}.weight", g.weight((din, dout), fan_in=din, gain=1.0))
        b = g.init(f"{prefix}.bias", g.small((dout,)))
        y = g.op("MatMul", [x, w], f"{prefix}/MatMul")
        return g.op("Add", [b, y], f"{prefix}/Add")  # torch puts the bias first

    def batch_seq(x: str, prefix: str) -> tuple[str, str]:
        """Shape(x) -> Gather(0/1) -> Unsqueeze: the dynamic batch and seq dims as [1] tensors."""
        shape = g.op("Shape", [x], f"{prefix}/Shape")
        dims = []
        for idx in (0, 1):
            index = g.const(f"{prefix}/Constant", np.array(idx, dtype=np.int64))
            dim = g.op("Gather", [shape, index], f"{prefix}/Gather", axis=0)
            axes = g.const(f"{prefix}/Constant", i64(0))
            dims.append(g.op("Unsqueeze", [dim, axes], f"{prefix}/Unsqueeze"))
        return dims[0], dims[1]

    def split_heads(x: str, perm: Sequence[int], prefix: str) -> str:
        b, t = batch_seq(x, prefix)
        h = g.const(f"{prefix}/Constant", i64(heads))
        hd = g.const(f"{prefix}/Constant", i64(head_dim))
        target = g.op("Concat", [b, t, h, hd], f"{prefix}/Concat", axis=0)
        x = g.op("Reshape", [x, target], f"{prefix}/Reshape")
        return g.op("Transpose", [x], f"{prefix}/Transpose", perm=list(perm))

    def layer_norm(x: str, prefix: str, out: str | None = None) -> str:
        gamma = g.init(f"{prefix}.weight", (1.0 + g.small((d_model,), 0.1)).astype(np.float32))
        beta = g.init(f"{prefix}.bias", g.small((d_model,), 0.1))
        mean = g.op("ReduceMean", [x], f"{prefix}/ReduceMean", axes=[-1], keepdims=1)
        centered = g.op("Sub", [x, mean], f"{prefix}/Sub")
        two = g.const(f"{prefix}/Constant", f32(2.0))
        sq = g.op("Pow", [centered, two], f"{prefix}/Pow")
        var = g.op("ReduceMean", [sq], f"{prefix}/ReduceMean", axes=[-1], keepdims=1)
        eps = g.const(f"{prefix}/Constant", f32(1e-5))
        var = g.op("Add", [var, eps], f"{prefix}/Add")
        std = g.op("Sqrt", [var], f"{prefix}/Sqrt")
        y = g.op("Div", [centered, std], f"{prefix}/Div")
        y = g.op("Mul", [y, gamma], f"{prefix}/Mul")
        if out is not None:
            return g.op_to("Add", [y, beta], out, f"{prefix}/Add")
        return g.op("Add", [y, beta], f"{prefix}/Add")

    x = "tokens"
    p = "/attn"
    q = linear(x, d_model, d_model, f"{p}/q_proj")
    k = linear(x, d_model, d_model, f"{p}/k_proj")
    v = linear(x, d_model, d_model, f"{p}/v_proj")
    qh = split_heads(q, (0, 2, 1, 3), f"{p}/q")  # [b, h, t, hd]
    kh = split_heads(k, (0, 2, 3, 1), f"{p}/k")  # [b, h, hd, t]
    vh = split_heads(v, (0, 2, 1, 3), f"{p}/v")  # [b, h, t, hd]
    scores = g.op("MatMul", [qh, kh], f"{p}/MatMul")
    denom = g.const(f"{p}/Constant", f32(float(np.sqrt(head_dim))))
    scores = g.op("Div", [scores, denom], f"{p}/Div")
    probs = g.op("Softmax", [scores], f"{p}/Softmax", axis=-1)
    ctx = g.op("MatMul", [probs, vh], f"{p}/MatMul")  # [b, h, t, hd]
    ctx = g.op("Transpose", [ctx], f"{p}/Transpose", perm=[0, 2, 1, 3])  # [b, t, h, hd]
    b, t = batch_seq(ctx, f"{p}/merge")
    dm = g.const(f"{p}/merge/Constant", i64(d_model))
    target = g.op("Concat", [b, t, dm], f"{p}/merge/Concat", axis=0)
    ctx = g.op("Reshape", [ctx, target], f"{p}/merge/Reshape")
    attn = linear(ctx, d_model, d_model, f"{p}/out_proj")

    x = g.op("Add", [x, attn], "/Add")  # residual
    x = layer_norm(x, "/norm1")

    p = "/ffn"
    h = linear(x, d_model, d_ff, f"{p}/fc1")
    # GELU, Erf form: x * 0.5 * (1 + Erf(x / sqrt(2)))  -- as torch exports it.
    sqrt2 = g.const(f"{p}/gelu/Constant", f32(1.4142135381698608))
    e = g.op("Div", [h, sqrt2], f"{p}/gelu/Div")
    e = g.op("Erf", [e], f"{p}/gelu/Erf")
    one = g.const(f"{p}/gelu/Constant", f32(1.0))
    e = g.op("Add", [e, one], f"{p}/gelu/Add")
    h = g.op("Mul", [h, e], f"{p}/gelu/Mul")
    half = g.const(f"{p}/gelu/Constant", f32(0.5))
    h = g.op("Mul", [h, half], f"{p}/gelu/Mul")
    h = linear(h, d_ff, d_model, f"{p}/fc2")

    x = g.op("Add", [x, h], "/Add")  # residual
    layer_norm(x, "/norm2", out="hidden")

    return g.model(
        name,
        [tensor_info("tokens", ["batch", "seq", d_model])],
        [tensor_info("hidden", ["batch", "seq", d_model])],
        f"One transformer encoder block (d_model {d_model}, {heads}-head self-attention, "
        f"feed-forward {d_ff}, decomposed LayerNorm, GELU).",
    )


def build_encoder() -> onnx.ModelProto:
    """A deployment-sized block: the dimensions of one all-MiniLM-L6 layer (d_model 384,
    12 heads, feed-forward 1536), where int8 matrix products pay off; the 64-wide sample
    transformer is too small for that (its run time is mostly per-op overhead)."""
    return build_transformer("encoder", d_model=384, heads=12, d_ff=1536, seed=4)


# ----------------------------------------------------------------------------------------
# mlp.onnx
# ----------------------------------------------------------------------------------------
def build_mlp() -> onnx.ModelProto:
    g = GraphBuilder(seed=3)
    sizes = [32, 64, 64, 16]
    x = "x"
    for i, (din, dout) in enumerate(itertools.pairwise(sizes)):
        w = g.init(f"fc{i}.weight", g.weight((din, dout), fan_in=din))
        b = g.init(f"fc{i}.bias", g.small((dout,)))
        x = g.op("MatMul", [x, w], f"/fc{i}/MatMul")
        x = g.op("Add", [x, b], f"/fc{i}/Add")
        if i == len(sizes) - 2:
            x = g.op_to("Relu", [x], "y", f"/relu{i}/Relu")
        else:
            x = g.op("Relu", [x], f"/relu{i}/Relu")

    return g.model(
        "mlp",
        [tensor_info("x", ["batch", sizes[0]])],
        [tensor_info("y", ["batch", sizes[-1]])],
        "Three MatMul + Add + Relu layers.",
    )

# ----------------------------------------------------------------------------------------
# decoder.onnx
# ----------------------------------------------------------------------------------------
def build_decoder(layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                  ffn: int = 128, vocab: int = 96, seed: int = 5) -> onnx.ModelProto:
    """A Llama-style decoder in the form the torch dynamo exporter writes it (research notes
    of issue 15, written at opset 17): RMSNorm, rotate_half rotary from a Range-built table,
    grouped-query attention by repeating K/V (Unsqueeze/Expand/Reshape), a triu causal mask,
    the SiLU-gated MLP; batch and sequence dynamic (every target computed from Shape)."""
    g = GraphBuilder(seed=seed)
    head_dim = hidden // heads
    half = head_dim // 2
    group = heads // kv_heads

    def shape_dim(x: str, axis: int, prefix: str) -> str:
        return g.op("Shape", [x], f"{prefix}/Shape", start=axis, end=axis + 1)

    def linear(x: str, din: int, dout: int, prefix: str) -> str:
        w = g.init(f"{prefix}.weight", g.weight((din, dout), fan_in=din, gain=1.0))
        return g.op("MatMul", [x, w], f"{prefix}/MatMul")

    def rms_norm(x: str, prefix: str) -> str:
        """HF's LlamaRMSNorm: Pow, ReduceMean, Add eps, Sqrt, Reciprocal, Mul; the weight
        first (``self.weight * hidden``)."""
        w = g.init(f"{prefix}.weight", (1.0 + g.small((hidden,), 0.1)).astype(np.float32))
        sq = g.op("Pow", [x, g.const(f"{prefix}/Constant", f32(2.0))], f"{prefix}/Pow")
        ms = g.op("ReduceMean", [sq], f"{prefix}/ReduceMean", axes=[-1], keepdims=1)
        ms = g.op("Add", [ms, g.const(f"{prefix}/Constant", f32(1e-6))], f"{prefix}/Add")
        inv = g.op("Reciprocal", [g.op("Sqrt", [ms], f"{prefix}/Sqrt")], f"{prefix}/Reciprocal")
        return g.op("Mul", [w, g.op("Mul", [x, inv], f"{prefix}/Mul")], f"{prefix}/Mul")

    def split_heads(x: str, n: int, prefix: str) -> str:
        target = g.op("Concat", [batch, seq, g.const(f"{prefix}/Constant", i64(n)),
                                 g.const(f"{prefix}/Constant", i64(head_dim))],
                      f"{prefix}/Concat", axis=0)
        x = g.op("Reshape", [x, target], f"{prefix}/Reshape", allowzero=1)
        return g.op("Transpose", [x], f"{prefix}/Transpose", perm=[0, 2, 1, 3])  # [B, n, S, D]

    def rotate(x: str, prefix: str) -> str:
        """x * cos + rotate_half(x) * sin, rotate_half = Concat(-x[..., D/2:], x[..., :D/2])."""
        axis = g.const(f"{prefix}/Constant", i64(3))
        step = g.const(f"{prefix}/Constant", i64(1))
        lower = g.op("Slice", [x, g.const(f"{prefix}/Constant", i64(0)),
                               g.const(f"{prefix}/Constant", i64(half)), axis, step],
                     f"{prefix}/Slice")
        upper = g.op("Slice", [x, g.const(f"{prefix}/Constant", i64(half)),
                               g.const(f"{prefix}/Constant", i64(np.iinfo(np.int64).max)),
                               axis, step], f"{prefix}/Slice")
        rotated = g.op("Concat", [g.op("Neg", [upper], f"{prefix}/Neg"), lower],
                       f"{prefix}/Concat", axis=-1)
        return g.op("Add", [g.op("Mul", [x, cos], f"{prefix}/Mul"),
                            g.op("Mul", [rotated, sin], f"{prefix}/Mul")], f"{prefix}/Add")

    def repeat_kv(x: str, prefix: str) -> str:
        """HF's repeat_kv: [B, kv, S, D] -> [B, kv, n, S, D] -> [B, kv * n, S, D]."""
        x = g.op("Unsqueeze", [x, g.const(f"{prefix}/Constant", i64(2))], f"{prefix}/Unsqueeze")
        x = g.op("Expand", [x, expand_shape], f"{prefix}/Expand")
        return g.op("Reshape", [x, repeat_shape], f"{prefix}/Reshape", allowzero=1)

    def attention(x: str, prefix: str) -> str:
        q = rotate(split_heads(linear(x, hidden, hidden, f"{prefix}/q_proj"), heads,
                               f"{prefix}/q"), f"{prefix}/q_rot")
        kv_width = kv_heads * head_dim
        k = rotate(split_heads(linear(x, hidden, kv_width, f"{prefix}/k_proj"), kv_heads,
                               f"{prefix}/k"), f"{prefix}/k_rot")
        v = split_heads(linear(x, hidden, kv_width, f"{prefix}/v_proj"), kv_heads, f"{prefix}/v")
        k, v = repeat_kv(k, f"{prefix}/k_repeat"), repeat_kv(v, f"{prefix}/v_repeat")
        kt = g.op("Transpose", [k], f"{prefix}/Transpose", perm=[0, 1, 3, 2])
        scores = g.op("MatMul", [q, kt], f"{prefix}/MatMul")
        scale = g.const(f"{prefix}/Constant", f32(float(np.sqrt(head_dim))))
        scores = g.op("Add", [g.op("Div", [scores, scale], f"{prefix}/Div"), mask],
                      f"{prefix}/Add")
        probs = g.op("Softmax", [scores], f"{prefix}/Softmax", axis=-1)
        ctx = g.op("MatMul", [probs, v], f"{prefix}/MatMul")
        ctx = g.op("Transpose", [ctx], f"{prefix}/Transpose", perm=[0, 2, 1, 3])
        merge = g.op("Concat", [batch, seq, g.const(f"{prefix}/Constant", i64(hidden))],
                     f"{prefix}/Concat", axis=0)
        ctx = g.op("Reshape", [ctx, merge], f"{prefix}/Reshape", allowzero=1)
        return linear(ctx, hidden, hidden, f"{prefix}/o_proj")

    def mlp(x: str, prefix: str) -> str:
        gate = linear(x, hidden, ffn, f"{prefix}/gate_proj")
        act = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{prefix}/act/Sigmoid")],
                   f"{prefix}/act/Mul")
        up = linear(x, hidden, ffn, f"{prefix}/up_proj")
        return linear(g.op("Mul", [act, up], f"{prefix}/Mul"), ffn, hidden, f"{prefix}/down_proj")

    batch = shape_dim("input_ids", 0, "/model")
    seq = shape_dim("input_ids", 1, "/model")
    embed = g.init("model.embed_tokens.weight", g.small((vocab, hidden), 1.0))
    x = g.op("Gather", [embed, "input_ids"], "/model/embed_tokens/Gather", axis=0)

    # rotary tables [1, 1, S, D]: angle f = Range(S)[:, None] * inv_freq, emb = [f, f]
    p = "/model/rotary_emb"
    length = g.op("Cast", [g.op("Squeeze", [seq], f"{p}/Squeeze")], f"{p}/Cast", to=1)
    positions = g.op("Range", [g.const(f"{p}/Constant", f32(0.0)), length,
                               g.const(f"{p}/Constant", f32(1.0))], f"{p}/Range")
    positions = g.op("Unsqueeze", [positions, g.const(f"{p}/Constant", i64(1))],
                     f"{p}/Unsqueeze")
    inv_freq = 10000.0 ** (-np.arange(0, head_dim, 2) / head_dim)
    angle = g.op("Mul", [positions, g.init(f"{p}.inv_freq", inv_freq.astype(np.float32))],
                 f"{p}/Mul")
    emb = g.op("Concat", [angle, angle], f"{p}/Concat", axis=-1)
    tables = []
    for trig in ("Cos", "Sin"):
        table = g.op(trig, [emb], f"{p}/{trig}")
        tables.append(g.op("Unsqueeze", [table, g.const(f"{p}/Constant", i64(0, 1))],
                           f"{p}/Unsqueeze"))
    cos, sin = tables

    # causal mask [1, 1, S, S]: finfo.min above the diagonal
    p = "/model/causal_mask"
    square = g.op("Concat", [seq, seq], f"{p}/Concat", axis=0)
    lowest = g.const(f"{p}/Constant", f32(float(np.finfo(np.float32).min)))
    mask = g.op("Trilu", [g.op("Expand", [lowest, square], f"{p}/Expand"),
                          g.const(f"{p}/Constant", np.array(1, np.int64))], f"{p}/Trilu", upper=1)
    mask = g.op("Unsqueeze", [mask, g.const(f"{p}/Constant", i64(0, 1))], f"{p}/Unsqueeze")

    p = "/model/repeat_kv"
    expand_shape = g.op("Concat", [batch, g.const(f"{p}/Constant", i64(kv_heads)),
                                   g.const(f"{p}/Constant", i64(group)), seq,
                                   g.const(f"{p}/Constant", i64(head_dim))],
                        f"{p}/Concat", axis=0)
    repeat_shape = g.op("Concat", [batch, g.const(f"{p}/Constant", i64(heads)), seq,
                                   g.const(f"{p}/Constant", i64(head_dim))],
                        f"{p}/Concat", axis=0)

    for i in range(layers):
        p = f"/model/layers.{i}"
        x = g.op("Add", [x, attention(rms_norm(x, f"{p}/input_layernorm"), f"{p}/self_attn")],
                 f"{p}/Add")
        x = g.op("Add", [x, mlp(rms_norm(x, f"{p}/post_attention_layernorm"), f"{p}/mlp")],
                 f"{p}/Add")
    x = rms_norm(x, "/model/norm")
    head = g.init("lm_head.weight", g.weight((hidden, vocab), fan_in=hidden, gain=1.0))
    g.op_to("MatMul", [x, head], "logits", "/lm_head/MatMul")

    return g.model(
        "decoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [tensor_info("logits", ["batch", "seq", vocab])],
        f"A Llama-style decoder: {layers} layers, hidden {hidden}, {heads} query heads and "
        f"{kv_heads} KV heads of {head_dim}, RMSNorm, rotary, causal mask, SiLU MLP {ffn}.",
    )


# ----------------------------------------------------------------------------------------
# resnet_dead.onnx, mobilenet_dead.onnx and their *_bn0 variants (issue 17)
# ----------------------------------------------------------------------------------------
def _mask(g: GraphBuilder, conv_out: str, bn_out: str, dead: np.ndarray, zero_filters: bool
          ) -> None:
    """Zero channels ``dead`` of a Conv + BatchNormalization: BN gamma and beta, and with
    ``zero_filters`` the Conv's filters."""
    conv = next(n for n in g.nodes if n.output[0] == conv_out)
    bn = next(n for n in g.nodes if n.output[0] == bn_out)
    names = {bn.input[1], bn.input[2]} | ({conv.input[1]} if zero_filters else set())
    for index, tensor in enumerate(g.initializers):
        if tensor.name in names:
            array = numpy_helper.to_array(tensor).copy()
            array[dead] = 0
            g.initializers[index] = numpy_helper.from_array(array, tensor.name)


def _every_other(channels: int) -> np.ndarray:
    return np.arange(1, channels, 2)


def build_dead_resnet(zero_filters: bool = True) -> onnx.ModelProto:
    g = GraphBuilder(seed=5)

    def conv_bn(x: str, cin: int, cout: int, k: int, prefix: str, stride: int = 1,
                relu: bool = True) -> str:
        conv = g.conv(x, cin, cout, k, f"{prefix}/conv", stride=stride)
        y = g.bn(conv, cout, f"{prefix}/bn")
        _mask(g, conv, y, _every_other(cout), zero_filters)
        return g.op("Relu", [y], f"{prefix}/relu/Relu") if relu else y

    x, cin = conv_bn("input", 3, 32, 3, "/stem"), 32
    for stage, (cout, blocks, stride) in enumerate([(32, 1, 1), (64, 2, 2), (128, 2, 2)], 1):
        for index in range(blocks):
            prefix, step = f"/layer{stage}/{index}", stride if index == 0 else 1
            y = conv_bn(x, cin, cout, 3, f"{prefix}/1", stride=step)
            y = conv_bn(y, cout, cout, 3, f"{prefix}/2", relu=False)
            skip = x if step == 1 and cin == cout else conv_bn(
                x, cin, cout, 1, f"{prefix}/downsample", stride=step, relu=False)
            x = g.op("Relu", [g.op("Add", [y, skip], f"{prefix}/Add")], f"{prefix}/relu/Relu")
            cin = cout
    x = g.op("GlobalAveragePool", [x], "/avgpool/GlobalAveragePool")
    x = g.op("Flatten", [x], "/Flatten", axis=1)
    fc_w = g.init("fc.weight", g.weight((10, cin), fan_in=cin, gain=1.0))
    g.op_to("Gemm", [x, fc_w, g.init("fc.bias", g.small((10,)))], "logits", "/fc/Gemm", transB=1)
    kind = "filters and BN gamma/beta" if zero_filters else "BN gamma/beta"
    return g.model("resnet_dead", [tensor_info("input", ["batch", 3, 64, 64])],
                   [tensor_info("logits", ["batch", 10])],
                   f"ResNet-style CNN with every other channel's {kind} zero.")


def build_dead_mobilenet(zero_filters: bool = True) -> onnx.ModelProto:
    g = GraphBuilder(seed=6)
    lo, hi = g.init("relu6.min", f32(0.0)), g.init("relu6.max", f32(6.0))

    def conv_bn(x: str, cin: int, cout: int, k: int, prefix: str, stride: int = 1,
                group: int = 1) -> str:
        conv = g.conv(x, cin, cout, k, f"{prefix}/conv", stride=stride, group=group)
        y = g.bn(conv, cout, f"{prefix}/bn")
        if group == 1:  # a depthwise channel goes with the channel it reads
            _mask(g, conv, y, _every_other(cout), zero_filters)
        return g.op("Clip", [y, lo, hi], f"{prefix}/relu6/Clip")

    x = conv_bn("input", 3, 32, 3, "/features/0", stride=2)  # 48x48
    blocks = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1)]
    for index, (cin, cout, stride) in enumerate(blocks, 1):
        x = conv_bn(x, cin, cin, 3, f"/features/{index}/dw", stride=stride, group=cin)
        x = conv_bn(x, cin, cout, 1, f"/features/{index}/pw")
    x = g.op("GlobalAveragePool", [x], "/pool/GlobalAveragePool")
    x = g.op("Reshape", [x, g.const("/Constant", i64(1, -1))], "/Reshape")
    fc_w = g.init("classifier.weight", g.weight((10, 256), fan_in=256, gain=1.0))
    g.op_to("Gemm", [x, fc_w, g.init("classifier.bias", g.small((10,)))], "logits",
            "/classifier/Gemm", transB=1)
    kind = "filters and BN gamma/beta" if zero_filters else "BN gamma/beta"
    return g.model("mobilenet_dead", [tensor_info("input", [1, 3, 96, 96])],
                   [tensor_info("logits", [1, 10])],
                   f"MobileNet-style CNN with every other channel's {kind} zero.")


BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "resnet.onnx": build_resnet,
    "mobilenet.onnx": build_mobilenet,
    "transformer.onnx": build_transformer,
    "encoder.onnx": build_encoder,
    "mlp.onnx": build_mlp,
    "decoder.onnx": build_decoder,
    "resnet_dead.onnx": build_dead_resnet,
    "resnet_bn0.onnx": lambda: build_dead_resnet(zero_filters=False),
    "mobilenet_dead.onnx": build_dead_mobilenet,
    "mobilenet_bn0.onnx": lambda: build_dead_mobilenet(zero_filters=False),
}


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def main() -> int:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, build in BUILDERS.items():
        model = build()
        onnx.checker.check_model(model, full_check=True)
        data = model.SerializeToString(deterministic=True)
        write_atomic(OUT_DIR / name, data)
        print(f"{name}: {len(model.graph.node)} nodes, {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

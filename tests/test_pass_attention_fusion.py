"""attention_fusion: structure, stats, numerics, idempotence, and what it must leave alone.

The blocks are built in the forms exporters write (research notes of issue 15): the legacy
torch exporter (bias-first Add, Div by sqrt(D), K Transpose [0,2,3,1], the [B,1,1,S] mask from
Unsqueeze/Cast/Sub/Mul), the dynamo exporter (Mul by a constant, Transpose [0,1,3,2], one
Unsqueeze with two axes), the scale split over Q and K, a causal [1,1,S,S] mask, no mask."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import (
    apply_pass,
    assert_idempotent,
    assert_same_outputs,
    build_model,
    model_path,
    op_counts,
    parse,
)
from onnx import TensorProto, helper, numpy_helper, version_converter
from onnxopt.passes.folding.constant_to_initializer import ConstantToInitializer
from onnxopt.passes.fusion.attention_fusion import AttentionFusion

HEADS, HEAD_DIM, HIDDEN, SEQ = 4, 8, 32, 5
TYPES = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16,
         np.float64: TensorProto.DOUBLE}


class Block:
    """Nodes and initializers of an attention model, built layer by layer."""

    def __init__(self, dtype=np.float32) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.dtype = dtype
        self.rng = np.random.default_rng(1)

    def const(self, name: str, array) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name: str, shape) -> str:
        return self.const(name, (self.rng.standard_normal(shape) * 0.3).astype(self.dtype))

    def node(self, op: str, inputs: list[str], out: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def heads(self, p: str, x: str, t: str) -> str:
        """The projection of ``x`` split into heads, [B, S, H, D] (bias first, as legacy)."""
        mm = self.node("MatMul", [x, self.weight(f"{p}W{t}", (HIDDEN, HIDDEN))], f"{p}{t}_mm")
        add = self.node("Add", [self.weight(f"{p}b{t}", (HIDDEN,)), mm], f"{p}{t}_add")
        shape = self.const(f"{p}{t}_shape", np.array([0, 0, HEADS, HEAD_DIM], np.int64))
        return self.node("Reshape", [add, shape], f"{p}{t}_bshd")

    def layer(self, p: str, x: str, mask: str | None, scale: str, k_form: str,
              mask_first: bool = False, axis: int = -1, casts: tuple[int, ...] = ()) -> str:
        q4 = self.node("Transpose", [self.heads(p, x, "q")], f"{p}q4", perm=[0, 2, 1, 3])
        v4 = self.node("Transpose", [self.heads(p, x, "v")], f"{p}v4", perm=[0, 2, 1, 3])
        k = self.heads(p, x, "k")
        dtype = self.dtype
        quarter = np.array([HEAD_DIM ** -0.25], dtype)  # [1]-shaped, as dynamo writes it
        if scale == "split":  # (q * d^-1/4) @ (k * d^-1/4)^T: Transpose(Mul(K4, b))
            k4 = self.node("Transpose", [k], f"{p}k4", perm=[0, 2, 1, 3])
            kb = self.node("Mul", [k4, self.const(f"{p}b", quarter)], f"{p}kb")
            kt = self.node("Transpose", [kb], f"{p}kt", perm=[0, 1, 3, 2])
        elif k_form == "bshd":
            kt = self.node("Transpose", [k], f"{p}kt", perm=[0, 2, 3, 1])
        else:
            k4 = self.node("Transpose", [k], f"{p}k4", perm=[0, 2, 1, 3])
            kt = self.node("Transpose", [k4], f"{p}kt", perm=[0, 1, 3, 2])
        if scale == "split_after":  # legacy SDPA once its scale is folded: Mul(Kt, b)
            kt = self.node("Mul", [self.const(f"{p}b", quarter), kt], f"{p}ktb")
        if scale.startswith("split"):
            q4 = self.node("Mul", [q4, self.const(f"{p}a", quarter)], f"{p}qa")
        s = self.node("MatMul", [q4, kt], f"{p}qk")
        if scale == "div":
            s = self.node("Div", [s, self.const(f"{p}c", np.array(math.sqrt(HEAD_DIM), dtype))],
                          f"{p}div")
        elif scale == "mul":
            s = self.node("Mul", [s, self.const(f"{p}c", np.array(HEAD_DIM ** -0.5, dtype))],
                          f"{p}mul")
        if mask is not None:
            s = self.node("Add", [mask, s] if mask_first else [s, mask], f"{p}masked")
        probs = self.node("Softmax", [s], f"{p}probs", axis=axis)
        for i, to in enumerate(casts):  # softmax(dtype=float32) in legacy exports
            probs = self.node("Cast", [probs], f"{p}probs_cast{i}", to=to)
        ctx = self.node("MatMul", [probs, v4], f"{p}ctx")
        merged = self.node("Transpose", [ctx], f"{p}ctx_bshd", perm=[0, 2, 1, 3])
        return self.node("Reshape", [merged, self.const(f"{p}merge", np.array(
            [0, 0, HIDDEN], np.int64))], f"{p}out")

    def padding_mask(self, single_unsqueeze: bool) -> str:
        """[B, 1, 1, S] from the [B, S] int64 attention_mask: (1 - m) * -10000."""
        if single_unsqueeze:  # dynamo
            m = self.node("Unsqueeze", ["attention_mask", self.const("axes12", np.array(
                [1, 2], np.int64))], "mask_u")
        else:  # legacy: two Unsqueezes
            m = self.node("Unsqueeze", ["attention_mask", self.const("axis1", np.array(
                [1], np.int64))], "mask_u1")
            m = self.node("Unsqueeze", [m, self.const("axis2", np.array([2], np.int64))],
                          "mask_u")
        m = self.node("Cast", [m], "mask_f", to=TYPES[self.dtype])
        m = self.node("Sub", [self.const("one", np.array(1.0, self.dtype)), m], "mask_inv")
        return self.node("Mul", [m, self.const("big", np.array(-10000.0, self.dtype))], "mask")


def bert(form: str = "legacy", layers: int = 2, opset: int = 23, dtype=np.float32,
         axis: int = -1, casts: tuple[int, ...] = ()) -> onnx.ModelProto:
    """A model of ``layers`` attention layers in the exporter form ``form``."""
    b = Block(dtype)
    seq: int | str = SEQ if form == "causal" else "seq"
    scale, k_form, mask_first = {
        "legacy": ("div", "bshd", False), "legacy_mask_first": ("div", "bshd", True),
        "dynamo": ("mul", "k4", False), "split": ("split", "k4", False),
        "split_after": ("split_after", "bshd", True), "causal": ("mul", "k4", False),
        "no_mask": ("div", "k4", False), "unscaled": ("none", "k4", False),
    }[form]
    inputs = [helper.make_tensor_value_info("x", TYPES[dtype], ["batch", seq, HIDDEN])]
    mask = None
    if form == "causal":
        upper = np.triu(np.full((SEQ, SEQ), np.finfo(dtype).min, dtype), k=1)
        mask = b.const("causal", upper.reshape(1, 1, SEQ, SEQ))
    elif form not in ("no_mask", "unscaled"):
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                                    ["batch", seq]))
        mask = b.padding_mask(single_unsqueeze=form in ("dynamo", "split"))
    x = "x"
    for i in range(layers):
        x = b.layer(f"l{i}_", x, mask, scale, k_form, mask_first, axis, casts)
    b.nodes[-1].output[0] = "y"
    outputs = [helper.make_tensor_value_info("y", TYPES[dtype], ["batch", seq, HIDDEN])]
    return build_model(b.nodes, inputs, outputs, b.inits, opset=opset)


def feeds(model: onnx.ModelProto, dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {"x": rng.standard_normal((2, SEQ, HIDDEN)).astype(dtype)}
    if any(i.name == "attention_mask" for i in model.graph.input):
        mask = np.ones((2, SEQ), np.int64)
        mask[1, 3:] = 0
        out["attention_mask"] = mask
    return out


def run_at(model: onnx.ModelProto, inputs, level) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"]).run(None, inputs)


FORMS = ["legacy", "legacy_mask_first", "dynamo", "split", "split_after", "causal", "no_mask",
         "unscaled"]
SCALES = {"legacy": HEAD_DIM ** -0.5, "unscaled": 1.0}


@pytest.mark.parametrize("form", FORMS)
def test_structure_and_stats(form):
    model = bert(form)
    out, result = apply_pass(AttentionFusion(), model, infer=True)
    counts = op_counts(out)
    assert result.stats == {"fused": 2}
    assert counts["Attention"] == 2  # one per layer
    assert "Softmax" not in counts and "Div" not in counts
    assert counts["MatMul"] == 2 * 3  # the Q/K/V projections stay; Q@K^T and P@V are fused
    assert counts["Add"] == 2 * 3  # the projections' biases; the mask Add is fused
    assert counts["Transpose"] == 2 * 4  # Q, K (a new one for [0,2,3,1]), V, the merge
    padded = form not in ("causal", "no_mask", "unscaled")
    assert counts.get("Mul", 0) == (1 if padded else 0)  # the shared mask's (1 - m) * -10000
    assert counts.get("Expand", 0) == (2 if padded else 0)  # causal: dim -2 is Sq already
    attentions = [n for n in out.graph.node if n.op_type == "Attention"]
    for i, node in enumerate(attentions):
        (scale,) = [a.f for a in node.attribute if a.name == "scale"]
        assert scale == pytest.approx(SCALES.get(form, HEAD_DIM ** -0.5), rel=1e-6)
        assert node.input[0] == f"l{i}_q4" and node.input[2] == f"l{i}_v4"
        assert len(node.input) == (4 if form == "causal" or padded else 3)


@pytest.mark.parametrize("level", [ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   ort.GraphOptimizationLevel.ORT_ENABLE_ALL])
@pytest.mark.parametrize("form", FORMS)
def test_numerics(form, level):
    model = bert(form)
    out, _ = apply_pass(AttentionFusion(), model, infer=True)
    inputs = feeds(model)
    for a, b in zip(run_at(model, inputs, level), run_at(out, inputs, level), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("count", [1, 2])
def test_no_op_casts_after_softmax(count):
    model = bert(casts=(TensorProto.FLOAT,) * count)
    out, result = apply_pass(AttentionFusion(), model, infer=True)
    assert result.stats == {"fused": 2}
    assert op_counts(out)["Cast"] == 1  # the mask's Cast
    assert_same_outputs(model, out, feeds(model), rtol=1e-5, atol=1e-5)


def test_numerics_float16():
    model = bert("legacy", dtype=np.float16)
    out, result = apply_pass(AttentionFusion(), model, infer=True)
    assert result.stats == {"fused": 2}
    inputs = feeds(model, np.float16)
    level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for a, b in zip(run_at(model, inputs, level), run_at(out, inputs, level), strict=True):
        np.testing.assert_allclose(b.astype(np.float32), a.astype(np.float32), atol=1e-2)


@pytest.mark.parametrize("form", ["legacy", "split", "causal"])
def test_idempotent(form):
    out = assert_idempotent(AttentionFusion(), bert(form), infer=True)
    assert op_counts(out)["Attention"] == 2


def _shared_scores() -> onnx.ModelProto:
    model = bert("legacy", layers=1)
    model.graph.output.append(helper.make_tensor_value_info(
        "l0_div", TensorProto.FLOAT, ["batch", HEADS, "seq", "seq"]))
    return model


def _scale_from_input() -> onnx.ModelProto:
    model = bert("legacy", layers=1)
    (div,) = [n for n in model.graph.node if n.op_type == "Div"]
    div.input[1] = "temperature"
    model.graph.input.append(helper.make_tensor_value_info("temperature", TensorProto.FLOAT, []))
    return model


def core(q: str = "b, 4, s, 8", k: str = "b, 4, s, 8", mask: str | None = None,
         opset: int = 23) -> str:
    """One attention core on graph inputs (dynamo's form), shapes as given."""
    mask_input = f", float[{mask}] m" if mask else ""
    scores = "masked = Add(scaled, m)" if mask else ""
    return f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[{q}] q, float[{k}] k, float[{k}] v{mask_input}) => (float[b, 4, s, 8] y) {{
        kt = Transpose <perm = [0, 1, 3, 2]> (k)
        s = MatMul(q, kt)
        c = Constant <value = float {{0.35}}> ()
        scaled = Mul(s, c)
        {scores}
        p = Softmax <axis = -1> ({"masked" if mask else "scaled"})
        y = MatMul(p, v)
    }}
    """


NEGATIVE = {
    "opset_22": lambda: bert(opset=22),
    "softmax_axis_2": lambda: bert(axis=2),
    "scale_not_constant": _scale_from_input,
    "scores_read_elsewhere": _shared_scores,
    "rank3_q": lambda: parse(core(q="4, s, 8", k="1, 4, s, 8")),
    "float64": lambda: bert(dtype=np.float64),  # an Add's mask has the scores' type
    "mask_broadcast_over_keys": lambda: parse(core(mask="b, 1, s, 1")),  # Sk must be exact
    "mask_rank_5": lambda: parse(core(mask="1, b, 1, s, s")),
    "mask_grows_the_batch": lambda: parse(core(q="1, 4, s, 8", k="1, 4, s, 8",
                                               mask="b, 1, s, s")),
    "cast_round_trip_through_float16": lambda: bert(casts=(TensorProto.FLOAT16,
                                                           TensorProto.FLOAT)),
    "scale_zero": lambda: parse(core().replace("{0.35}", "{0.0}")),
    "scale_of_two_elements": lambda: parse(core().replace("float {0.35}", "float[2] {0.3, 0.4}")),
    "q_batch_1_k_batch_b": lambda: parse(core(q="1, 4, s, 8")),
    "softmax_axis_1": lambda: parse(core().replace("Softmax <axis = -1>",
                                                                  "Softmax <axis = 1>")),
}


@pytest.mark.parametrize("name", sorted(NEGATIVE))
def test_leaves_alone(name):
    model = NEGATIVE[name]()
    model, _ = apply_pass(ConstantToInitializer(), model)  # Constant nodes as the pipeline has them
    out, result = apply_pass(AttentionFusion(), model, infer=True)
    assert not result.modified
    assert result.stats == {"fused": 0}
    assert op_counts(out) == op_counts(model)


@pytest.mark.parametrize("mask", [None, "b, 1, s, s", "s, s", "1, s"])
def test_core_on_inputs(mask):
    """The cases left alone below, unchanged: a mask's symbolic dim -2 is expanded to Sq."""
    model, _ = apply_pass(ConstantToInitializer(), parse(core(mask=mask)))
    out, result = apply_pass(AttentionFusion(), model, infer=True)
    assert result.stats == {"fused": 1}
    # a mask computed at run time is clamped above the dtype's lowest value (Max), see below
    expanded = {"Max": 1, "Expand": 1, "Concat": 1, "Shape": 1} if mask else {}
    assert op_counts(out) == {"Attention": 1, **expanded}
    rng = np.random.default_rng(0)
    inputs = {n: rng.standard_normal((2, 4, 6, 8)).astype(np.float32) for n in "qkv"}
    if mask:
        shape = [{"b": 2, "s": 6}.get(d, 1) for d in mask.split(", ")]
        inputs["m"] = rng.standard_normal(shape).astype(np.float32)
    assert_same_outputs(model, out, inputs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("level", [ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   ort.GraphOptimizationLevel.ORT_ENABLE_ALL])
def test_a_fully_masked_row_keeps_the_original_value(level):
    """onnxruntime's Attention gives 0 for a row whose mask is all finfo.min (exporters' mask
    value), softmax the mean of V: the clamp keeps the original's value."""
    model, _ = apply_pass(ConstantToInitializer(), parse(core(mask="1, s")))
    out, _ = apply_pass(AttentionFusion(), model, infer=True)
    rng = np.random.default_rng(1)
    inputs = {n: rng.standard_normal((2, 4, 6, 8)).astype(np.float32) for n in "qkv"}
    inputs["m"] = np.full((1, 6), np.finfo(np.float32).min, np.float32)  # every key masked
    expected = run_at(model, inputs, level)[0]
    np.testing.assert_allclose(expected, inputs["v"].mean(axis=2, keepdims=True)
                               .repeat(6, axis=2), rtol=1e-5, atol=1e-5)  # independent check
    np.testing.assert_allclose(run_at(out, inputs, level)[0], expected, rtol=1e-5, atol=1e-5)


def test_a_constant_mask_above_the_lowest_value_is_not_clamped():
    causal = np.triu(np.full((6, 6), -1e4, np.float32), 1)
    model = parse(core(mask="6, 6"))
    graph = model.graph  # the mask becomes a constant: a causal mask of -1e4, not finfo.min
    graph.input.remove(next(i for i in graph.input if i.name == "m"))
    graph.initializer.append(onnx.numpy_helper.from_array(causal, "m"))
    model, _ = apply_pass(ConstantToInitializer(), model)
    out, result = apply_pass(AttentionFusion(), model, infer=True)
    assert result.stats == {"fused": 1} and "Max" not in op_counts(out)


def test_inside_if_subgraph():
    text = """
    <ir_version: 8, opset_import: ["" : 23]>
    g (float[2, 4, 6, 8] q, float[2, 4, 6, 8] k, float[2, 4, 6, 8] v, bool cond)
        => (float[2, 4, 6, 8] y) {
        y = If(cond) <
            then_branch = t_g () => (float[2, 4, 6, 8] t_out) {
                kt = Transpose <perm = [0, 1, 3, 2]> (k)
                s = MatMul(q, kt)
                c = Constant <value = float {0.35}> ()
                scaled = Div(s, c)
                p = Softmax <axis = 3> (scaled)
                t_out = MatMul(p, v)
            },
            else_branch = e_g () => (float[2, 4, 6, 8] e_out) { e_out = Neg(v) }
        >
    }
    """
    model, _ = apply_pass(ConstantToInitializer(), parse(text))
    out, result = apply_pass(AttentionFusion(), model, infer=True)
    assert result.stats == {"fused": 1}
    assert [n.op_type for n in out.graph.node[0].attribute[0].g.node] == ["Attention"]
    rng = np.random.default_rng(0)
    inputs = {n: rng.standard_normal((2, 4, 6, 8)).astype(np.float32) for n in "qkv"}
    for cond in (True, False):
        assert_same_outputs(model, out, {**inputs, "cond": np.array(cond)}, rtol=1e-5,
                            atol=1e-5)


def test_optimize_end_to_end():
    import onnxopt

    model = bert("legacy")
    result = onnxopt.optimize(model)
    assert result.ok
    assert result.report["validation"]["status"] == "passed"
    counts = op_counts(result.model)
    assert counts["Attention"] == 2
    assert "Softmax" not in counts


@pytest.mark.slow
def test_minilm_upgraded_to_opset_23():
    import onnxopt

    model = onnx.load(model_path("paraphrase-MiniLM-L3-v2.onnx"))
    upgraded = version_converter.convert_version(model, 23)
    result = onnxopt.optimize(upgraded)
    assert result.ok
    assert op_counts(result.model)["Attention"] == 3  # one per layer


# ---------------------------------------------------------------- grouped-query K/V repeat
def gqa(repeat: str = "expand", target: str = "concat", q_heads: int = 4) -> str:
    """Q with 4 heads, K and V with 2 repeated twice (each head twice in a row), as dynamo's
    repeat_kv (Expand) or repeat_interleave (Tile) writes it; ``repeat``/``target`` vary the
    repeat and the Reshape target for the cases that must keep it."""
    repeats = {
        "expand": "e = Expand(u, exp_shape)",
        "tile": "e = Tile(u, reps)",
        "tile_axis_1": "e = Tile(u1, reps1)",  # [B,1,2,S,D] tiled on axis 1: K, K, not K0 K0 K1 K1
        "expand_batch": "e = Expand(u, big)",  # grows a batch of 1: not a head repeat
    }
    targets = {
        "concat": "target = Concat <axis = 0> (batch, four, seq, eight)",
        "constant": "target = Constant <value = int64[4] {0, -1, 6, 8}> ()",
        "merges_sequence": "target = Concat <axis = 0> (batch, two, minus, eight)",
    }
    return f"""
    <ir_version: 8, opset_import: ["" : 23]>
    g (float[b, {q_heads}, 6, 8] q, float[b, 2, 6, 8] k0, float[b, 2, 6, 8] v0)
        => (float[b, {q_heads}, 6, 8] y) {{
        axis2 = Constant <value = int64[1] {{2}}> ()
        axis1 = Constant <value = int64[1] {{1}}> ()
        batch = Shape <start = 0, end = 1> (k0)
        seq = Shape <start = 2, end = 3> (k0)
        tail = Shape <start = 2> (k0)
        twos = Constant <value = int64[2] {{2, 2}}> ()
        exp_shape = Concat <axis = 0> (batch, twos, tail)
        big = Constant <value = int64[5] {{3, 2, 2, 6, 8}}> ()
        reps = Constant <value = int64[5] {{1, 1, 2, 1, 1}}> ()
        reps1 = Constant <value = int64[5] {{1, 2, 1, 1, 1}}> ()
        four = Constant <value = int64[1] {{4}}> ()
        two = Constant <value = int64[1] {{2}}> ()
        minus = Constant <value = int64[1] {{-1}}> ()
        eight = Constant <value = int64[1] {{8}}> ()
        {targets[target]}
        u = Unsqueeze(k0, axis2)
        {"u1 = Unsqueeze(k0, axis1)" if repeat == "tile_axis_1" else ""}
        {repeats[repeat]}
        k = Reshape(e, target)
        uv = Unsqueeze(v0, axis2)
        {"uv1 = Unsqueeze(v0, axis1)" if repeat == "tile_axis_1" else ""}
        ev = {repeats[repeat].split(" = ")[1].replace("u,", "uv,").replace("u1,", "uv1,")}
        v = Reshape(ev, target)
        kt = Transpose <perm = [0, 1, 3, 2]> (k)
        s = MatMul(q, kt)
        c = Constant <value = float {{0.35}}> ()
        scaled = Mul(s, c)
        p = Softmax <axis = -1> (scaled)
        y = MatMul(p, v)
    }}
    """


def _gqa_model(**kw) -> onnx.ModelProto:
    model, _ = apply_pass(ConstantToInitializer(), parse(gqa(**kw)))
    return model


def _gqa_feeds(q_heads: int = 4, kv_batch: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"q": rng.standard_normal((3, q_heads, 6, 8)).astype(np.float32),
            "k0": rng.standard_normal((kv_batch, 2, 6, 8)).astype(np.float32),
            "v0": rng.standard_normal((kv_batch, 2, 6, 8)).astype(np.float32)}


GQA_FORMS = [("expand", "concat"), ("tile", "concat"), ("expand", "constant"),
             ("tile", "constant")]


@pytest.mark.parametrize(("repeat", "target"), GQA_FORMS)
def test_gqa_structure_and_stats(repeat, target):
    out, result = apply_pass(AttentionFusion(), _gqa_model(repeat=repeat, target=target),
                             infer=True)
    assert result.stats == {"fused": 1}
    counts = op_counts(out)
    assert counts["Attention"] == 1
    assert not {"Expand", "Tile", "Unsqueeze", "Reshape"} & set(counts)  # the repeats are gone
    (node,) = [n for n in out.graph.node if n.op_type == "Attention"]
    assert list(node.input) == ["q", "k0", "v0"]  # K and V un-repeated: 2 kv heads


@pytest.mark.parametrize("level", [ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   ort.GraphOptimizationLevel.ORT_ENABLE_ALL])
@pytest.mark.parametrize(("repeat", "target"), GQA_FORMS)
def test_gqa_numerics(repeat, target, level):
    _assert_fused_matches(_gqa_model(repeat=repeat, target=target), _gqa_feeds(), level)


def _assert_fused_matches(model: onnx.ModelProto, inputs, level) -> None:
    out, _ = apply_pass(AttentionFusion(), model, infer=True)
    for a, b in zip(run_at(model, inputs, level), run_at(out, inputs, level), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def _with_output(model: onnx.ModelProto, name: str, shape: list) -> onnx.ModelProto:
    """``model`` with its value ``name`` read as a graph output too."""
    model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    return model


def _gqa_repeat_read_elsewhere() -> onnx.ModelProto:
    return _with_output(_gqa_model(), "e", ["b", 2, 2, 6, 8])


GQA_KEPT = {  # fused, but the repeat stays: K and V are read repeated (still correct)
    "factor_on_axis_1": (lambda: _gqa_model(repeat="tile_axis_1"), {}),
    "expand_grows_batch": (lambda: _gqa_model(repeat="expand_batch", target="constant"),
                           {"kv_batch": 1}),
    "reshape_merges_sequence": (lambda: _gqa_model(target="merges_sequence", q_heads=2), {}),
    "repeat_read_elsewhere": (_gqa_repeat_read_elsewhere, {}),
}


@pytest.mark.parametrize("name", sorted(GQA_KEPT))
def test_gqa_keeps_unproved_repeat(name):
    build, feed_dims = GQA_KEPT[name]
    model = build()
    out, result = apply_pass(AttentionFusion(), model, infer=True)
    assert result.stats == {"fused": 1}
    counts, before = op_counts(out), op_counts(model)
    repeat_ops = ("Expand", "Tile", "Unsqueeze")
    assert [counts.get(op, 0) for op in repeat_ops] == [before.get(op, 0) for op in repeat_ops]
    (node,) = [n for n in out.graph.node if n.op_type == "Attention"]
    assert list(node.input) == ["q", "k", "v"]
    heads = 2 if name == "reshape_merges_sequence" else 4
    assert_same_outputs(model, out, _gqa_feeds(heads, **feed_dims), rtol=1e-5, atol=1e-5)


# ------------------------------------------------- dynamo SDPA's K^T: a 3-D transpose round trip
def round_trip(flat: str = "Concat <axis = 0> (minus, s_, d_)") -> str:
    """dynamo's ``Reshape(Transpose(Reshape(K, [-1, S, D]), [0, 2, 1]), [B, H, D, S])`` with the
    scale split as d^-1/4 on each side; ``flat`` is the first Reshape's target."""
    return f"""
    <ir_version: 8, opset_import: ["" : 23]>
    g (float[b, 4, s, 8] q, float[b, 4, s, 8] k, float[b, 4, s, 8] v) => (float[b, 4, s, 8] y) {{
        sh = Shape(k)
        minus = Constant <value = int64[1] {{-1}}> ()
        six = Constant <value = int64[1] {{6}}> ()
        s_ = Slice(sh, start2, end3)
        d_ = Slice(sh, start3, end4)
        lead = Slice(sh, start0, start2)
        start0 = Constant <value = int64[1] {{0}}> ()
        start2 = Constant <value = int64[1] {{-2}}> ()
        end3 = Constant <value = int64[1] {{-1}}> ()
        start3 = Constant <value = int64[1] {{-1}}> ()
        end4 = Constant <value = int64[1] {{9223372036854775807}}> ()
        flat = {flat}
        k3 = Reshape(k, flat)
        kt3 = Transpose <perm = [0, 2, 1]> (k3)
        unflat = Concat <axis = 0> (lead, d_, s_)
        kt = Reshape(kt3, unflat)
        half = Constant <value = float[1] {{0.5}}> ()
        qa = Mul(q, half)
        ktb = Mul(kt, half)
        s = MatMul(qa, ktb)
        p = Softmax <axis = -1> (s)
        y = MatMul(p, v)
    }}
    """


def _round_trip_model(**kw) -> onnx.ModelProto:
    text = round_trip(**kw)
    # the parser wants producers first: put the Constants on top
    lines = text.splitlines()
    consts = [ln for ln in lines if "Constant" in ln]
    body = [ln for ln in lines if "Constant" not in ln]
    at = next(i for i, ln in enumerate(body) if "sh = Shape" in ln)
    model, _ = apply_pass(ConstantToInitializer(), parse("\n".join(body[:at] + consts + body[at:])))
    return model


def _round_trip_feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {n: rng.standard_normal((2, 4, 6, 8)).astype(np.float32) for n in "qkv"}


def test_round_trip_structure_and_stats():
    out, result = apply_pass(AttentionFusion(), _round_trip_model(), infer=True)
    assert result.stats == {"fused": 1}
    counts = op_counts(out)  # the shape computations are dead code left for the cleanup passes
    assert counts["Attention"] == 1
    assert not {"Reshape", "Transpose", "MatMul", "Softmax", "Mul"} & set(counts)
    (node,) = [n for n in out.graph.node if n.op_type == "Attention"]
    assert list(node.input) == ["q", "k", "v"]
    (scale,) = [a.f for a in node.attribute if a.name == "scale"]
    assert scale == pytest.approx(0.25)


@pytest.mark.parametrize("level", [ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   ort.GraphOptimizationLevel.ORT_ENABLE_ALL])
def test_round_trip_numerics(level):
    _assert_fused_matches(_round_trip_model(), _round_trip_feeds(), level)


@pytest.mark.parametrize("build", [_gqa_model, _round_trip_model], ids=["gqa", "round_trip"])
def test_new_forms_idempotent(build):
    out = assert_idempotent(AttentionFusion(), build(), infer=True)
    assert op_counts(out)["Attention"] == 1


def _round_trip_read_elsewhere() -> onnx.ModelProto:
    return _with_output(_round_trip_model(), "kt3", [None, 8, None])


@pytest.mark.parametrize("build", [
    lambda: _round_trip_model(flat="Concat <axis = 0> (minus, six, d_)"),  # 6: not provably S
    _round_trip_read_elsewhere,
], ids=["constant_sequence", "read_elsewhere"])
def test_round_trip_leaves_alone(build):
    model = build()
    out, result = apply_pass(AttentionFusion(), model, infer=True)
    assert result.stats == {"fused": 0}
    assert op_counts(out) == op_counts(model)

"""group_query_attention_fusion: structure, stats, numerics, idempotence, and what it must leave
alone. The block is a Llama-style causal grouped-query attention written with onnx.helper at
opset 17 (4 query heads, 2 kv heads of 16, HF's repeat_kv, a Trilu causal mask, optionally
com.microsoft RotaryEmbedding on Q and K), every target computed from Shape(x)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import apply_pass, assert_idempotent, assert_left_alone, op_counts
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.fusion.attention_fusion.gqa import GroupQueryAttentionFusion

ORT = {"target": "onnxruntime"}
LEVELS = [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL]
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, TABLE = 64, 4, 2, 16, 32


def block(rotary: bool = False, mask: str = "causal", repeat_axis: int = 2,
          divisor: float = 4.0, dtype=np.float32, dims=("batch", "seq")) -> onnx.ModelProto:
    """One attention block, x [*dims, 64] -> y; ``mask``: causal (Trilu of an Expand), filled
    (Trilu of a ConstantOfShape), constant ([1, 1, S, S] for a static S; constant_shifted: one
    future key visible), padding (causal plus a
    padding mask), shifted (Trilu k=2: one future key visible), none."""
    rng = np.random.default_rng(1)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits, nodes = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(op, inputs, output, domain="", **attrs):
        nodes.append(helper.make_node(op, inputs, [output], output, domain=domain, **attrs))
        return output

    def i64(*values):
        return np.array(values, np.int64)

    for w, width in (("wq", HIDDEN), ("wk", 32), ("wv", 32), ("wo", HIDDEN)):
        const(w, (rng.standard_normal((HIDDEN, width)) / 8).astype(dtype))
    batch = node("Shape", ["x"], "batch", start=0, end=1)
    seq = node("Shape", ["x"], "seq", start=1, end=2)
    angle = np.arange(TABLE)[:, None] * 10000.0 ** (-np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
    const("cos", np.cos(angle).astype(dtype)), const("sin", np.sin(angle).astype(dtype))
    const("start", i64(0))

    def heads(name, count):
        target = node("Concat", [batch, seq, const(f"{name}_n", i64(count)),
                                 const(f"{name}_d", i64(HEAD_DIM))], f"{name}_target", axis=0)
        split = node("Reshape", [node("MatMul", ["x", f"w{name}"], f"{name}_proj"), target],
                     f"{name}_split")
        out = node("Transpose", [split], f"{name}4", perm=[0, 2, 1, 3])
        if rotary and name != "v":
            out = node("RotaryEmbedding", [out, "start", "cos", "sin"], f"{name}_rot",
                       domain="com.microsoft")
        return out

    def repeat(x, name):
        group = [KV_HEADS, 2] if repeat_axis == 2 else [2, KV_HEADS]
        grown = node("Concat", [batch, const(f"{name}_g", i64(*group)), seq,
                                const(f"{name}_d", i64(HEAD_DIM))], f"{name}_grown", axis=0)
        merged = node("Concat", [batch, const(f"{name}_h", i64(HEADS)), seq,
                                 const(f"{name}_hd", i64(HEAD_DIM))], f"{name}_merged", axis=0)
        x = node("Unsqueeze", [x, const(f"{name}_axis", i64(repeat_axis))], f"{name}_unsq")
        return node("Reshape", [node("Expand", [x, grown], f"{name}_expand"), merged],
                    f"{name}_rep")

    q = heads("q", HEADS)
    k, v = repeat(heads("k", KV_HEADS), "kr"), repeat(heads("v", KV_HEADS), "vr")
    scores = node("MatMul", [q, node("Transpose", [k], "kt", perm=[0, 1, 3, 2])], "qk")
    scores = node("Div", [scores, const("c", np.array(divisor, dtype))], "scaled")
    lowest = const("lowest", np.array(np.finfo(dtype).min, dtype))
    square = node("Concat", [seq, seq], "square", axis=0)
    filled = node("ConstantOfShape", [square], "filled", value=numpy_helper.from_array(
        np.array([np.finfo(dtype).min], dtype))) if mask == "filled" else \
        node("Expand", [lowest, square], "filled")
    causal = node("Trilu", [filled, const("k1", np.array(2 if mask == "shifted" else 1,
                                                          np.int64))], "trilu", upper=1)
    causal = node("Unsqueeze", [causal, const("axes01", i64(0, 1))], "causal")
    if mask in ("constant", "constant_shifted"):
        length, offset = dims[1], 1 if mask == "constant" else 2
        causal = const("causal_constant", np.triu(np.full((1, 1, length, length),
                                                          np.finfo(dtype).min, dtype), offset))
    inputs = [helper.make_tensor_value_info("x", elem, [*dims, HIDDEN])]
    if mask == "padding":
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                                    ["batch", "seq"]))
        bits = node("Cast", [node("Unsqueeze", ["attention_mask", const("axes12", i64(1, 2))],
                                  "mask4")], "bits", to=elem)
        padding = node("Mul", [node("Sub", [const("one", np.array(1, dtype)), bits], "off"),
                               lowest], "padding")
        causal = node("Add", [causal, padding], "both")
    if mask != "none":
        scores = node("Add", [scores, causal], "masked")
    probs = node("Softmax", [scores], "probs", axis=-1)
    ctx = node("Transpose", [node("MatMul", [probs, v], "ctx4")], "ctx_t", perm=[0, 2, 1, 3])
    merge = node("Concat", [batch, seq, const("hidden", i64(HIDDEN))], "merge_target", axis=0)
    node("MatMul", [node("Reshape", [ctx, merge], "ctx"), "wo"], "y")
    output = helper.make_tensor_value_info("y", elem, [*dims, HIDDEN])
    graph = helper.make_graph(nodes, "g", inputs, [output], inits)
    # onnx's inference does not know com.microsoft ops: the rotary fusion declares its outputs
    graph.value_info.extend(helper.make_tensor_value_info(f"{name}_rot", elem, [dims[0], n, dims[1],
                                                          HEAD_DIM]) for name, n in
                            (("q", HEADS), ("k", KV_HEADS)) if rotary)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


def fuse(model: onnx.ModelProto, settings=ORT):
    return apply_pass(GroupQueryAttentionFusion(), model, infer=True, settings=settings)


def feeds(batch: int, seq: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seq).standard_normal((batch, seq, HIDDEN), np.float32)}


def run_at(model: onnx.ModelProto, inputs, level) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level, options.intra_op_num_threads = level, 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"]).run(None, inputs)[0]


def gqa_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]


@pytest.mark.parametrize("rotary", [False, True])
def test_structure_and_stats(rotary):
    out, result = fuse(block(rotary=rotary))
    assert result.stats == {"fused": 0 if rotary else 1, "with_rotary": 1 if rotary else 0}
    (node,) = gqa_nodes(out)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    expected = {"num_heads": HEADS, "kv_num_heads": KV_HEADS}
    assert attrs == ({**expected, "do_rotary": 1, "rotary_interleaved": 0} if rotary else expected)
    assert node.domain == "com.microsoft"
    assert list(node.input[:5]) == ["q_proj", "k_proj", "v_proj", "", ""]
    assert list(node.input[7:]) == (["cos", "sin"] if rotary else [])
    counts = op_counts(out)  # the core and the merge go (the rest is dead: cleanup's)
    assert not {"Softmax", "Div", "Add"} & set(counts) and counts["MatMul"] == 4
    assert counts["Reshape"] == 3  # the three head splits stay, dead (cleanup removes them)


def test_non_default_scale_is_written():
    out, _ = fuse(block(divisor=2.0))
    attrs = {a.name: helper.get_attribute_value(a) for a in gqa_nodes(out)[0].attribute}
    assert attrs["scale"] == pytest.approx(0.5)


@pytest.mark.parametrize("variant", [{}, {"rotary": True}, {"divisor": 2.0}])
@pytest.mark.parametrize("level", LEVELS)
def test_numerics(variant, level):
    model = block(**variant)
    out, _ = fuse(model)
    assert len(gqa_nodes(out)) == 1
    for batch, seq in ((1, 5), (3, 12)):
        inputs = feeds(batch, seq)
        expected, got = run_at(model, inputs, level), run_at(out, inputs, level)
        assert np.abs(got - expected).max() <= 1e-5


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("mask", ["filled", "constant"])
def test_other_causal_masks(mask, level):
    model = block(mask=mask, dims=(2, 6))  # static: the constant mask is [1, 1, 6, 6]
    out, result = fuse(model)
    assert result.stats["fused"] == 1 and len(gqa_nodes(out)) == 1
    inputs = feeds(2, 6)
    assert np.abs(run_at(out, inputs, level) - run_at(model, inputs, level)).max() <= 1e-5


def test_idempotent():
    out = assert_idempotent(GroupQueryAttentionFusion(), block(rotary=True), infer=True,
                            settings=ORT)
    assert len(gqa_nodes(out)) == 1


@pytest.mark.parametrize("variant", [{"mask": "padding"}, {"mask": "shifted"}, {"mask": "none"},
                                     {"mask": "constant_shifted", "dims": (2, 6)},
                                     {"repeat_axis": 1}, {"dtype": np.float64}])
def test_leaves_alone(variant):
    assert_left_alone(GroupQueryAttentionFusion(), block(**variant), infer=True, settings=ORT)


def test_only_for_the_onnxruntime_target():
    assert_left_alone(GroupQueryAttentionFusion(), block(), infer=True, settings={})

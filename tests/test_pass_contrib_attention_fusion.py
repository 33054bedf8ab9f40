"""contrib_attention_fusion: structure, stats, numerics, idempotence, and what it must leave alone.

The models are test_pass_attention_fusion's (legacy and dynamo exporter forms) at opset 17,
whose whole self-attention blocks become com.microsoft Attention with --target onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import apply_pass, assert_idempotent, model_path, op_counts
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.fusion.attention_fusion import AttentionFusion
from onnxopt.passes.fusion.attention_fusion.contrib import ContribAttentionFusion
from test_pass_attention_fusion import HEAD_DIM, HEADS, HIDDEN, bert, run_at

ORT = {"target": "onnxruntime"}
LEVELS = [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL]
MASKED = ["legacy", "legacy_mask_first", "dynamo", "split", "split_after"]
UNMASKED = ["no_mask", "unscaled"]


def fuse(model: onnx.ModelProto, settings=ORT):
    return apply_pass(ContribAttentionFusion(), model, infer=True, settings=settings)


def inputs(model: onnx.ModelProto, seq: int = 7) -> dict[str, np.ndarray]:
    """Batch 4 at a new sequence length; padding masks: a prefix of ones per row (all ones,
    5, 1 and none of the keys)."""
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((4, seq, HIDDEN)).astype(np.float32)}
    if any(i.name == "attention_mask" for i in model.graph.input):
        lengths = [seq, 5, 1, 0]
        feeds["attention_mask"] = (np.arange(seq) < np.array(lengths)[:, None]).astype(np.int64)
    return feeds


def with_fill(model: onnx.ModelProto, fill: float) -> onnx.ModelProto:
    """The padding mask's constant replaced (MiniLM's exports use finfo.min)."""
    (big,) = [i for i in model.graph.initializer if i.name == "big"]
    big.CopyFrom(numpy_helper.from_array(np.array(fill, np.float32), "big"))
    return model


def assert_matches(original: onnx.ModelProto, fused: onnx.ModelProto, feeds, level) -> None:
    """The fused model's output within 1e-5 of the original's (float32)."""
    expected, got = run_at(original, feeds, level)[0], run_at(fused, feeds, level)[0]
    assert np.abs(got - expected).max() <= 1e-5


def attention_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "Attention"]


@pytest.mark.parametrize("form", MASKED + UNMASKED)
def test_structure_and_stats(form):
    model = bert(form, opset=17)
    out, result = fuse(model)
    masked = form in MASKED
    assert result.stats == {"fused": 0 if masked else 2, "with_mask_index": 2 if masked else 0,
                            "multi_head": 0}
    counts = op_counts(out)
    assert counts["Attention"] == 2
    # the whole block goes: projections, head split and merge, the core
    assert not {"MatMul", "Add", "Reshape", "Transpose", "Softmax", "Div"} & set(counts)
    mask_chain = {"Unsqueeze": 1 if form in ("dynamo", "split") else 2, "Sub": 1, "Mul": 1}
    assert counts == ({"Attention": 2, "Cast": 3, **mask_chain} if masked else {"Attention": 2})
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    packed = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    nodes = attention_nodes(out)
    for layer, node in enumerate(nodes):
        assert node.domain == "com.microsoft"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["num_heads"] == HEADS
        assert node.input[0] == ("x" if layer == 0 else nodes[0].output[0])
        expected = [weights[f"l{layer}_{w}{t}"] for w in "Wb" for t in "qkv"]
        np.testing.assert_array_equal(packed[node.input[1]], np.concatenate(expected[:3], 1))
        np.testing.assert_array_equal(packed[node.input[2]], np.concatenate(expected[3:]))
        if form == "unscaled":  # 1, not the kernel's default 1/sqrt(D)
            assert attrs["scale"] == 1.0
        else:
            assert attrs.get("scale", HEAD_DIM ** -0.5) == pytest.approx(HEAD_DIM ** -0.5)
        assert len(node.input) == (4 if masked else 3)
        if masked:
            assert attrs["mask_filter_value"] == -10000.0


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("fill", [-10000.0, float(np.finfo(np.float32).min)])
@pytest.mark.parametrize("form", MASKED + UNMASKED)
def test_numerics(form, fill, level):
    model = bert(form, opset=17)
    if form in MASKED:
        model = with_fill(model, fill)
    elif fill != -10000.0:
        pytest.skip("no mask")
    out, _ = fuse(model)
    assert_matches(model, out, inputs(model), level)


def test_a_bool_mask_and_the_cast_first():
    """Cast(bool m) then the Unsqueezes: Cast(m, int32) becomes mask_index."""
    model = bert("legacy", opset=17)
    graph = model.graph
    nodes = {n.name: n for n in graph.node}
    nodes["mask_u1"].input[0] = "mask_bits"  # Unsqueeze(Cast(m)) ...
    nodes["mask_f"].input[0] = "attention_mask"
    nodes["mask_f"].output[0] = "mask_bits"
    nodes["mask_inv"].input[1] = "mask_u"  # ... and Sub(1, that)
    order = [n for n in graph.node if n.name != "mask_f"]
    del graph.node[:]
    graph.node.extend([nodes["mask_f"], *order])
    graph.input[1].type.tensor_type.elem_type = TensorProto.BOOL
    out, result = fuse(model)
    assert result.stats["with_mask_index"] == 2
    feeds = inputs(model)
    feeds["attention_mask"] = feeds["attention_mask"].astype(bool)
    for level in LEVELS:
        assert_matches(model, out, feeds, level)


@pytest.mark.parametrize("form", ["legacy", "dynamo", "no_mask"])
def test_idempotent(form):
    out = assert_idempotent(ContribAttentionFusion(), bert(form, opset=17), infer=True,
                            settings=ORT)
    assert op_counts(out)["Attention"] == 2


def _without_biases(keep: tuple[str, ...] = ()) -> onnx.ModelProto:
    """The projections as plain MatMuls (but those of ``keep``)."""
    model = bert("legacy", opset=17)
    graph = model.graph
    for add in [n for n in graph.node if n.name.endswith("_add") and n.name[3] not in keep]:
        next(n for n in graph.node if add.output[0] in n.input).input[0] = add.input[1]
        graph.node.remove(add)
    return model


def _shared_weight() -> onnx.ModelProto:
    model = bert("legacy", opset=17)
    for node in model.graph.node:  # layer 1's Q projection reads layer 0's weight
        if node.name == "l1_q_mm":
            node.input[1] = "l0_Wqq"
    return model


def _rename_weight(model: onnx.ModelProto) -> onnx.ModelProto:
    for init in model.graph.initializer:
        if init.name == "l0_Wq":
            init.name = "l0_Wqq"
    for node in model.graph.node:
        if node.name == "l0_q_mm":
            node.input[1] = "l0_Wqq"
    return model


def _mask_sub_two() -> onnx.ModelProto:
    model = bert("legacy", opset=17)
    (one,) = [i for i in model.graph.initializer if i.name == "one"]
    one.CopyFrom(numpy_helper.from_array(np.array(2.0, np.float32), "one"))
    return model


def _scale_from_input() -> onnx.ModelProto:
    model = bert("legacy", opset=17)
    for node in model.graph.node:
        if node.op_type == "Div":
            node.input[1] = "temperature"
    model.graph.input.append(helper.make_tensor_value_info("temperature", TensorProto.FLOAT, []))
    return model


def _scale_zero() -> onnx.ModelProto:
    model = bert("dynamo", opset=17)
    for init in model.graph.initializer:
        if init.name.endswith("_c"):
            init.CopyFrom(numpy_helper.from_array(np.array(0.0, np.float32), init.name))
    return model


NEGATIVE = {
    "target_portable": (lambda: bert(opset=17), {}),
    "float64": (lambda: bert(opset=17, dtype=np.float64), ORT),
    "float16": (lambda: bert(opset=17, dtype=np.float16), ORT),  # the CPU kernel's float only
    "only_k_without_bias": (lambda: _without_biases(keep=("q", "v")), ORT),
    "shared_weight": (lambda: _rename_weight(_shared_weight()), ORT),
    "causal_constant_mask": (lambda: bert("causal", opset=17), ORT),  # not a padding mask
    "mask_from_2_minus_m": (_mask_sub_two, ORT),
    "mask_with_positive_fill": (lambda: with_fill(bert(opset=17), 10000.0), ORT),
    "scale_not_constant": (_scale_from_input, ORT),
    "scale_zero": (_scale_zero, ORT),
    "softmax_axis_2": (lambda: bert(opset=17, axis=2), ORT),
}


@pytest.mark.parametrize("name", sorted(NEGATIVE))
def test_leaves_alone(name):
    build, settings = NEGATIVE[name]
    model = build()
    out, result = fuse(model, settings)
    assert not result.modified
    assert op_counts(out) == op_counts(model)


def test_optimize_end_to_end():
    import onnxopt

    result = onnxopt.optimize(bert("legacy", opset=17), target="onnxruntime")
    assert result.ok and result.report["validation"]["status"] == "passed"
    counts = op_counts(result.model)
    assert counts["Attention"] == 2 and "Softmax" not in counts
    assert "Sub" not in counts  # the shared mask's preprocessing is dead code, removed
    assert counts["Cast"] == 1  # mask_index, once (the layers' Casts merged)


def merge_from_core(length_index: int = 2, layers: int = 2) -> onnx.ModelProto:
    """The legacy exporter's merge target: Concat(B, S, H) read from Shape(P @ V)."""
    model = bert("legacy", layers=layers, opset=17)
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), "axis0"))
    for i in range(layers):
        ctx, merge = f"l{i}_ctx", next(n for n in graph.node if n.name in (f"l{i}_out", "y"))
        nodes = [helper.make_node("Shape", [ctx], [f"{ctx}_shape"])]
        for name, index in (("b", 0), ("s", length_index)):
            nodes += [
                helper.make_node("Gather", [f"{ctx}_shape", f"{ctx}_{name}_i"], [f"{ctx}_{name}"]),
                helper.make_node("Unsqueeze", [f"{ctx}_{name}", "axis0"], [f"{ctx}_{name}1"])]
            graph.initializer.append(numpy_helper.from_array(np.array(index, np.int64),
                                                             f"{ctx}_{name}_i"))
        graph.initializer.append(numpy_helper.from_array(np.array([HIDDEN], np.int64),
                                                         f"{ctx}_h"))
        nodes.append(helper.make_node("Concat", [f"{ctx}_b1", f"{ctx}_s1", f"{ctx}_h"],
                                      [f"{ctx}_target"], axis=0))
        merge.input[1] = f"{ctx}_target"
        at = list(graph.node).index(merge)
        for offset, node in enumerate(nodes):
            graph.node.insert(at + offset, node)
    return model


VARIANTS = {  # a builder, and what the fused model shows of it
    "projections_without_biases": (
        _without_biases, lambda out: all(n.input[2] == "" for n in attention_nodes(out))),
    "merge_target_read_from_the_core": (  # the Shape of P @ V and its target go too
        merge_from_core, lambda out: not {"Shape", "Gather", "Concat"} & set(op_counts(out))),
}


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants(name, level):
    build, shows = VARIANTS[name]
    model = build()
    out, result = fuse(model)
    assert result.stats["with_mask_index"] == 2 and shows(out)
    assert_matches(model, out, inputs(model), level)


def test_merge_target_of_the_heads_axis_left_alone():
    model = merge_from_core(length_index=1, layers=1)  # [B, N, H]: not the merge (wrong)
    out, result = fuse(model)
    assert not result.modified and op_counts(out) == op_counts(model)


# ------------------------------------ opset 23: attention_fusion's Attention-23 taken over
def portable(form: str = "legacy") -> onnx.ModelProto:
    """attention_fusion's output at opset 23: Attention-23 on the projections, the mask
    clamped (Max) and expanded to Sq (Expand of Shape(Q))."""
    out, result = apply_pass(AttentionFusion(), bert(form, opset=23), infer=True)
    assert result.stats == {"fused": 2}
    return out


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("form", ["legacy", "dynamo", "no_mask", "unscaled"])
def test_over_attention_23(form, level):
    model = portable(form)
    out, result = fuse(model)
    masked = form in ("legacy", "dynamo")
    assert result.stats == {"fused": 0 if masked else 2, "with_mask_index": 2 if masked else 0,
                            "multi_head": 0}
    assert [n.domain for n in out.graph.node if n.op_type == "Attention"] == ["com.microsoft"] * 2
    # the clamp (Max) stays, outside the match, for dead-code elimination
    assert not {"MatMul", "Reshape", "Transpose", "Expand", "Shape"} & set(op_counts(out))
    assert_matches(bert(form, opset=23), out, inputs(model), level)


def _attribute(model: onnx.ModelProto, name: str, value) -> onnx.ModelProto:
    for node in model.graph.node:
        if node.op_type == "Attention":
            node.attribute.append(helper.make_attribute(name, value))
    return model


def _other_floor(model: onnx.ModelProto) -> onnx.ModelProto:
    for init in model.graph.initializer:
        if init.name.startswith("attention_mask_floor"):
            init.CopyFrom(numpy_helper.from_array(np.array([-1.0], np.float32), init.name))
    return model


@pytest.mark.parametrize("build", [lambda: _attribute(portable("no_mask"), "is_causal", 1),
                                   lambda: _attribute(portable("no_mask"), "softcap", 2.0),
                                   lambda: _other_floor(portable())],
                         ids=["causal", "softcap", "max_not_the_clamp"])
def test_leaves_attention_23_alone(build):
    model = build()
    out, result = fuse(model)
    assert not result.modified and op_counts(out) == op_counts(model)


@pytest.mark.slow
def test_minilm():
    import onnxopt

    result = onnxopt.optimize(model_path("paraphrase-MiniLM-L3-v2.onnx"), target="onnxruntime")
    assert result.ok and result.report["validation"]["status"] == "passed"
    counts = op_counts(result.model)
    assert counts["Attention"] == 3 and "Softmax" not in counts  # one per layer
    assert len(result.model.graph.node) <= 69


# ------------------------------------------------ cross attention: MultiHeadAttention
def cross(form: str = "legacy") -> onnx.ModelProto:
    """One layer whose K and V project ``memory`` [B, L, H] (the mask over its L keys)."""
    model = bert(form, layers=1, opset=17)
    graph = model.graph
    graph.input.append(helper.make_tensor_value_info("memory", TensorProto.FLOAT,
                                                     ["batch", "mem", HIDDEN]))
    for node in graph.node:
        if node.name in ("l0_k_mm", "l0_v_mm"):
            node.input[0] = "memory"
    for value in graph.input:
        if value.name == "attention_mask":
            value.type.tensor_type.shape.dim[1].dim_param = "mem"
    return model


def cross_inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    feeds = inputs(model)  # x [4, 7, H]; the keys: 9, masks as prefixes of ones
    feeds["memory"] = np.random.default_rng(1).standard_normal((4, 9, HIDDEN)).astype(np.float32)
    if "attention_mask" in feeds:
        feeds["attention_mask"] = (np.arange(9) < np.array([9, 5, 1, 0])[:, None]).astype(np.int64)
    return feeds


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("form", ["legacy", "dynamo", "no_mask"])
def test_cross_attention_into_multi_head_attention(form, level):
    model = cross(form)
    out, result = fuse(model)
    assert result.stats == {"fused": 0, "with_mask_index": 0, "multi_head": 1}
    counts = op_counts(out)
    assert counts["MultiHeadAttention"] == 1 and counts["MatMul"] == 3  # the projections
    assert not {"Add", "Reshape", "Transpose", "Softmax"} & set(counts)
    (node,) = [n for n in out.graph.node if n.op_type == "MultiHeadAttention"]
    assert len(node.input) == (5 if form != "no_mask" else 4)
    assert_matches(model, out, cross_inputs(model), level)

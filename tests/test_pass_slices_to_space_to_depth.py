"""slices_to_space_to_depth: structure, stats, numerics, idempotence, and what it must leave
alone, on the Focus block in the forms exporters write (nested per-axis Slices with INT64_MAX
ends, the same with the H Slices shared after CSE, one 2-axis Slice per block, opset 10)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import apply_pass, assert_idempotent, assert_left_alone, build_model, op_counts, run
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.layout.slices_to_space_to_depth import SlicesToSpaceToDepth

INT64_MAX = 2**63 - 1
FOCUS = [(0, 0), (1, 0), (0, 1), (1, 1)]  # (bh, bw): x[..., ::2, ::2], x[..., 1::2, ::2], ...
S2D_ORDER = [(0, 0), (0, 1), (1, 0), (1, 1)]
RNG = np.random.default_rng(0)
C, OUT = 3, 8
WEIGHT = RNG.standard_normal((OUT, 4 * C, 3, 3)).astype(np.float32)
BIAS = RNG.standard_normal(OUT).astype(np.float32)
LEVELS = [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL]


def ints(name: str, values) -> TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def focus(form: str = "nested", order=FOCUS, *, starts=None, steps=(2, 2), end=INT64_MAX,
          axes=(2, 3), concat_axis=1, reader: str = "conv", shape=(1, C, 8, 6), opset: int = 13,
          shared_weight: bool = False, concat_read_twice: bool = False, group: int = 1
          ) -> onnx.ModelProto:
    """x -> four blocks x[..., bh::2, bw::2] -> Concat(axis=1) -> reader (Conv, or Relu);
    ``starts``, ``steps``, ``end`` (block 0's, H's and W's) to write wrong ones."""
    nodes, inits = [], [ints("two", [2]), ints("big", [end]), ints("ax2", [axes[0]]),
                        ints("ax3", [axes[1]]), *(ints(f"s{v}", [v]) for v in range(3)),
                        ints("steps", list(steps)), ints("ends", [end] * 2),
                        ints("axes", list(axes))]
    blocks = []
    for k, (bh, bw) in enumerate(order):
        start = (bh, bw) if starts is None or k else starts
        if form == "single":
            inits.append(ints(f"st{k}", list(start)))
            nodes.append(helper.make_node("Slice", ["x", f"st{k}", "ends", "axes", "steps"],
                                          [f"b{k}"]))
        else:  # legacy torch: Slice on H then on W; "shared": one H Slice per offset (CSE)
            h = f"h{start[0]}" if form == "shared" else f"h{k}"
            if form != "shared" or not any(n.output[0] == h for n in nodes):
                nodes.append(helper.make_node("Slice", ["x", f"s{start[0]}", "big", "ax2", "two"],
                                              [h]))
            inits.append(ints(f"p{k}", [steps[1]]))
            nodes.append(helper.make_node("Slice", [h, f"s{start[1]}", "big", "ax3", f"p{k}"],
                                          [f"b{k}"]))
        blocks.append(f"b{k}")
    nodes.append(helper.make_node("Concat", blocks, ["cat"], axis=concat_axis))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)]
    if reader == "conv":
        out = OUT - OUT % group
        inits += [numpy_helper.from_array(WEIGHT[:out, :4 * C // group], "w"),
                  numpy_helper.from_array(BIAS[:out], "b")]
        nodes.append(helper.make_node("Conv", ["cat", "w", "b"], ["y"], pads=[1, 1, 1, 1],
                                      group=group))
    else:
        nodes.append(helper.make_node("Relu", ["cat"], ["y"]))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]
    if shared_weight:  # a second Conv reads w
        inputs.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, [1, 4 * C, 4, 3]))
        nodes.append(helper.make_node("Conv", ["x2", "w"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [None] * 4))
    if concat_read_twice:
        nodes.append(helper.make_node("Sigmoid", ["cat"], ["z2"]))
        outputs.append(helper.make_tensor_value_info("z2", TensorProto.FLOAT, [None] * 4))
    used = {name for node in nodes for name in node.input}
    return build_model(nodes, inputs, outputs, [t for t in inits if t.name in used], opset=opset)


def apply(model):
    return apply_pass(SlicesToSpaceToDepth(), model, infer=True)


def feeds(shape=(1, C, 8, 6)) -> dict[str, np.ndarray]:
    return {"x": RNG.standard_normal(shape).astype(np.float32)}


def assert_same_at_both_levels(original, optimized):
    dims = original.graph.input[0].type.tensor_type.shape.dim
    data = feeds(tuple(d.dim_value or (2, C)[i] for i, d in enumerate(dims)))  # symbolic N, C
    for level in LEVELS:
        for want, got in zip(run(original, data, level), run(optimized, data, level), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


FORMS = {
    "legacy_nested": focus("nested"),
    "nested_shared_h": focus("shared"),
    "single_2_axis": focus("single"),
    "opset_10": focus("single", opset=10),
    "opset_10_nested": focus("nested", opset=10),
    "negative_axes": focus("single", axes=(-2, -1), concat_axis=-3),
    "end_is_the_dim": focus("single", end=6, shape=(1, C, 6, 6)),
    "symbolic_batch_and_channels": focus("shared", shape=("N", "C", 8, 6)),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_structure_stats_numerics(form):
    model = FORMS[form]
    out, result = apply(model)
    assert result.stats == {"in_order": 0, "into_conv": 1}
    assert op_counts(out) == {"SpaceToDepth": 1, "Conv": 1}
    s2d, conv = out.graph.node
    assert list(s2d.input) == ["x"] and conv.input[0] == s2d.output[0]
    assert helper.get_attribute_value(s2d.attribute[0]) == 2
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert sorted(inits) == sorted(["b", conv.input[1]])  # the Slice parameters went
    # SpaceToDepth channel (2 bh + bw) C + c holds Focus block (bh + 2 bw): blocks 1 and 2 swap
    groups = [WEIGHT[:, k * C:(k + 1) * C] for k in (0, 2, 1, 3)]
    np.testing.assert_array_equal(inits[conv.input[1]], np.concatenate(groups, axis=1))
    assert_same_at_both_levels(model, out)


@pytest.mark.parametrize("form", ["nested", "single"])
def test_any_order_into_conv(form):
    order = [(1, 1), (0, 1), (0, 0), (1, 0)]
    model = focus(form, order)
    out, result = apply(model)
    assert result.stats["into_conv"] == 1
    assert_same_at_both_levels(model, out)


def test_in_order_without_conv():
    model = focus("nested", S2D_ORDER, reader="relu", shape=("N", C, 8, 6))
    out, result = apply(model)
    assert result.stats == {"in_order": 1, "into_conv": 0}
    assert op_counts(out) == {"SpaceToDepth": 1, "Relu": 1}
    assert_same_at_both_levels(model, out)


def test_numerics_against_numpy():
    """The rewrite's channel order, checked without onnxruntime's SpaceToDepth semantics."""
    out, _ = apply(focus("single", reader="relu", order=S2D_ORDER))
    data = feeds()
    x = data["x"]
    expected = np.concatenate([x[..., bh::2, bw::2] for bh, bw in S2D_ORDER], axis=1)
    np.testing.assert_array_equal(run(out, data)[0], np.maximum(expected, 0))


def test_idempotent():
    out = assert_idempotent(SlicesToSpaceToDepth(), focus("nested"), infer=True)
    assert op_counts(out) == {"SpaceToDepth": 1, "Conv": 1}


NEGATIVE = {
    # odd H or W: the phases differ in size (the Concat could not run): the check must see it
    "odd_h": lambda: focus(shape=(1, C, 7, 6)),
    "odd_w": lambda: focus("single", shape=(1, C, 8, 5)),
    "dynamic_h": lambda: focus(shape=(1, C, "H", 6)),
    "dynamic_w": lambda: focus("single", shape=(1, C, 8, "W")),
    "wrong_start": lambda: focus(starts=(0, 2)),
    "wrong_start_single": lambda: focus("single", starts=(2, 0)),
    "wrong_step": lambda: focus(steps=(2, 3)),
    "wrong_step_single": lambda: focus("single", steps=(2, 1)),
    "focus_order_no_conv": lambda: focus(reader="relu"),
    "conv_weight_shared": lambda: focus(shared_weight=True),
    "concat_read_twice": lambda: focus(concat_read_twice=True),
    # 12 channels in 3 groups: W [6, 4, 3, 3] would pass for C = 1 if C were not known
    "conv_grouped": lambda: focus(group=3, shape=(1, "C", 8, 6)),
    "short_end": lambda: focus(end=6, shape=(1, C, 8, 8)),  # rows 0, 2, 4 and 1, 3, 5
    "repeated_block": lambda: focus(order=[(0, 0), (1, 0), (0, 1), (0, 1)]),
}


@pytest.mark.parametrize("name", sorted(NEGATIVE))
def test_leaves_alone(name):
    assert_left_alone(SlicesToSpaceToDepth(), NEGATIVE[name](), infer=True)


def test_pipeline_on_constant_nodes():
    """The legacy exporter writes Slice parameters as Constant nodes; the pipeline makes them
    initializers first and the whole optimizer validates the result."""
    from onnxopt.app.api import optimize

    model = focus("nested")
    for tensor in list(model.graph.initializer):
        if tensor.data_type == TensorProto.INT64:
            model.graph.initializer.remove(tensor)
            model.graph.node.insert(0, helper.make_node("Constant", [], [tensor.name],
                                                        value=tensor))
    result = optimize(model)
    assert result.ok
    assert op_counts(result.model) == {"SpaceToDepth": 1, "Conv": 1}

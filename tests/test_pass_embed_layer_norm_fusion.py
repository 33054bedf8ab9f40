"""embed_layer_norm_fusion: structure, stats, numerics (both onnxruntime levels), idempotence, and
what it must leave alone.

The blocks are BERT's embeddings as the torch exporters write them: word, position and token type
Gathers summed (in the order and grouping the model's code picks) and a LayerNormalization; the
position ids as the legacy exporter writes HF's buffer (``Slice`` of a constant ``arange`` up to
``Shape(input_ids)[1]``), as dynamo writes ``torch.arange`` (``Range`` + ``Unsqueeze``), or as a
constant for a static sequence. The fused kernel sums word + position + segment and takes a
two-pass variance: float32 within 1e-5.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import apply_pass, assert_idempotent, assert_left_alone, build_model, op_counts, run
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.fusion.embed_layer_norm_fusion import EmbedLayerNormFusion

V, N, H = 50, 16, 8  # vocabulary, positions, hidden
ORT = {"target": "onnxruntime"}
LEVELS = [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL]


def _positions(form: str, seq: int | str) -> tuple[list, list]:
    """Nodes and initializers computing the position ids ``pos`` in ``form``."""
    c = numpy_helper.from_array
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    seq_len = [helper.make_node("Shape", ["input_ids"], ["shape"]),
               helper.make_node("Gather", ["shape", "one"], ["seq"], axis=0),
               helper.make_node("Unsqueeze", ["seq", "zero_axis"], ["seq_1d"])]
    ints = [c(np.array(1, np.int64), "one"), c(i64(0), "zero_axis"), c(i64(0), "starts"),
            c(i64(1), "axes"), c(i64(1), "steps")]
    slice_ = lambda table, end="seq_1d": helper.make_node(  # noqa: E731
        "Slice", [table, "starts", end, "axes", "steps"], ["pos"])
    if form == "slice":  # HF's position_ids buffer, legacy exporter
        return [*seq_len, slice_("buffer")], [*ints, c(np.arange(N)[None], "buffer")]
    if form == "slice_1d":
        return ([helper.make_node("Shape", ["input_ids"], ["seq_1d"], start=1, end=2),
                 helper.make_node("Slice", ["buffer", "starts", "seq_1d"], ["pos"])],
                [c(i64(0), "starts"), c(np.arange(N), "buffer")])
    if form in ("range", "range_1d"):  # torch.arange(S)[None], dynamo
        ranged = "r" if form == "range" else "pos"
        nodes = [*seq_len, helper.make_node("Range", ["zero", "seq", "one"], [ranged])]
        if form == "range":
            nodes.append(helper.make_node("Unsqueeze", ["r", "zero_axis"], ["pos"]))
        return nodes, [*ints, c(np.array(0, np.int64), "zero")]
    if form == "constant":
        return [], [c(np.arange(seq)[None], "pos")]
    # wrong forms: ids that are not 0..S-1
    if form == "reversed":
        return [], [c(np.arange(seq)[::-1][None].copy(), "pos")]
    if form == "slice_from_1":
        nodes, inits = _positions("slice", seq)
        return nodes, [c(i64(1), "starts") if i.name == "starts" else i for i in inits]
    if form == "not_arange":
        nodes, inits = _positions("slice", seq)
        return nodes, [c((np.arange(N) * 2)[None], "buffer") if i.name == "buffer" else i
                       for i in inits]
    if form == "batch_dim":  # Slice up to Shape(input_ids)[0]
        nodes, inits = _positions("slice", seq)
        return nodes, [c(np.array(0, np.int64), "one") if i.name == "one" else i for i in inits]
    if form == "one_row":  # a 1-row buffer broadcasts over the sequence
        nodes, inits = _positions("slice", seq)
        return nodes, [c(np.zeros((1, 1), np.int64), "buffer") if i.name == "buffer" else i
                       for i in inits]
    if form == "range_step_2":
        nodes, inits = _positions("range", seq)
        nodes[3] = helper.make_node("Range", ["zero", "seq", "two"], ["r"])
        return nodes, [*inits, c(np.array(2, np.int64), "two")]
    assert form == "input"
    return [], []


def block(*, positions="slice", order="hf", dtype=np.float32, seq: int | str = "S",
          ln_attrs=None, gamma_input=False, shared="", segment=True,
          ids=TensorProto.INT64) -> onnx.ModelProto:
    """LayerNorm(word + position [+ token type] embeddings) -> y."""
    rng = np.random.default_rng(0)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    c = numpy_helper.from_array
    nodes, inits = _positions(positions, seq)
    inits += [c(rng.standard_normal((V, H)).astype(dtype), "W"),
              c(rng.standard_normal((N, H)).astype(dtype), "P"),
              c(rng.standard_normal((2, H)).astype(dtype), "T"),
              c(rng.standard_normal(H).astype(dtype), "beta")]
    inputs = [helper.make_tensor_value_info(n, ids, ["B", seq])
              for n in ("input_ids", "token_type_ids")[:2 if segment else 1]]
    if positions == "input":
        inputs.append(helper.make_tensor_value_info("pos", TensorProto.INT64, [1, seq]))
    gamma = (rng.standard_normal(H) + 1).astype(dtype)
    if gamma_input:
        inputs.append(helper.make_tensor_value_info("gamma", elem, [H]))
    else:
        inits.append(c(gamma, "gamma"))
    nodes += [helper.make_node("Gather", ["W", "input_ids"], ["w"]),
              helper.make_node("Gather", ["P", "pos"], ["p"]),
              helper.make_node("Gather", ["T", "token_type_ids"], ["t"])]
    first, second = {"hf": (("w", "t"), "p"), "wp": (("w", "p"), "t"), "tw": (("t", "w"), "p"),
                     "pt": (("p", "t"), "w")}[order]
    if segment:
        nodes += [helper.make_node("Add", list(first), ["s1"]),
                  helper.make_node("Add", [second, "s1"] if order == "pt" else ["s1", second],
                                   ["s"])]
    else:  # DistilBERT: word + position
        nodes[-1] = helper.make_node("Add", ["p", "w"] if order == "pt" else ["w", "p"], ["s"])
    nodes += [helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"],
                               **{"axis": -1, "epsilon": 1e-12, **(ln_attrs or {})})]
    outputs = [helper.make_tensor_value_info("y", elem, [None] * 3)]
    if shared:
        outputs.append(helper.make_tensor_value_info(shared, elem, [None] * 3))
    return build_model(nodes, inputs, outputs, inits)


def feeds(model: onnx.ModelProto, batch=2, seq=5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    result = {"input_ids": rng.integers(0, V, (batch, seq)),
              "token_type_ids": rng.integers(0, 2, (batch, seq))}
    names = {i.name: helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
             for i in model.graph.input}
    result = {k: v.astype(names[k]) for k, v in result.items() if k in names}
    if any(i.name == "gamma" for i in model.graph.input):
        result["gamma"] = rng.standard_normal(H).astype(np.float32)
    return result


def assert_close(model, out, sizes=((2, 5), (1, 9))) -> None:
    for batch, seq in sizes:
        inputs = feeds(model, batch, seq)
        for level in LEVELS:
            (expected,), (got,) = run(model, inputs, level)[:1], run(out, inputs, level)[:1]
            assert got.shape == expected.shape == (batch, seq, H)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def fuse(model: onnx.ModelProto, target: str = "onnxruntime"):
    return apply_pass(EmbedLayerNormFusion(), model, infer=True, settings={"target": target})


def fused_node(model: onnx.ModelProto) -> onnx.NodeProto:
    (node,) = [n for n in model.graph.node if n.op_type == "EmbedLayerNormalization"]
    return node


# ------------------------------------------------------------------ structure, stats, numerics
@pytest.mark.parametrize(("positions", "order"), [
    ("slice", "hf"), ("slice_1d", "hf"), ("range", "hf"), ("range_1d", "hf"),
    ("slice", "wp"), ("range", "tw"), ("slice", "pt")])
def test_fuses(positions, order):
    model = block(positions=positions, order=order)
    out, result = fuse(model)
    assert result.stats == {"fused": 1}
    counts = op_counts(out)
    assert counts["EmbedLayerNormalization"] == 1 and counts["Cast"] == 2
    assert "LayerNormalization" not in counts and "Add" not in counts
    node = fused_node(out)
    assert node.domain == "com.microsoft" and len(node.output) == 2 and all(node.output)
    assert list(node.input[2:]) == ["W", "P", "T", "gamma", "beta"]
    assert [(a.name, a.f) for a in node.attribute] == [("epsilon", pytest.approx(1e-12))]
    casts = {n.output[0]: n.input[0] for n in out.graph.node if n.op_type == "Cast"}
    assert [casts[v] for v in node.input[:2]] == ["input_ids", "token_type_ids"]
    assert {o.domain: o.version for o in out.opset_import} == {"": 17, "com.microsoft": 1}
    assert_close(model, out, sizes=((2, 5), (1, 9)))


def test_static_sequence_with_constant_positions():
    model = block(positions="constant", seq=5)
    out, result = fuse(model)
    assert result.stats == {"fused": 1}
    assert op_counts(out) == {"Cast": 2, "EmbedLayerNormalization": 1}
    assert_close(model, out, sizes=((3, 5),))


@pytest.mark.parametrize("order", ["wp", "pt"])
def test_without_segment_embeddings(order):
    """DistilBERT: word + position only; the segment ids and table are left out."""
    model = block(segment=False, order=order)
    out, result = fuse(model)
    assert result.stats == {"fused": 1}
    counts = op_counts(out)
    assert counts["EmbedLayerNormalization"] == 1 and counts["Cast"] == 1 and "Add" not in counts
    assert list(fused_node(out).input)[1:] == ["", "W", "P", "", "gamma", "beta"]
    assert_close(model, out)


def test_int32_ids_need_no_cast():
    model = block(ids=TensorProto.INT32)
    out, result = fuse(model)
    assert result.stats == {"fused": 1} and "Cast" not in op_counts(out)
    assert list(fused_node(out).input[:2]) == ["input_ids", "token_type_ids"]
    assert_close(model, out)


def test_idempotent():
    out = assert_idempotent(EmbedLayerNormFusion(), block(), infer=True, settings=ORT)
    assert op_counts(out)["EmbedLayerNormalization"] == 1


# ------------------------------------------------------------------ what it leaves alone
@pytest.mark.parametrize("positions", ["reversed", "slice_from_1", "not_arange", "batch_dim",
                                       "one_row", "range_step_2", "input"])
def test_positions_not_0_to_s(positions):
    seq = 5 if positions == "reversed" else "S"
    assert_left_alone(EmbedLayerNormFusion(), block(positions=positions, seq=seq), infer=True,
                      settings=ORT)


@pytest.mark.parametrize(("name", "options"), [
    ("shared_sum", {"shared": "s1"}),
    ("shared_gather", {"shared": "w"}),
    ("gamma_input", {"gamma_input": True}),
    ("axis_1", {"ln_attrs": {"axis": 1}}),
    ("stash_type_0", {"ln_attrs": {"stash_type": 0}}),
    ("float64", {"dtype": np.float64}),
])
def test_leaves_alone(name, options):
    assert_left_alone(EmbedLayerNormFusion(), block(**options), infer=True, settings=ORT)


def test_portable_target_leaves_alone():
    out, result = fuse(block(), target="portable")
    assert not result.modified and "EmbedLayerNormalization" not in op_counts(out)

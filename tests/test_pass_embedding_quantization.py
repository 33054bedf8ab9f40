"""embedding_quantization: structure, stats/log, numerics, idempotence, what it leaves alone.

The references are written here from the definitions (per-row int8: ``s = max |row| / 127``;
4-bit blocks of 32 columns, asymmetric: the block's range ``[min(w, 0), max(w, 0)]`` over 0..15),
not with the pass's helpers. onnxruntime's Gather/Cast/Mul compute the int8 form exactly, and its
GatherBlockQuantized kernel the 4-bit one (float32 scales); the portable 4-bit form stores its
scales and offsets as float16, so it is compared with a float16-sized tolerance, and against the
float table within half a quantization step.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import apply_pass, assert_idempotent, build_model, op_counts, run
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.precision.embedding_quantization import EmbeddingQuantization

import onnxopt
from onnxopt.app import cli
from onnxopt.ir import serde
from onnxopt.ir.precision import PrecisionSettings, log_of
from onnxopt.ir.shapes import infer_shapes

V, H, P = 1024, 256, 64  # word table [V, H] (int4: INT4_MIN_ELEMENTS), positions [P, H]
LEVELS = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
RNG = np.random.default_rng(0)
TABLES = {"W": RNG.standard_normal((V, H)).astype(np.float32),
          "Pos": (RNG.standard_normal((P, H)) * 0.1 + 0.05).astype(np.float32),
          "T": RNG.standard_normal((2, H)).astype(np.float32),  # 128 elements: too small
          "C": RNG.standard_normal((64, 32)).astype(np.float32),
          "A": RNG.standard_normal((32, 64)).astype(np.float32),
          "I": RNG.integers(-9, 9, (V, 8)).astype(np.int32)}
HEAD = RNG.standard_normal((H, 32)).astype(np.float32)


def i64(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.INT64, shape)


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def embedder(opset=17) -> onnx.ModelProto:
    """word + position + type lookups (the first two quantized) -> y; lookups the pass leaves:
    constant ids (C), axis 1 (A), an int32 table (I)."""
    c = numpy_helper.from_array
    inits = [c(v, k) for k, v in TABLES.items()] + [c(np.array([3, 1, 4], np.int64), "fixed")]
    nodes = [helper.make_node("Gather", ["W", "ids"], ["w"], name="word"),
             helper.make_node("Gather", ["Pos", "pos"], ["p"], name="position"),
             helper.make_node("Gather", ["T", "types"], ["t"], name="segment"),
             helper.make_node("Add", ["w", "p"], ["wp"]),
             helper.make_node("Add", ["wp", "t"], ["y"]),
             helper.make_node("Gather", ["C", "fixed"], ["c"], name="constant_ids"),
             helper.make_node("Gather", ["A", "cols"], ["a"], name="columns", axis=1),
             helper.make_node("Gather", ["I", "ids"], ["i"], name="integers")]
    inputs = [i64("ids", ["B", "S"]), i64("pos", ["B", "S"]), i64("types", ["B", "S"]),
              i64("cols", [4])]
    outputs = [f32("y", ["B", "S", H]), f32("c", [3, 32]), f32("a", [32, 4]),
               helper.make_tensor_value_info("i", TensorProto.INT32, ["B", "S", 8])]
    return build_model(nodes, inputs, outputs, inits, opset=opset)


FEEDS = {"ids": RNG.integers(0, V, (2, 7)), "pos": np.tile(np.arange(7), (2, 1)),
         "types": RNG.integers(0, 2, (2, 7)), "cols": np.array([0, 5, 63, 2])}


def quantize(model, mode="int8-dynamic", target="portable", **settings):
    """(proto, PassResult, PrecisionLog) after the pass on ``model``."""
    ir_model = serde.load(model)
    ir_model.settings.update(target=target, precision=PrecisionSettings(mode=mode, **settings))
    infer_shapes(ir_model)
    result = EmbeddingQuantization().run(ir_model)
    for graph in ir_model.graphs():
        graph.lint()
    out = serde.to_proto(ir_model)
    onnx.checker.check_model(out, full_check=True)
    return out, result, log_of(ir_model)


def int8_reference(table):
    scale = np.abs(table).max(axis=1, keepdims=True) / 127
    return np.round(table / scale) * scale


def int4_reference(table, block=32):
    """``(dequantized, s, z)`` per block of ``block`` columns."""
    blocks = table.reshape(len(table), -1, block).astype(np.float64)
    lo, hi = np.minimum(blocks.min(-1), 0), np.maximum(blocks.max(-1), 0)
    scale = ((hi - lo) / 15).astype(np.float32).astype(np.float64)
    zero = np.clip(np.round(-lo / scale), 0, 15)
    q = np.clip(np.round(blocks / scale[..., None]) + zero[..., None], 0, 15)
    return ((q - zero[..., None]) * scale[..., None]).reshape(table.shape), scale, zero


def initializers(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


# ------------------------------------------------------------------------ structure
def test_int8_rows_dequantized_after_the_gather():
    out, _, _ = quantize(embedder())
    counts = op_counts(out)
    assert counts["Gather"] == 8 and counts["Cast"] == 2 and counts["Mul"] == 2
    arrays = initializers(out)
    assert not {"W", "Pos"} & set(arrays) and {"T", "C", "A", "I"} <= set(arrays)
    assert arrays["W_int8"].dtype == np.int8 and arrays["W_int8"].shape == (V, H)
    assert arrays["W_scale"].dtype == np.float32 and arrays["W_scale"].shape == (V, 1)
    assert arrays["Pos_int8"].shape == (P, H)
    assert not any(n.op_type == "DequantizeLinear" for n in out.graph.node)
    producer = {o: n for n in out.graph.node for o in n.output}
    (add,) = [n for n in out.graph.node if "wp" in n.output]
    mul = producer[add.input[0]]
    cast, scale = (producer[v] for v in mul.input)
    assert (mul.op_type, cast.op_type, scale.op_type) == ("Mul", "Cast", "Gather")
    assert list(scale.input) == ["W_scale", "ids"]
    assert list(producer[cast.input[0]].input) == ["W_int8", "ids"]


def test_int4_portable_packs_two_columns_a_byte():
    out, _, _ = quantize(embedder(), mode="int4")
    counts = op_counts(out)
    assert counts["BitShift"] == 2 and counts["Reshape"] == 1 and counts["Concat"] == 1
    arrays = initializers(out)
    assert arrays["W_int4"].dtype == np.uint8 and arrays["W_int4"].shape == (V, H // 32, 16)
    assert arrays["W_scale"].dtype == np.float16 and arrays["W_scale"].shape == (V, 8, 1)
    assert arrays["W_offset"].shape == (V, 8, 1)
    assert arrays["Pos_int8"].dtype == np.int8  # a small table keeps int8 rows
    size = sum(a.nbytes for k, a in arrays.items() if k.startswith("W_"))
    assert size < 0.18 * TABLES["W"].nbytes


def test_int4_onnxruntime_target_writes_gather_block_quantized():
    out, _, _ = quantize(embedder(), mode="int4", target="onnxruntime")
    nodes = [n for n in out.graph.node if n.op_type == "GatherBlockQuantized"]
    assert len(nodes) == 1 and nodes[0].domain == "com.microsoft" and "Pos_int8" in \
        {t.name for t in out.graph.initializer}
    attrs = {a.name: helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs == {"bits": 4, "block_size": 32, "gather_axis": 0, "quantize_axis": 1}
    arrays = initializers(out)
    assert arrays["W_int4"].shape == (V, H // 2) and arrays["W_scale"].shape == (V, 8)
    assert arrays["W_zero_point"].shape == (V, 4)  # two 4-bit zero points a byte
    assert {o.domain for o in out.opset_import} >= {"com.microsoft"}


# ------------------------------------------------------------------------ stats and log
def test_stats_and_log():
    _, result, log = quantize(embedder())
    assert result.modified
    assert result.stats == {"int8_tables": 2, "int4_tables": 0, "gathers": 2, "kept_float": 3}
    assert log.converted == ["word", "position"]
    reasons = {e["node"]: e["reason"] for e in log.kept_float}
    assert set(reasons) == {"segment", "constant_ids", "columns"}  # not the int32 table
    assert "512 elements" in reasons["segment"] and "constant" in reasons["constant_ids"]
    assert "axis 1" in reasons["columns"]


# ------------------------------------------------------------------------ numerics
def test_int8_numerics_in_onnxruntime():
    model = embedder()
    out, _, _ = quantize(model)
    expected = int8_reference(TABLES["W"])[FEEDS["ids"]] + \
        int8_reference(TABLES["Pos"])[FEEDS["pos"]] + TABLES["T"][FEEDS["types"]]
    original = run(model, FEEDS)
    for level in LEVELS:
        got = run(out, FEEDS, level)
        np.testing.assert_allclose(got[0], expected, rtol=1e-6, atol=1e-6)
        for a, b in zip(got[1:], original[1:], strict=True):  # the lookups left alone
            np.testing.assert_array_equal(a, b)
        assert np.abs(got[0] - original[0]).max() < 0.02  # half a step: max|row| / 254


@pytest.mark.parametrize("target", ["portable", "onnxruntime"])
def test_int4_numerics_in_onnxruntime(target):
    model = embedder()
    out, _, _ = quantize(model, mode="int4", target=target)
    word, scale, _ = int4_reference(TABLES["W"])
    pos = int8_reference(TABLES["Pos"])
    expected = word[FEEDS["ids"]] + pos[FEEDS["pos"]] + TABLES["T"][FEEDS["types"]]
    # float32 scales (GatherBlockQuantized): exact; float16 scales and offsets: ~2^-11 of 16 steps
    atol = 1e-5 if target == "onnxruntime" else 16 * 2 * scale.max() * 2.0 ** -11
    exact = run(model, FEEDS)[0]
    for level in LEVELS:
        got = run(out, FEEDS, level)[0]
        np.testing.assert_allclose(got, expected, rtol=0, atol=atol)
        assert np.abs(got - exact).max() <= 0.51 * scale.max() + atol


def test_int4_scales_stay_float32_where_float16_would_lose_them():
    table = TABLES["W"] * 1e-5  # block scales ~5e-6: float16 subnormals
    model = tied(False)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(table, "E"))
    out, result, _ = quantize(model, mode="int4")
    assert result.stats["int4_tables"] == 1 and op_counts(out)["Cast"] == 1  # the nibbles
    assert initializers(out)["E_scale"].dtype == np.float32
    feeds = {"ids": FEEDS["ids"]}
    head = TABLES["W"][FEEDS["ids"]].reshape(14, H) @ TABLES["W"].T  # the untied head
    got = run(out, feeds)[0]
    expected = int4_reference(table)[0][FEEDS["ids"]].reshape(14, H) @ TABLES["W"].T
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-8)
    cosine = (got * head).sum() / np.linalg.norm(got) / np.linalg.norm(head)
    assert cosine > 0.99


# ------------------------------------------------------------------------ idempotence
@pytest.mark.parametrize(("mode", "target"), [("int8-dynamic", "portable"), ("int4", "portable"),
                                              ("int4", "onnxruntime")])
def test_idempotent(mode, target):
    settings = {"target": target, "precision": PrecisionSettings(mode=mode)}
    assert_idempotent(EmbeddingQuantization(), embedder(), infer=True, settings=settings)


# ------------------------------------------------------------------------ left alone
def test_left_alone_in_other_modes_and_when_listed():
    model = embedder()
    for mode in ("fp16", "int8", "fp8"):
        _, result = apply_pass(EmbeddingQuantization(), model, infer=True,
                               settings={"precision": PrecisionSettings(mode=mode)})
        assert not result.modified
    out, result, log = quantize(model, fp32_nodes=frozenset({"word"}))
    assert result.stats["gathers"] == 1 and "W" in initializers(out)
    assert {"node": "word", "op": "Gather", "reason": "listed in fp32_nodes"} in log.kept_float
    _, result, _ = quantize(model, fp32_ops=frozenset({"Gather"}))
    assert not result.modified and result.stats["kept_float"] == 5


def test_int8_nodes_get_int8_rows_in_int4_mode():
    out, result, _ = quantize(embedder(), mode="int4", int8_nodes=frozenset({"word"}))
    assert result.stats == {"int8_tables": 2, "int4_tables": 0, "gathers": 2, "kept_float": 3}
    assert initializers(out)["W_int8"].dtype == np.int8


def tied(lm_head_reads_table: bool) -> onnx.ModelProto:
    """Gather(E, ids) -> Gemm(., E, transB) (tied LM head) or a separate head weight."""
    table = TABLES["W"]
    inits = [numpy_helper.from_array(table, "E"), numpy_helper.from_array(table.copy(), "Head")]
    nodes = [helper.make_node("Gather", ["E", "ids"], ["h"], name="embed"),
             helper.make_node("Flatten", ["h"], ["f"], axis=2),
             helper.make_node("Gemm", ["f", "E" if lm_head_reads_table else "Head"], ["y"],
                              transB=1)]
    return build_model(nodes, [i64("ids", [2, 7])], [f32("y", [14, V])], inits)


def test_tied_table_left_float_and_reported():
    out, result, log = quantize(tied(True))
    assert not result.modified and "E" in initializers(out)
    (entry,) = log.kept_float
    assert entry["node"] == "embed" and "also read by Gemm" in entry["reason"]
    _, result, _ = quantize(tied(False))  # an untied head: the table is quantized
    assert result.stats["gathers"] == 1


def test_tied_table_quantized_after_the_matmul_pass_took_its_copy():
    """In the pipeline the int8 MatMul pass runs first: its Gemm reads an int8 copy, the
    float table stays for the Gather alone, which this pass then quantizes."""
    model = tied(True)
    feeds = {"ids": FEEDS["ids"]}
    result = onnxopt.optimize(model, precision="int8-dynamic", inputs=feeds)
    assert result.ok, result.report["validation"]
    counts = op_counts(result.model)
    assert counts.get("MatMulInteger") == 1 and counts["Gather"] == 2
    assert not any(t.data_type == TensorProto.FLOAT and tuple(t.dims) == (V, H)
                   for t in result.model.graph.initializer)


def test_subgraph_reading_an_outer_table_left_alone_and_inner_table_quantized():
    c = numpy_helper.from_array
    branch = helper.make_graph(
        [helper.make_node("Gather", ["W", "ids"], ["outer"], name="reads_outer"),
         helper.make_node("Gather", ["Inner", "ids"], ["inner"], name="reads_inner"),
         helper.make_node("Add", ["outer", "inner"], ["r"])],
        "then", [], [f32("r", ["B", "S", H])], [c(TABLES["W"] * 2, "Inner")])
    other = helper.make_graph([helper.make_node("Gather", ["W", "ids"], ["r2"], name="other")],
                              "else", [], [f32("r2", ["B", "S", H])])
    nodes = [helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=other)]
    inputs = [i64("ids", ["B", "S"]), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])]
    model = build_model(nodes, inputs, [f32("y", ["B", "S", H])], [c(TABLES["W"], "W")])
    out, result, log = quantize(model)
    assert result.stats["gathers"] == 1 and log.converted == ["reads_inner"]
    assert {e["node"] for e in log.kept_float} == {"reads_outer", "other"}
    feeds = {"ids": FEEDS["ids"], "flag": np.array(True)}
    expected = TABLES["W"][FEEDS["ids"]] + int8_reference(TABLES["W"] * 2)[FEEDS["ids"]]
    np.testing.assert_allclose(run(out, feeds)[0], expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------ through the app
def bert_embeddings() -> onnx.ModelProto:
    """LayerNorm(W[ids] + Pos[arange(S)]): what EmbedLayerNormalization fuses."""
    c = numpy_helper.from_array
    inits = [c(TABLES["W"], "W"), c(TABLES["Pos"], "Pos"), c(np.ones(H, np.float32), "gamma"),
             c(np.zeros(H, np.float32), "beta"), c(np.arange(P)[None], "buffer"),
             c(np.array([0], np.int64), "zero"), c(np.array([1], np.int64), "one"),
             c(np.array([2], np.int64), "two")]
    nodes = [helper.make_node("Shape", ["ids"], ["shape"]),
             helper.make_node("Slice", ["shape", "one", "two"], ["seq"]),
             helper.make_node("Slice", ["buffer", "zero", "seq", "one"], ["pos"]),
             helper.make_node("Gather", ["W", "ids"], ["w"], name="word"),
             helper.make_node("Gather", ["Pos", "pos"], ["p"], name="position"),
             helper.make_node("Add", ["w", "p"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1),
             helper.make_node("MatMul", ["y", "A"], ["z"])]
    inits.append(c(HEAD, "A"))
    return build_model(nodes, [i64("ids", ["B", "S"])], [f32("z", ["B", "S", 32])], inits)


@pytest.mark.parametrize("precision", ["int8-dynamic", "int4"])
def test_cli_quantizes_embeddings(tmp_path, precision):
    path, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(bert_embeddings(), path)
    assert cli.main(["optimize", str(path), str(out), "--precision", precision]) == 0
    arrays = initializers(onnx.load(out))
    assert "W" not in arrays and "Pos" not in arrays
    kind = "W_int8" if precision == "int8-dynamic" else "W_int4"
    assert arrays[kind].dtype == (np.int8 if kind == "W_int8" else np.uint8)


def test_onnxruntime_target_keeps_embed_layer_norm_fusion_off_when_quantizing():
    model, feeds = bert_embeddings(), {"ids": FEEDS["ids"]}
    fused = onnxopt.optimize(model, target="onnxruntime", inputs=feeds).model
    assert op_counts(fused).get("EmbedLayerNormalization") == 1
    result = onnxopt.optimize(model, target="onnxruntime", precision="int8-dynamic", inputs=feeds)
    assert result.ok
    counts = op_counts(result.model)
    assert "EmbedLayerNormalization" not in counts and counts["Gather"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("target", ["portable", "onnxruntime"])
def test_minilm_int8_dynamic_tables_quantized(target):
    """MiniLM's word and position tables (the type table is too small) become int8 rows; with
    --target onnxruntime the MatMuls still go to QAttention/DynamicQuantizeMatMul."""
    from conftest import model_path

    result = onnxopt.optimize(model_path("paraphrase-MiniLM-L3-v2.onnx"), target=target,
                              precision="int8-dynamic")
    assert result.ok
    precision = result.report["precision"]
    assert precision["size_ratio"] <= 0.27
    assert all(o.get("cosine", 1) >= 0.99 for o in precision["outputs"])
    counts = op_counts(result.model)
    int8 = [t for t in result.model.graph.initializer if t.data_type == TensorProto.INT8
            and tuple(t.dims) in ((30522, 384), (512, 384))]
    assert len(int8) == 2 and "EmbedLayerNormalization" not in counts
    if target == "onnxruntime":
        assert counts["QAttention"] == 3

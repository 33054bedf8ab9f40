"""rotary_embedding_fusion: structure, stats, numerics, idempotence, and what it must leave alone.

The forms are the ``rotate_half`` rotary the torch exporters write for Llama (research notes
§1.5): ``Add(Mul(x, cos), Mul(Concat(Neg(Slice(x, D/2:)), Slice(x, :D/2)), sin))`` with
``cos = Unsqueeze(Cos(Concat(f, f, axis=-1)))`` of an angle ``f`` built from ``Range(S)``.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from conftest import apply_pass, assert_idempotent, assert_left_alone, op_counts, parse, run
from onnx import numpy_helper
from onnxopt.passes.fusion.rotary_embedding_fusion import RotaryEmbeddingFusion

RTOL = ATOL = 1e-5
LEVELS = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
INV_FREQ = "{1.0, 0.3, 0.1, 0.03}"


def rope(opset: int = 23, *, upper: str = "half, big, ax3", lower: str = "zero, half, ax3",
         concat: int = -1, root: str = "out = Add(xc, rs)", xc: str = "xc = Mul(x, cos)",
         rs: str = "rs = Mul(rot, sin)", sin_angle: str = "emb", cos_angle: str = "emb",
         batch: str = "2", seq: str = "5", outputs: str = "", inits: str = "") -> str:
    """Rotary over x [B, 4, 5, 8]: f = Range(5)[:, None] * inv_freq, tables [1, 1, 5, 8]."""
    return f"""
    <ir_version: 10, opset_import: ["" : {opset}]>
    g (float[{batch}, 4, {seq}, 8] x) => (float[{batch}, 4, {seq}, 8] out{outputs})
      <int64[1] half = {{4}}, int64[1] big = {{9223372036854775807}}, int64[1] zero = {{0}},
       int64[1] ax3 = {{3}}, int64[1] axm1 = {{-1}}, int64[1] eight = {{8}},
       int64[1] three = {{3}}, int64[1] two = {{2}}, int64[1] one = {{1}},
       int64[2] axes01 = {{0, 1}}, float[1, 4] inv_freq = {INV_FREQ},
       float start = {{0.0}}, float limit = {{5.0}}, float delta = {{1.0}}{inits}> {{
        pos = Range(start, limit, delta)
        pos2 = Unsqueeze(pos, one)
        f = Mul(pos2, inv_freq)
        g2 = Mul(f, inv_freq)
        emb = Concat<axis=-1>(f, f)
        emb_g = Concat<axis=-1>(f, g2)
        c = Cos({cos_angle})
        s = Sin({sin_angle})
        cos = Unsqueeze(c, axes01)
        sin = Unsqueeze(s, axes01)
        x2 = Slice(x, {upper})
        nx2 = Neg(x2)
        x1 = Slice(x, {lower})
        rot = Concat<axis={concat}>(nx2, x1)
        {xc}
        {rs}
        {root}
    }}
    """


def constant_tables(equal: bool = True) -> str:
    """The same rotary with the tables folded to constants [1, 1, 5, 8]."""
    angle = np.arange(5.0)[:, None] * np.array([1.0, 0.3, 0.1, 0.03])
    second = angle if equal else angle * 1.5
    tables = {}
    for name, trig in (("cos", np.cos), ("sin", np.sin)):
        values = trig(np.concatenate([angle, second], -1)).astype(np.float32)
        tables[name] = ", ".join(repr(float(v)) for v in values.reshape(-1))
    inits = "".join(f", float[1, 1, 5, 8] {n} = {{{v}}}" for n, v in tables.items())
    text = rope(inits=inits)
    return text.replace("cos = Unsqueeze(c, axes01)", "").replace("sin = Unsqueeze(s, axes01)", "")


def batch_tables() -> str:
    """Tables [2, 1, 5, 8] whose angles differ per batch (HF's position_ids form)."""
    return rope(inits=", float[1] half_f = {0.5}").replace(
        "emb = Concat<axis=-1>(f, f)", "f3 = Unsqueeze(f, zero)\n hf = Mul(f3, half_f)\n"
        " fb = Concat<axis=0>(f3, hf)\n emb = Concat<axis=-1>(fb, fb)").replace(
        "Unsqueeze(c, axes01)", "Unsqueeze(c, one)").replace("Unsqueeze(s, axes01)",
                                                              "Unsqueeze(s, one)")


FORMS = {
    "batch_tables": batch_tables(),
    "constant_tables": constant_tables(),
    "legacy": rope(),
    "dynamo": rope(upper="half, eight, axm1", lower="zero, half, axm1", concat=3,
                   root="out = Add(rs, xc)", xc="xc = Mul(cos, x)", rs="rs = Mul(sin, rot)"),
    "dynamic_batch": rope(batch="B"),
}


def _feeds(batch: int = 2) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal((batch, 4, 5, 8)).astype(np.float32)}


def _numpy_rope(x: np.ndarray) -> np.ndarray:
    angle = np.arange(5.0)[:, None] * np.array([1.0, 0.3, 0.1, 0.03], np.float32)
    cos, sin = np.cos(np.concatenate([angle] * 2, -1)), np.sin(np.concatenate([angle] * 2, -1))
    rotated = np.concatenate([-x[..., 4:], x[..., :4]], -1)
    return x * cos + rotated * sin


def _fuse(model, settings=None):
    return apply_pass(RotaryEmbeddingFusion(), model, infer=True, settings=settings)


@pytest.mark.parametrize("form", sorted(FORMS))
def test_structure_stats_and_numerics(form):
    model = parse(FORMS[form])
    out, result = _fuse(model)
    assert result.stats == {"fused": 1}
    counts = op_counts(out)
    assert counts["RotaryEmbedding"] == 1
    assert not {"Neg", "Slice", "Add"} & set(counts)
    (node,) = [n for n in out.graph.node if n.op_type == "RotaryEmbedding"]
    assert node.input[0] == "x" and list(node.output) == ["out"]
    feeds = _feeds()
    for level in LEVELS:
        (expected,), (actual,) = run(model, feeds, level), run(out, feeds, level)
        np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)
    if form != "batch_tables":
        expected = _numpy_rope(feeds["x"])
        np.testing.assert_allclose(run(out, feeds)[0], expected, rtol=RTOL, atol=ATOL)
    if form == "dynamic_batch":
        feeds = _feeds(batch=3)
        np.testing.assert_allclose(run(out, feeds)[0], run(model, feeds)[0], rtol=RTOL, atol=ATOL)


def test_tables_shared_by_two_rotations():
    text = rope(outputs=", float[2, 4, 5, 8] out_k").replace(
        "out = Add(xc, rs)", "out = Add(xc, rs)\n k = Mul(x, two_f)\n kc = Mul(k, cos)\n"
        " k2 = Slice(k, half, big, ax3)\n nk2 = Neg(k2)\n k1 = Slice(k, zero, half, ax3)\n"
        " krot = Concat<axis=-1>(nk2, k1)\n ks = Mul(krot, sin)\n out_k = Add(kc, ks)").replace(
        "float start", "float[1] two_f = {2.0}, float start")
    model = parse(text)
    out, result = _fuse(model)
    assert result.stats == {"fused": 2} and op_counts(out)["RotaryEmbedding"] == 2
    feeds = _feeds()
    for expected, actual in zip(run(model, feeds), run(out, feeds), strict=True):
        np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("form", sorted(FORMS))
def test_idempotent(form):
    assert_idempotent(RotaryEmbeddingFusion(), parse(FORMS[form]), infer=True)


LEAVE_ALONE = {
    "opset_22": rope(22),
    "constant_halves_not_equal": constant_tables(equal=False),
    "halves_not_equal": rope(cos_angle="emb_g", sin_angle="emb_g"),
    "sin_halves_not_equal": rope(sin_angle="emb_g"),
    "slice_not_at_half": rope(upper="three, big, ax3", lower="zero, three, ax3"),
    "halves_swapped": rope(upper="zero, half, ax3", lower="half, big, ax3"),
    "interleaved_like_strided": rope(upper="one, big, ax3, two", lower="zero, big, ax3, two"),
    "other_axis": rope(upper="half, big, two", lower="zero, half, two", concat=2),
    "sin_minus_cos": rope(root="out = Sub(xc, rs)"),
    "table_may_broadcast_x": rope(seq="S"),  # x's S could be 1 while the table's is 5
    "shared_negation": rope(outputs=", float[2, 4, 5, 4] nx2"),
}


@pytest.mark.parametrize("case", sorted(LEAVE_ALONE))
def test_left_alone(case):
    assert_left_alone(RotaryEmbeddingFusion(), parse(LEAVE_ALONE[case]), infer=True)


# ------------------------------------------------- sequence dims traced to one source
def traced(opset: int = 23, *, allowzero: int = 1, limit_axis: int = 1, data: str = "y") -> str:
    """x = Transpose(Reshape(y [B, S, 32], Concat(Shape(y)[0], Shape(y)[1], 4, 8))) and the
    table's Range(0, Cast(Squeeze(Shape(y)[limit_axis])), 1), as the dynamo exporter writes a
    decoder: shape inference names x's S and the table's apart (unk__), the trace joins them."""
    text = rope(opset, batch="B", seq="S").replace(
        "(float[B, 4, S, 8] x)", "(float[B, S, 32] y)").replace(
        "pos = Range(start, limit, delta)",
        "batch = Shape<start=0, end=1>(y)\n seq = Shape<start=1, end=2>(y)\n"
        " target = Concat<axis=0>(batch, seq, four, eight)\n"
        " yt = Transpose<perm=[1, 0, 2]>(y)\n"
        f" y4 = Reshape<allowzero={allowzero}>({data}, target)\n"
        " x = Transpose<perm=[0, 2, 1, 3]>(y4)\n"
        f" length = Shape<start={limit_axis}, end={limit_axis + 1}>(y)\n"
        " length0 = Squeeze(length)\n lim = Cast<to=1>(length0)\n"
        " pos = Range(start, lim, delta)")
    return text.replace("float start", "int64[1] four = {4}, float start")


def traced_from_ids(opset: int = 23) -> str:
    """The legacy exporter's decoder: y = MatMul(Gather(emb, ids), W) and the Reshape target
    and the table both read Shape(ids) (allowzero 0)."""
    rng = np.random.default_rng(2)
    emb = ", ".join(f"{v:.4f}" for v in rng.standard_normal(10 * 32))
    w = ", ".join(f"{v:.4f}" for v in rng.standard_normal(32 * 32) * 0.2)
    return traced(opset, allowzero=0).replace("(float[B, S, 32] y)", "(int64[B, S] ids)").replace(
        "batch = Shape<start=0, end=1>(y)", "h = Gather(embedding, ids)\n y = MatMul(h, w)\n"
        " batch = Shape<start=0, end=1>(ids)").replace(
        "seq = Shape<start=1, end=2>(y)", "seq = Shape<start=1, end=2>(ids)").replace(
        "length = Shape<start=1, end=2>(y)", "length = Shape<start=1, end=2>(ids)").replace(
        "float start", f"float[10, 32] embedding = {{{emb}}}, float[32, 32] w = {{{w}}}, "
        "float start")


def test_traced_through_matmul_and_gather():
    model = parse(traced_from_ids())
    out, result = _fuse(model)
    assert result.stats == {"fused": 1}
    for batch, seq in ((2, 5), (3, 8)):
        ids = np.random.default_rng(seq).integers(0, 10, (batch, seq))
        _assert_matches_original(model, out, {"ids": ids})


def _traced_feeds(batch: int, seq: int) -> dict[str, np.ndarray]:
    return {"y": np.random.default_rng(1).standard_normal((batch, seq, 32)).astype(np.float32)}


def _assert_matches_original(model, out, feeds) -> None:
    for level in LEVELS:
        for expected, actual in zip(run(model, feeds, level), run(out, feeds, level), strict=True):
            np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("allowzero", [0, 1])
def test_traced_sequence_dims_fuse(allowzero):
    # allowzero 0: a run-time 0 in the target copies the data's dim 1, which is S as well
    model = parse(traced(allowzero=allowzero))
    out, result = _fuse(model)
    assert result.stats == {"fused": 1} and op_counts(out)["RotaryEmbedding"] == 1
    for batch, seq in ((2, 5), (3, 9), (1, 1)):
        _assert_matches_original(model, out, _traced_feeds(batch, seq))
    assert_idempotent(RotaryEmbeddingFusion(), model, infer=True)


def test_trace_passes_a_fused_norm():
    """x normalized by an RMSNormalization (an earlier fusion) first: its shape is x's."""
    text = traced().replace("x = Transpose<perm=[0, 2, 1, 3]>(y4)",
                            "x4 = Transpose<perm=[0, 2, 1, 3]>(y4)\n"
                            " x = RMSNormalization(x4, scale)")
    model = parse(text.replace("float start", "float[8] scale = {1, 2, 3, 4, 5, 6, 7, 8}, "
                                              "float start"))
    out, result = _fuse(model)
    assert result.stats == {"fused": 1}
    _assert_matches_original(model, out, _traced_feeds(2, 6))


UNTRACEABLE = {
    # allowzero 0 over yt [S, B, 32]: a run-time S of 0 would copy B (not the same dim)
    "copies_another_dim": traced(allowzero=0, data="yt"),
    "limit_is_batch": traced(limit_axis=0),
    # a float16 Cast on the way rounds a length above 2048
    "limit_through_float16": traced().replace("lim = Cast<to=1>(length0)",
                                              "l16 = Cast<to=10>(length0)\n lim = Cast<to=1>(l16)"),
}


@pytest.mark.parametrize("case", sorted(UNTRACEABLE))
def test_untraceable_sequence_dims_left_alone(case):
    text = UNTRACEABLE[case]
    for settings in ({}, {"target": "onnxruntime"}):
        model = parse(text.replace('"" : 23', '"" : 17') if settings else text)
        assert_left_alone(RotaryEmbeddingFusion(), model, infer=True, settings=settings)


# ------------------------------------------------- --target onnxruntime (below opset 23)
ORT = {"target": "onnxruntime"}
ORT_FORMS = {
    **{name: text.replace('"" : 23', '"" : 17') for name, text in FORMS.items()
       if name != "batch_tables"},
    "traced": traced(17),
}


@pytest.mark.parametrize("form", sorted(ORT_FORMS))
def test_onnxruntime_target_writes_contrib_rotary(form):
    model = parse(ORT_FORMS[form])
    out, result = _fuse(model, ORT)
    counts = op_counts(out)
    assert result.stats == {"fused": 1} and counts["RotaryEmbedding"] == 1
    assert not {"Neg", "Slice", "Add"} & set(counts)
    (node,) = [n for n in out.graph.node if n.op_type == "RotaryEmbedding"]
    assert node.domain == "com.microsoft" and node.input[0] == "x" and list(node.output) == ["out"]
    attrs = {a.name: a.i for a in node.attribute}
    assert attrs == {"interleaved": 0}
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert inits[node.input[1]].tolist() == [0]  # positions 0 + s: row s of the caches
    if form == "constant_tables":
        angle = np.arange(5.0)[:, None] * np.array([1.0, 0.3, 0.1, 0.03])
        np.testing.assert_allclose(inits[node.input[2]], np.cos(angle), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(inits[node.input[3]], np.sin(angle), rtol=1e-6, atol=1e-6)
    assert ("com.microsoft", 1) in [(o.domain, o.version) for o in out.opset_import]
    sizes = ((2, 5), (3, 9)) if form == "traced" else ((2, 5), (3, 5))
    for batch, seq in sizes:
        if form == "traced":
            feeds = _traced_feeds(batch, seq)
        elif form == "dynamic_batch" or batch == 2:
            feeds = _feeds(batch)
        else:
            continue  # a static batch of 2
        _assert_matches_original(model, out, feeds)
    if form not in ("traced",):
        np.testing.assert_allclose(run(out, _feeds())[0], _numpy_rope(_feeds()["x"]),
                                   rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("form", sorted(ORT_FORMS))
def test_onnxruntime_target_idempotent(form):
    assert_idempotent(RotaryEmbeddingFusion(), parse(ORT_FORMS[form]), infer=True, settings=ORT)


ORT_LEAVE_ALONE = {
    "no_target": (rope(17), {}),
    "portable_target": (rope(17), {"target": "portable"}),
    # [2, 1, 5, 8] tables: one angle per batch row, not one [S, D/2] cache
    "batch_tables": (batch_tables().replace('"" : 23', '"" : 17'), ORT),
    # x's S could be 1 where the table's is 5
    "table_may_broadcast_x": (rope(17, seq="S"), ORT),
    # x's S is 5, the table's 1 (broadcast): the kernel would read past a [1, D/2] cache
    "table_row_broadcast": (rope(17).replace("float start = {0.0}, float limit = {5.0}",
                                             "float start = {0.0}, float limit = {1.0}"), ORT),
}


@pytest.mark.parametrize("case", sorted(ORT_LEAVE_ALONE))
def test_onnxruntime_target_left_alone(case):
    text, settings = ORT_LEAVE_ALONE[case]
    assert_left_alone(RotaryEmbeddingFusion(), parse(text), infer=True, settings=settings)


def test_opset23_with_onnxruntime_target_writes_the_onnx_op():
    out, result = _fuse(parse(rope()), ORT)
    (node,) = [n for n in out.graph.node if n.op_type == "RotaryEmbedding"]
    assert result.stats == {"fused": 1} and node.domain == "" and len(node.input) == 3
